"""The second phase of removing a VM: its node takes the domain down, then forgets the VM.

`DELETE /vm/<vm>` only records the removal on the spec (`VmSpec.remove`). The VM's node then
destroys and undefines the domain, and only after that, in ONE transaction, deletes the VM's
spec, its status and its name index and creates the storage requests that remove its disks
(`remove.disks`, ids chosen by the API, which waits on them). So a volume is never removed while
a guest may still hold it open, and nobody writes the status of a VM whose spec is going away:
the node that writes it also deletes it.

Races named: (1) a migration in flight: the source removes its copy and records the migration
done, and the VM's (target) node waits for that (or for the source to be dead) before it
finishes; a node never starts a VM being removed (`VmController` checks before every start).
(2) the final transaction is compare-and-set on the spec, and fails if the status appeared
meanwhile (the spec then "has children"); the reconcile is then retried on fresh state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from pvcd.controllers.base import DONE, Result, TemporaryError
from pvcd.controllers.vm_claim import VmClaims
from pvcd.domain.errors import Conflict, NotFound
from pvcd.domain.records import VmSpec, VmStatus, from_dict
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.state.vm_removal import forget_vm_ops

log = logging.getLogger(__name__)

POLL = 0.5  # requeue interval while a migration source still holds the guest


class DomainRemover(Protocol):
    """What removal needs of the libvirt driver."""

    def destroy(self, uuid: str) -> None: ...
    def undefine(self, uuid: str) -> None: ...


class VmRemover:
    """Carries out `VmSpec.remove` on node `name` (called from `VmController.reconcile`)."""

    def __init__(self, name: str, view: ClusterView, store: Store, driver: DomainRemover,
                 clock: Callable[[], float], active: Callable[[Any], bool],
                 claims: VmClaims) -> None:
        self.name = name
        self.view = view
        self.store = store
        self.driver = driver
        self.clock = clock
        self.active = active  # whether a libvirt domain state is a running guest
        self.claims = claims

    def reconcile(self, spec: VmSpec, domain: Any) -> Result:
        status = self.view.vm_status(spec.uuid) or VmStatus()
        migration = spec.migration
        pending = migration is not None and status.migration_done < migration.request
        if spec.node != self.name:
            # a copy here (a migration source, or one left behind): take it down; the VM's
            # node finishes the removal once no migration from here is pending
            if domain is not None:
                self.take_down(spec.uuid, domain, "removal-requested")
            if pending and migration is not None and migration.source == self.name:
                self._record_migration_over(spec)
            return DONE
        if pending and migration is not None and migration.source != self.name and \
                self.view.node_alive(migration.source):
            return Result(requeue_after=POLL)  # the source still holds the guest
        if domain is not None:
            self.take_down(spec.uuid, domain, "removal-requested")
        self._forget(spec)
        return DONE

    def take_down(self, uuid: str, domain: Any, why: str, release: bool = True) -> None:
        """Destroy (if it runs) and undefine a domain here, then give up its claim (unless
        `release` is False: the caller gives it up in a transaction of its own)."""
        if self.active(domain):
            self.driver.destroy(uuid)
        try:
            self.driver.undefine(uuid)
        except NotFound:
            pass
        log.info("event=vm-removed vm=%s node=%s reason=%s", uuid, self.name, why)
        if release and self.view.cache.exists(self.view.paths.vm(uuid)):
            self.claims.release(uuid)  # (a forgotten VM's claim went with it)

    def _record_migration_over(self, spec: VmSpec) -> None:
        assert spec.migration is not None
        request = spec.migration.request
        path = self.view.paths.vm_status(spec.uuid)

        def change(doc: Any) -> Any:
            status = from_dict(VmStatus, doc)
            if status.migration_done >= request:
                return None
            status.migration_done, status.node, status.state = request, self.name, "stopped"
            return {**doc, **status.to_doc()}

        try:
            if self.store.read_optional(path) is None:
                self.store.commit([Op.create(path, {**VmStatus(node=self.name).to_doc(),
                                                    "migration_done": request})])
            else:
                self.store.update(path, change)
        except Conflict as exc:  # a normal race: the VM's node forgot it meanwhile, or wrote
            raise TemporaryError(f"VM {spec.uuid}: migration end not recorded ({exc}); "
                                 "looking again") from exc

    def _forget(self, spec: VmSpec) -> None:
        """Delete the VM's records and create its volume removals, in one transaction."""
        entry = self.view.cache.entry(self.view.paths.vm(spec.uuid))
        if entry is None or spec.remove is None:
            return  # already gone
        try:
            self.store.commit(forget_vm_ops(self.view, spec, entry.version, spec.remove,
                                            self.clock()))
        except Conflict as exc:  # the status or the spec changed meanwhile: try again, fresh
            raise TemporaryError(f"VM {spec.uuid}: removal raced with another writer "
                                 f"({exc})") from exc
        log.info("event=vm-forgotten vm=%s name=%s node=%s volume_requests=%d", spec.uuid,
                 spec.name, self.name, len(spec.remove.disks))
