"""How much one ZooKeeper write may carry, checked before it is sent.

ZooKeeper does not answer an oversized request with an error: a packet larger than its
`jute.maxbuffer` (default 0xfffff bytes, 1 MiB less one) makes the server close the client's
connection. For the primary that is its session, and with it the primary role: the API accepted
a VM's XML of up to 1 MiB, its document stores that XML plus a copy of its description (JSON
escaping grows both: a non-ASCII character takes 6 or 12 bytes), and one such request dropped
the primary. So a write whose size a user decides is measured in its encoded form
(`request_bytes`) and refused with a message naming the limit (`check_request_size`) before it
is sent.

`MAX_REQUEST_BYTES` leaves `HEADROOM` below ZooKeeper's default: the request's own framing
(paths, ACLs, headers: `OP_OVERHEAD` per op, counted generously), and the later writes that grow
the same document (a migration record, a removal, a rename) must still fit.
"""

from __future__ import annotations

from collections.abc import Sequence

from pvcd.domain.errors import InvalidValue
from pvcd.state.codec import encode
from pvcd.state.store import Op

ZOOKEEPER_MAX_PACKET = 0xFFFFF  # jute.maxbuffer's default; pvcd's ZooKeeper keeps it
HEADROOM = 64 * 1024
MAX_REQUEST_BYTES = ZOOKEEPER_MAX_PACKET - HEADROOM
OP_OVERHEAD = 512  # bytes per op for its header, flags and ACLs (a few dozen in practice)


def request_bytes(ops: Sequence[Op]) -> int:
    """The size of the transaction `ops` on the wire, counted generously."""
    return sum(len(op.path.encode()) + OP_OVERHEAD +
               (len(encode(op.doc)) if op.kind in ("create", "set") else 0) for op in ops)


def check_request_size(ops: Sequence[Op], what: str) -> None:
    """InvalidValue when `ops` would be more than ZooKeeper takes in one request; `what` names
    the thing being written (e.g. "the VM's document"), for the message."""
    size = request_bytes(ops)
    if size > MAX_REQUEST_BYTES:
        raise InvalidValue(
            f"{what} would take {size} bytes stored, more than the {MAX_REQUEST_BYTES} bytes "
            f"one ZooKeeper write may carry (its 1 MiB limit less {HEADROOM // 1024} KiB of "
            "headroom; JSON escaping counts, e.g. 6 bytes per non-ASCII character); nothing "
            "was changed")
