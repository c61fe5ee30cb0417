"""The VM controller: makes this node's libvirt match the VMs the cluster assigns to it.

reconcile(`vm/<uuid>`) reads the desired spec (cache) and libvirt's actual state (driver) and
acts idempotently:
- not in the cluster any more, or assigned to another node with no migration from here in
  flight: destroy and undefine it here (never two copies running);
- assigned here: define it (or redefine on a new XML), then drive it to the desired state —
  start (a VM that should run and does not, e.g. crashed or destroyed behind our back, is started
  again), shutdown (graceful, forced after `timing.shutdown_timeout`), stop (forced), restart;
- assigned elsewhere with a migration *from here* in flight: as the VM's `migration_method`
  says (extensions.md §6.2): `none` live-migrates it to the target's libvirt (with its
  `migration_max_downtime`), else falls back to a graceful shutdown here (level-based, forced
  after the shutdown timeout; no worker waits for it) and lets the target start it; `shutdown`
  always does the latter; `live` never falls back: after a failed live migration the VM keeps
  running here, assigned here again (`pvcd.domain.moves.keep_at_source`), and its status's
  `failed_reason` says why.

Races named: (1) the target never starts a VM while a migration from a live source is not
reported done in the VM's status, and the source never starts a VM assigned elsewhere, so a
daemon killed mid-migration restarts into a state that neither loses nor duplicates the VM.
(2) observed status is written with compare-and-set; the source and the target write it at
different phases of a migration, and a lost race simply re-reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from pvcd.controllers.base import DONE, Result, TemporaryError
from pvcd.controllers.guest_hold import GuestHolds
from pvcd.controllers.vm_claim import VmClaims
from pvcd.controllers.vm_removal import VmRemover
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound, StateUnavailable
from pvcd.domain.moves import keep_at_source
from pvcd.domain.records import Migration, VmSpec, VmStatus, from_dict
from pvcd.domain.states import PROVISION_VM_STATE, domain_active
from pvcd.specs.vms import check_vm_document, check_vm_fields
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

POLL = 0.5  # requeue interval while a graceful shutdown or a peer is pending
STOPPED_STATES = ("shutdown", "stop", "disable")  # desired states of a guest that is off


class DomainInfo(Protocol):
    uuid: str
    name: str
    state: Any
    reason: str


class VmDriver(Protocol):
    """What the controller needs of `pvcd.drivers.libvirt.LibvirtDriver`."""

    def define(self, xml: str) -> None: ...
    def undefine(self, uuid: str) -> None: ...
    def start(self, uuid: str) -> None: ...
    def shutdown(self, uuid: str) -> None: ...
    def destroy(self, uuid: str) -> None: ...
    def domain_state(self, uuid: str) -> Any: ...
    def list_domains(self) -> list[Any]: ...
    def domain_uuids(self) -> list[str]: ...
    def xml(self, uuid: str) -> str: ...
    def migrate(self, uuid: str, dest_uri: str, migration_uri: str | None,
                timeout: float, max_downtime: int | None = None) -> None: ...
    def suspend(self, uuid: str) -> None: ...
    def resume(self, uuid: str) -> None: ...
    def fs_freeze(self, uuid: str, agent_timeout: float) -> int: ...
    def fs_thaw(self, uuid: str) -> int: ...


def vm_key(uuid: str) -> str:
    return f"vm/{uuid}"


class VmController:
    def __init__(self, name: str, view: ClusterView, store: Store, driver: VmDriver,
                 shutdown_timeout: float = 90.0, clock: Callable[[], float] = time.time,
                 can_act: Callable[[], bool] = lambda: True,
                 freeze_timeout: float = 30.0) -> None:
        self.name = name
        self.can_act = can_act  # False without a live ZooKeeper session: act on nothing
        self.view = view
        self.store = store
        self.driver = driver
        self.shutdown_timeout = shutdown_timeout
        self.clock = clock
        self.claims = VmClaims(name, view, store, clock)
        self.remover = VmRemover(name, view, store, driver, clock, domain_active, self.claims)
        # a snapshot's pause or freeze of the guest (vms/<uuid>/hold)
        self.holds = GuestHolds(name, view, driver, self._write_status, freeze_timeout, clock)
        self.checked = CheckedDocuments()

    # keys
    def keys(self) -> list[str]:
        keys = set()
        for uuid in self.view.vm_uuids_on(self.name):
            try:
                spec = self.view.vm_spec(uuid)
            except (TypeError, ValueError):  # not a VM document at all: its reconcile says so
                keys.add(vm_key(uuid))
                continue
            if spec is not None and self.name in (
                    spec.node, spec.migration.source if spec.migration else None):
                keys.add(vm_key(uuid))
        for uuid in self.driver.domain_uuids():
            keys.add(vm_key(uuid))
        return sorted(keys)

    # reconcile
    def reconcile(self, key: str) -> Result:
        if not self.can_act():
            raise TemporaryError("no ZooKeeper session: not acting on possibly stale state")
        uuid = key.split("/", 1)[1]
        if self._none_of_ours(uuid):
            self.checked.forget(uuid)
            return DONE
        try:
            spec = self.view.vm_spec(uuid)
        except (TypeError, ValueError) as exc:  # a document without a VM's fields
            return self._refuse_unreadable(uuid, exc)
        domain = self.driver.domain_state(uuid)
        if spec is None:
            self.checked.forget(uuid)
            if domain is not None:
                self._remove_here(uuid, domain, "VM no longer exists in the cluster")
            return DONE
        if spec.removing:  # never started again: taken down, then forgotten (vm_removal)
            return self.remover.reconcile(spec, domain)
        if spec.state == PROVISION_VM_STATE:
            return DONE  # its provisioner task still makes its disks; it hands it over after
        # acted on only if valid by the API's own rules: anything that reaches ZooKeeper can
        # write this document (docs/security.md, "Daemons re-validate")
        status = self.view.vm_status(uuid) or VmStatus()
        migration = spec.migration
        pending = migration is not None and status.migration_done < migration.request
        if spec.node != self.name:
            if pending and migration is not None and migration.source == self.name:
                invalid = self.checked.invalid(uuid, spec)
                if invalid is not None:
                    return self._refuse(uuid, spec, invalid)
                return self._migrate_out(spec, status, domain)
            self.checked.forget(uuid)  # (checked again should it come back)
            if domain is not None:
                self._remove_here(uuid, domain, f"VM is assigned to {spec.node}")
            elif self.claims.holds(uuid):
                self.claims.release(uuid)  # nothing of it here (e.g. back from a power-off)
            return DONE
        invalid = self.checked.invalid(uuid, spec)
        if invalid is not None:
            return self._refuse(uuid, spec, invalid)
        if pending and migration is not None and migration.source != self.name:
            # A live source records the end itself, once libvirt's migration job is over on
            # both sides (here the guest runs before that, and a migration onward is refused
            # until then). Only a dead source's migration is recorded here, and only once the
            # guest runs: an incoming guest is paused until its memory has moved.
            if domain is None or not _running(domain) or self.view.node_alive(migration.source):
                return Result(requeue_after=POLL)  # the source has not handed it over yet
            # libvirt runs it here: the migration completed, its dead source never recorded it
            self._write_status(spec, lambda s: _finish_migration(s, migration, self.name))
        return self._converge(spec, status, domain)

    def _none_of_ours(self, uuid: str) -> bool:
        """Whether the VM is another node's with nothing of it here: no migration from here,
        no claim, no domain in libvirt (what the rest of `reconcile` would conclude after
        reading all of its records): decided on the cached document as it is, in O(1), for
        every change of every other node's VMs."""
        doc = self.view.cache.get(self.view.paths.vm(uuid))
        if not isinstance(doc, dict) or doc.get("node") == self.name:
            return False
        migration = doc.get("migration")
        if migration is not None and \
                (not isinstance(migration, dict) or migration.get("source") == self.name):
            return False
        return not self.claims.holds(uuid) and self.driver.domain_state(uuid) is None

    def _converge(self, spec: VmSpec, status: VmStatus, domain: Any) -> Result:
        uuid = spec.uuid
        try:
            if domain is not None and domain.name != spec.name and not domain_active(domain):
                # renamed (POST /vm/<vm>/rename, only while stopped): libvirt refuses a second
                # name for one UUID, so the old definition goes first
                self.driver.undefine(uuid)
                log.info("event=vm-undefined-for-rename vm=%s old=%s name=%s node=%s", uuid,
                         domain.name, spec.name, self.name)
                domain = None
            defined = domain is None or self._xml_changed(spec)
            if defined:
                self.driver.define(self.checked.xml(uuid, spec))  # only the checked form
                domain = self.driver.domain_state(uuid)
            active = domain is not None and domain_active(domain)
            starting = not active and spec.state not in STOPPED_STATES
            if defined and not starting:  # (else the start's line says it was defined)
                log.info("event=vm-defined vm=%s name=%s node=%s", uuid, spec.name, self.name)
            restart = spec.restart_request > status.restart_done
            if spec.state in STOPPED_STATES or (restart and active):
                if active:
                    return self._stop(spec, status, domain,
                                      force=spec.state == "stop" and not restart)
                if restart:
                    pass  # fall through: start it again
                else:
                    self._write_status(spec, lambda s: _observed(s, self.name, "stopped",
                                                                 domain, spec))
                    return self.holds.converge(spec, active=False)
            if not active:
                # Before starting it: its spec re-read from ZooKeeper itself, not the cache (a
                # node back from a partition or a fence must never start a VM moved away while
                # its cache was stale), and its claim held (`pvcd.controllers.vm_claim`): no
                # other node may run it then.
                self.claims.claim(uuid, starting=True)
                self.driver.start(uuid)
                log.info("event=vm-started vm=%s name=%s node=%s defined=%s", uuid, spec.name,
                         self.name, "yes" if defined else "no")
                domain = self.driver.domain_state(uuid)
            elif not self.claims.holds(uuid):
                self.claims.claim(uuid)  # it runs here (an incoming migration): ours now

            def running(s: VmStatus) -> None:
                _observed(s, self.name, "running", domain, spec)
                s.restart_done = max(s.restart_done, spec.restart_request)

            self._write_status(spec, running)
            return self.holds.converge(spec, active=True)
        except StateUnavailable as exc:  # ZooKeeper, not the VM: a lost connection under
            # load must not fail the VM for good (no new request would ever retry it)
            raise TemporaryError(f"VM {uuid}: {exc}") from exc
        except (BackendError, NotFound) as exc:
            log.warning("event=vm-failed vm=%s name=%s node=%s reason=%s", uuid, spec.name,
                        self.name, exc)
            reason = str(exc)

            def failed(s: VmStatus) -> None:
                s.node, s.state, s.failed_reason = self.name, "failed", reason
                s.state_request_done = spec.state_request
                s.restart_done = max(s.restart_done, spec.restart_request)

            self._write_status(spec, failed)
            return DONE

    def _refuse(self, uuid: str, spec: VmSpec, reason: str) -> Result:
        """An invalid document: nothing is defined, started, stopped or migrated here; the
        VM's status says why (state `failed`). Acted on again once the document is valid."""
        log.warning("event=vm-refused vm=%s node=%s reason=%s", uuid, self.name, reason)
        why = f"refused by node {self.name}: invalid VM document: {reason}"
        # its requests are answered (failed), as a failure to carry them out would be
        requested, restart = (value if type(value) is int else 0
                              for value in (spec.state_request, spec.restart_request))
        written = VmSpec(uuid=uuid, name=str(spec.name), node=self.name,
                         xml=spec.xml if isinstance(spec.xml, str) else "")

        def refused(s: VmStatus) -> None:
            s.node, s.state, s.failed_reason = self.name, "failed", why
            s.state_request_done = max(s.state_request_done, requested)
            s.restart_done = max(s.restart_done, restart)

        self._write_status(written, refused)
        return DONE

    def _refuse_unreadable(self, uuid: str, error: Exception) -> Result:
        """A document without a VM's fields: refused unless a node it names could run it
        (reported by every node that holds a copy of it, or by none)."""
        doc = self.view.cache.get(self.view.paths.vm(uuid))
        if self.driver.domain_state(uuid) is None and \
                not (isinstance(doc, dict) and doc.get("node") == self.name):
            return DONE
        spec = VmSpec(uuid=uuid, name="", xml="", node=self.name)
        return self._refuse(uuid, spec, f"not a VM document ({error})")

    def _stop(self, spec: VmSpec, status: VmStatus, domain: Any, force: bool,
              then: Callable[[], Result] | None = None) -> Result:
        """One level-based step of stopping the VM here: destroy (`force`), or a graceful
        shutdown forced once `shutdown_timeout` has passed; requeued while it runs. `then`:
        what to do once it is off (default: report it stopped, or start it for a restart)."""
        uuid = spec.uuid
        now = self.clock()
        if force:
            self.driver.destroy(uuid)
            log.info("event=vm-stopped vm=%s name=%s node=%s", uuid, spec.name, self.name)
        elif status.state != "shutting-down" or status.node != self.name:
            try:
                self.driver.shutdown(uuid)
            except NotFound:
                pass  # gone meanwhile: nothing to shut down
            log.info("event=vm-shutdown vm=%s name=%s node=%s", uuid, spec.name, self.name)
            self._write_status(spec, lambda s: _shutting_down(s, self.name, now, spec))
        elif now - status.since >= self.shutdown_timeout:
            self.driver.destroy(uuid)
            log.info("event=vm-shutdown-timeout vm=%s name=%s node=%s forced=true", uuid,
                     spec.name, self.name)
        domain = self.driver.domain_state(uuid)
        if domain is not None and domain_active(domain):
            return Result(requeue_after=POLL)
        if then is not None:
            return then()
        restart = spec.restart_request > status.restart_done
        if restart and spec.state == "start":
            return self._converge(spec, self.view.vm_status(uuid) or status, domain)
        self._write_status(spec, lambda s: _observed(s, self.name, "stopped", domain, spec))
        return DONE

    def _migrate_out(self, spec: VmSpec, status: VmStatus, domain: Any) -> Result:
        migration = spec.migration
        assert migration is not None
        uuid = spec.uuid
        falling_back = status.state == "shutting-down" and status.node == self.name
        if domain is not None and domain_active(domain) and not falling_back and \
                spec.migration_method == "shutdown":
            log.info("event=vm-migration-by-shutdown vm=%s from=%s to=%s", uuid, self.name,
                     spec.node)
            return self._stop(spec, status, domain, force=False,
                              then=lambda: self._migrate_out(
                                  spec, self.view.vm_status(uuid) or status, None))
        if domain is not None and domain_active(domain) and not falling_back:
            self._write_status(spec, lambda s: _migrating(s, self.name))
            dest = self.view.node_libvirt_uri(spec.node)
            try:
                if dest is None:
                    raise BackendError(f"node {spec.node} publishes no libvirt URI")
                started = time.monotonic()
                self.driver.migrate(uuid, dest, self.view.node_migration_uri(spec.node),
                                    timeout=60.0, max_downtime=spec.migration_max_downtime)
                log.info("event=vm-migrated vm=%s name=%s from=%s to=%s live=true seconds=%.3f",
                         uuid, spec.name, self.name, spec.node, time.monotonic() - started)
            except (BackendError, NotFound) as exc:
                if spec.migration_method == "live":
                    return self._keep_at_source(spec, migration, str(exc))
                log.warning("event=vm-live-migration-failed vm=%s from=%s to=%s reason=%s "
                            "fallback=shutdown", uuid, self.name, spec.node, exc)
                return self._stop(spec, status, self.driver.domain_state(uuid), force=False,
                                  then=lambda: self._migrate_out(
                                      spec, self.view.vm_status(uuid) or status, None))
        elif domain is not None and domain_active(domain):
            # the fallback shutdown is under way: one level-based step of it
            return self._stop(spec, status, domain, force=False,
                              then=lambda: self._migrate_out(
                                  spec, self.view.vm_status(uuid) or status, None))
        domain = self.driver.domain_state(uuid)
        if domain is not None:
            self.remover.take_down(uuid, domain, f"migrated to {spec.node}", release=False)
        # the guest is gone from here: the migration is done and the claim given up in one
        # transaction, so no move ever sees it done while this node still holds the claim
        self._write_status(spec, lambda s: _finish_migration(s, migration, spec.node),
                           also=lambda: self.claims.release_ops(uuid))
        self.claims.release(uuid)  # (if the status needed no write)
        return DONE

    def _keep_at_source(self, spec: VmSpec, migration: Migration, reason: str) -> Result:
        """A live-only migration failed: the guest still runs here, so the VM is assigned here
        again and its migration recorded as over, in one transaction with its status, whose
        `failed_reason` says why. The target never started it (it waits for this node)."""
        log.warning("event=vm-live-migration-failed vm=%s from=%s to=%s reason=%s "
                    "fallback=none", spec.uuid, self.name, spec.node, reason)
        path = self.view.paths.vm(spec.uuid)
        entry = self.view.cache.entry(path)
        if entry is None:
            return DONE  # removed meanwhile
        current = from_dict(VmSpec, entry.doc)
        if current.migration != migration:
            return Result(requeue_after=POLL)  # changed meanwhile: decided again on it
        kept = keep_at_source(current)
        why = (f"live migration to {spec.node} failed: {reason}; the VM keeps running on "
               f"{self.name} (migration_method live never falls back to a shutdown)")

        def failed(s: VmStatus) -> None:
            s.node, s.state, s.failed_reason = self.name, "running", why
            s.migration_done = max(s.migration_done, migration.request)

        self._write_status(spec, failed,
                           also=lambda: [Op.set(path, kept.to_doc(), entry.version)])
        return DONE

    def _remove_here(self, uuid: str, domain: Any, why: str) -> None:
        self.remover.take_down(uuid, domain, why)

    def _xml_changed(self, spec: VmSpec) -> bool:
        status = self.view.vm_status(spec.uuid)
        return status is not None and bool(status.defined_xml_hash) and \
            status.defined_xml_hash != _xml_hash(spec.xml)

    def _write_status(self, spec: VmSpec, change: Callable[[VmStatus], None],
                      also: Callable[[], list[Op]] | None = None) -> None:
        """Write the VM's status changed by `change`, compare-and-set; `also`: ops committed in
        the same transaction (made afresh for each try)."""
        path = self.view.paths.vm_status(spec.uuid)
        for _ in range(10):
            entry = self.view.cache.entry(path)
            current = from_dict(VmStatus, entry.doc) if entry is not None else VmStatus()
            new = from_dict(VmStatus, current.to_doc())
            change(new)
            new.defined_xml_hash = _xml_hash(spec.xml)
            doc = new.to_doc()
            if entry is not None and doc == entry.doc:
                return
            if not self.view.cache.exists(self.view.paths.vm(spec.uuid)):
                return  # deleted meanwhile: nothing to report on
            op = Op.create(path, doc) if entry is None else Op.set(path, doc, entry.version)
            try:
                self.store.commit([op, *(also() if also is not None else [])])
                return
            except Conflict:
                time.sleep(0.005)  # the cache catches up with the other writer
        raise Conflict(f"{path}: could not write the VM status")


