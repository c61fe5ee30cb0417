"""Appending to a log buffer znode (`logs/<node>`, `vms/<uuid>/console`): one read, one
compare-and-set write.

The read comes from ZooKeeper itself, not the cache: after a migration the VM's old and new
nodes may both append to its console for a moment, and each must build on what the other
wrote. A lost race re-reads and appends again; nothing is ever overwritten. The buffer rules
(line and size limits, counting) are `pvcd.domain.log_tail`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from pvcd.domain.errors import Conflict, NotFound
from pvcd.domain.log_tail import MAX_BUFFER_BYTES, LogTail
from pvcd.state.store import Op, Store

RETRIES = 20


def read_buffer(store: Store, path: str) -> LogTail:
    """The buffer at `path` as ZooKeeper has it now (empty when there is none)."""
    current = store.read_optional(path)
    return LogTail.from_doc(current[0] if current is not None else None)


def append_to_buffer(store: Store, path: str, lines: Sequence[str], max_lines: int,
                     dropped: int = 0, max_bytes: int = MAX_BUFFER_BYTES,
                     extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                     ) -> LogTail:
    """Append `lines` (after `dropped` lost ones) to the buffer at `path`, creating it if
    needed; `extra(old)` gives the writer's own keys to store with it. Raises NotFound when
    the parent is gone (a removed VM), Conflict after RETRIES lost races, BackendError when
    ZooKeeper does not answer."""
    for attempt in range(RETRIES):
        current = store.read_optional(path)
        tail = LogTail.from_doc(current[0] if current is not None else None)
        if extra is not None:
            tail.extra = extra(dict(tail.extra))
        tail.append(lines, max_lines, dropped, max_bytes)
        if current is None:
            op = Op.create(path, tail.to_doc())
        else:
            op = Op.set(path, tail.to_doc(), current[1].version)
        try:
            store.commit([op])
        except Conflict as exc:
            if current is None and store.read_optional(path) is None:
                raise NotFound(f"{path}: its parent is gone") from exc  # not a race
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # break up lockstep retries
            continue
        return tail
    raise Conflict(f"{path}: too many concurrent appends, gave up after {RETRIES} tries")
