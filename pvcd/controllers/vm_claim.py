"""Who may run a VM: the per-VM ownership claim `vms/<uuid>/owner`.

A node starts a guest only while it holds the VM's claim, and it takes the claim only in a
ZooKeeper transaction that also checks the VM's spec at the version that names this node. A
claim held by another node passes only when that node gives it up — after it has destroyed and
undefined its copy (`release`, written together with the end of a migration) — or when it has
been fenced (its power is off, confirmed by the primary). Hence two nodes never run one VM:

- to start, node B must hold the claim; while node A holds it, B does not start;
- A gives the claim up only once libvirt no longer has the guest on A (or A is fenced: off);
- the claim is one znode: ZooKeeper lets one transaction at a time change it, each checking
  the version it read, so two nodes can never both believe they took it.

A live migration is the one moment two libvirts know the guest: the target's copy is paused
until the memory has moved, and libvirt itself hands the running guest over; the target claims
it once the source has recorded the migration done and let go.

The claim is not ephemeral: a node's daemon that restarts keeps what it held (its guests may
still run under libvirt), and a node that lost its session keeps its claims until it is fenced
(the primary's confirmed fence is what frees them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pvcd.controllers.base import TemporaryError
from pvcd.domain.errors import Conflict
from pvcd.domain.records import FenceRecord, VmClaim, VmSpec, VmStatus, from_dict
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)


class VmClaims:
    """Node `name`'s side of the claims: take one before a start, give one up after a stop."""

    def __init__(self, name: str, view: ClusterView, store: Store,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.view = view
        self.store = store
        self.clock = clock

    def claim(self, uuid: str, starting: bool = False) -> None:
        """Hold `uuid`'s claim, or raise TemporaryError saying who holds it. Read from
        ZooKeeper itself: a node whose cache is stale (back from a partition) must not start a
        VM that moved away meanwhile. Two reads (the spec, the claim) and one transaction, each
        made once: the spec read here is the one a start is decided on.

        `starting`: the claim is taken to start the guest here, which a migration to here from
        another node forbids until that node has handed it over (its status says so; read from
        ZooKeeper too, and only when the spec records such a migration)."""
        paths = self.view.paths
        found = self.store.read_optional(paths.vm(uuid))
        if found is None:
            raise TemporaryError(f"VM {uuid} no longer exists")
        spec = from_dict(VmSpec, found[0])
        if spec.removing:
            raise TemporaryError(f"VM {uuid} is being removed")
        if spec.node != self.name:
            raise TemporaryError(f"VM {uuid} is assigned to {spec.node} now")
        migration = spec.migration
        if starting and migration is not None and migration.source != self.name:
            status = self.store.read_optional(paths.vm_status(uuid))
            done = from_dict(VmStatus, status[0]).migration_done if status else 0
            if done < migration.request:
                raise TemporaryError(f"VM {uuid} is still being handed over by "
                                     f"{migration.source}")
        check = Op.check(paths.vm(uuid), found[1].version)
        held = self.store.read_optional(paths.vm_owner(uuid))
        mine = VmClaim(node=self.name, since=self.clock()).to_doc()
        if held is None:
            ops = [check, Op.create(paths.vm_owner(uuid), mine)]
        else:
            owner = from_dict(VmClaim, held[0])
            if owner.node == self.name:
                ops = [check, Op.check(paths.vm_owner(uuid), held[1].version)]
            elif self._fenced(owner.node):
                log.warning("event=vm-claim-taken vm=%s node=%s from=%s reason=fenced", uuid,
                            self.name, owner.node)
                ops = [check, Op.set(paths.vm_owner(uuid), mine, held[1].version)]
            else:
                raise TemporaryError(f"VM {uuid} is still held by {owner.node} (it has not "
                                     "let go of its copy, and it is not fenced)")
        try:
            self.store.commit(ops)
        except Conflict as exc:  # the spec or the claim changed meanwhile: decide again
            raise TemporaryError(f"VM {uuid}: claim raced ({exc})") from exc

    def holds(self, uuid: str) -> bool:
        doc = self.view.cache.get(self.view.paths.vm_owner(uuid))
        return isinstance(doc, dict) and doc.get("node") == self.name

    def release_ops(self, uuid: str) -> list[Op]:
        """Ops that give up this node's claim on `uuid` (none if it does not hold it); only
        once libvirt no longer has the guest here."""
        entry = self.view.cache.entry(self.view.paths.vm_owner(uuid))
        if entry is None or not isinstance(entry.doc, dict) or \
                entry.doc.get("node") != self.name:
            return []
        return [Op.delete(self.view.paths.vm_owner(uuid), entry.version)]

    def release(self, uuid: str) -> None:
        for _ in range(5):
            ops = self.release_ops(uuid)
            if not ops:
                return
            try:
                self.store.commit(ops)
                log.info("event=vm-claim-released vm=%s node=%s", uuid, self.name)
                return
            except Conflict:
                time.sleep(0.005)  # the cache catches up with the claim's version
        raise TemporaryError(f"VM {uuid}: could not give up the claim")

    def _fenced(self, node: str) -> bool:
        """The primary confirmed `node` off (or recovered its VMs after a failed fence under
        the `recover` policy): what it held is free."""
        doc = self.view.cache.get(self.view.paths.fence_record(node))
        if not isinstance(doc, dict):
            return False
        record = from_dict(FenceRecord, doc)
        return record.state == "fenced" or record.recovered