class CheckedDocuments:
    """`check_vm_document` for every reconcile, without parsing an unchanged XML again (the
    resync reconciles each of a node's VMs every `timing.resync_interval`, and every change of
    the VM's records reconciles it): per VM it keeps the XML and name that passed, references
    to the cached document's own strings, and the checked form of the XML that a define hands
    to libvirt (the same string when the stored XML is already in that form, as the API
    stores it)."""

    def __init__(self) -> None:
        self._passed: dict[str, tuple[str, str, str]] = {}

    def invalid(self, uuid: str, spec: VmSpec) -> str | None:
        """Why the document at `vms/<uuid>` breaks the API's rules, or None."""
        try:
            if spec.uuid == uuid and self._passes(uuid, spec):
                check_vm_fields(spec)  # (identity and XML: as they passed before)
            else:
                self._check(uuid, spec)
        except InvalidValue as exc:
            return str(exc)
        return None

    def xml(self, uuid: str, spec: VmSpec) -> str:
        """The checked form of the document's XML (InvalidValue if it does not pass)."""
        if spec.uuid == uuid and self._passes(uuid, spec):
            return self._passed[uuid][2]
        return self._check(uuid, spec)

    def forget(self, uuid: str) -> None:
        self._passed.pop(uuid, None)

    def _passes(self, uuid: str, spec: VmSpec) -> bool:
        passed = self._passed.get(uuid)
        return passed is not None and passed[0] == spec.xml and passed[1] == spec.name

    def _check(self, uuid: str, spec: VmSpec) -> str:
        self._passed.pop(uuid, None)
        checked = check_vm_document(uuid, spec).xml
        if checked == spec.xml:
            checked = spec.xml  # (one string kept, not two equal ones)
        self._passed[uuid] = (spec.xml, spec.name, checked)
        return checked


