"""Writing a VM move: the one move rule (`pvcd.domain.moves.reassign`) applied to what the
nodes have confirmed, read from ZooKeeper itself, and written with compare-and-set on all of it.

A move names the node that hands the VM over (`holder`): the source of a migration in flight,
else the holder of the VM's claim, else its observed or assigned node. A cache that lags by a
few milliseconds can still show a claim its node has just given up, or miss one just taken; a
move decided on it would name a node that no longer has the guest as the source, and the node
that does have it would take its copy down instead of migrating it. So the three documents (the
spec, its status, its claim) are read from ZooKeeper, and the write checks the versions of all
three: if any changed meanwhile, the move is decided again on the new state.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from pvcd.domain.errors import Conflict, NotFound
from pvcd.domain.records import VmClaim, VmSpec, VmStatus, from_dict
from pvcd.state.schema import Paths
from pvcd.state.store import Op, Store

ATTEMPTS = 20


@dataclass(frozen=True)
class MoveBasis:
    """A VM's spec, status and claim as ZooKeeper has them now, with their versions."""

    spec: VmSpec
    spec_version: int
    status: VmStatus | None
    status_version: int | None
    owner: str | None
    owner_version: int | None


def read_move_basis(store: Store, paths: Paths, uuid: str) -> MoveBasis:
    found = store.read_optional(paths.vm(uuid))
    if found is None:
        raise NotFound(f"VM {uuid} not found")
    status = store.read_optional(paths.vm_status(uuid))
    owner = store.read_optional(paths.vm_owner(uuid))
    return MoveBasis(
        spec=from_dict(VmSpec, found[0]), spec_version=found[1].version,
        status=from_dict(VmStatus, status[0]) if status else None,
        status_version=status[1].version if status else None,
        owner=from_dict(VmClaim, owner[0]).node or None if owner else None,
        owner_version=owner[1].version if owner else None)


def move_vm(store: Store, paths: Paths, uuid: str,
            decide: Callable[[MoveBasis], VmSpec | None],
            attempts: int = ATTEMPTS) -> VmSpec | None:
    """Write `decide(basis)` (the VM's new spec; None: nothing to write) as one transaction that
    checks the spec, its status and its claim at the versions `decide` saw; decided again on
    fresh state while one of them changes meanwhile. What `decide` raises (a refusal) goes to
    the caller. Blocking: the API runs it in a worker thread."""
    for attempt in range(attempts):
        basis = read_move_basis(store, paths, uuid)
        new = decide(basis)
        if new is None:
            return None
        ops = [Op.set(paths.vm(uuid), new.to_doc(), basis.spec_version)]
        if basis.status_version is not None:
            ops.append(Op.check(paths.vm_status(uuid), basis.status_version))
        if basis.owner_version is not None:
            ops.append(Op.check(paths.vm_owner(uuid), basis.owner_version))
        try:
            store.commit(ops)
            return new
        except Conflict:  # a node confirmed something meanwhile: decide again on it
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
    raise Conflict(f"VM {uuid}: its state kept changing; gave up moving it after {attempts} "
                   "tries, try again")