def _running(domain: Any) -> bool:
    state = getattr(domain, "state", None)
    return str(getattr(state, "value", state)) == "running"


def _xml_hash(xml: str) -> str:
    import hashlib

    return hashlib.sha256(xml.encode()).hexdigest()[:16]


def _observed(status: VmStatus, node: str, state: str, domain: Any, spec: VmSpec) -> None:
    # a reason given while nothing changed since (a failed live migration) stays until the VM
    # changes state or node, or a new state request comes
    kept = status.failed_reason if (status.node, status.state, status.state_request_done) == \
        (node, state, spec.state_request) else ""
    status.node, status.state, status.failed_reason = node, state, kept
    status.libvirt_state = str(getattr(getattr(domain, "state", ""), "value",
                                       getattr(domain, "state", "")))
    status.libvirt_reason = str(getattr(domain, "reason", ""))
    status.state_request_done = spec.state_request


def _shutting_down(status: VmStatus, node: str, now: float, spec: VmSpec) -> None:
    status.node, status.state, status.since = node, "shutting-down", now
    status.state_request_done = spec.state_request


def _migrating(status: VmStatus, node: str) -> None:
    status.node, status.state, status.failed_reason = node, "migrating", ""


def _finish_migration(status: VmStatus, migration: Migration, node: str) -> None:
    status.migration_done = max(status.migration_done, migration.request)
    status.node = node
    if status.state == "migrating":
        status.state = "stopped"
