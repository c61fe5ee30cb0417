"""The primary's fault monitor (extensions.md §8.4): every `health.interval` it reads the cluster
from the watch-fed cache, finds the conditions of §8.4 (`pvcd.domain.faults.conditions`) and
brings `faults/<id>` up to date (`pvcd.domain.faults.next_fault`): new faults are created, the
ones whose condition persists get their `last_reported`, delta and message, the ones whose
condition cleared become inactive.

It runs on every coordinator's `faults` controller but acts only while the primary service
`faults` is up, so one node writes faults at a time; a handover at worst makes the old and the
new primary write one round each, which the compare-and-set versions order.

Races named. The API acknowledges and deletes faults while a round runs: every write is a
compare-and-set against the version read from the cache, so a round never undoes an
acknowledgement or brings a deleted fault back with its old history (a deleted fault whose
condition persists is created afresh, as new). A round whose transaction loses a race writes
fault by fault, skipping the ones that changed; the next round retries them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pvcd.controllers.base import DONE, Controller, PrimaryService, Result, Wiring
from pvcd.domain.autobackup import failed_vms
from pvcd.domain.dns import dns_zones
from pvcd.domain.faults import (
    CephCheck,
    ClusterFacts,
    DnsConflict,
    NodeFacts,
    conditions,
    next_fault,
)
from pvcd.domain.records import FenceRecord, from_dict
from pvcd.state.health import read_faults, read_node_health
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

KEY = "faults"
CEPH_SEVERITIES = ("HEALTH_WARN", "HEALTH_ERR")


class FaultMonitor:
    """One round of fault checks per `reconcile` while `active` (the primary service)."""

    def __init__(self, view: ClusterView, store: Store, interval: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.store = store
        self.interval = interval
        self.clock = clock
        self.active = False
        self._lock = threading.Lock()  # one round at a time

    def keys(self) -> list[str]:
        return [KEY]

    def reconcile(self, key: str) -> Result:
        # the controller's resync brings the key back every `interval`
        if self.active:
            self.run_round()
        return DONE

    def run_round(self) -> None:
        """Check every condition once and write what changed."""
        with self._lock:
            now = self.clock()
            maintenance = self.view.maintenance()
            found = {c.id: c for c in conditions(self.facts())}
            stored = read_faults(self.view)
            ops: list[Op] = []
            for ident in sorted(found.keys() | stored.keys()):
                current = stored.get(ident)
                fault = next_fault(current.fault if current else None, found.get(ident), now,
                                   maintenance)
                if fault is None:
                    continue
                path = self.view.paths.fault(ident)
                ops.append(Op.create(path, fault.to_doc()) if current is None else
                           Op.set(path, fault.to_doc(), current.version))
                if current is None or current.fault.active != fault.active or \
                        current.fault.status != fault.status:
                    log.info("event=fault-%s fault=%s status=%s delta=%d message=%r",
                             "raised" if fault.active else "cleared", ident, fault.status,
                             fault.delta, fault.message)
            self._commit(ops)

    def facts(self) -> ClusterFacts:
        """What the checks look at, from the cache."""
        view, cache, paths = self.view, self.view.cache, self.view.paths
        nodes = []
        for load in view.node_loads():
            fence = cache.get(paths.fence_record(load.name))
            record = from_dict(FenceRecord, fence) if isinstance(fence, dict) else None
            health = read_node_health(view, load.name)
            # a node between writing its spec and its first status is registering, not dead
            registering = not cache.exists(paths.node_status(load.name))
            nodes.append(NodeFacts(
                load.name, "init" if registering else load.daemon_state, load.memory_total,
                load.memory_allocated,
                record.state if record else None, record.message if record else "",
                tuple(health.checks) if health else ()))
        osds_out = []
        for name in cache.children(paths.storage_osds):
            doc = cache.get(f"{paths.storage_osds}/{name}")
            stats = doc.get("stats") if isinstance(doc, dict) else None
            if name.isdigit() and isinstance(stats, dict) and stats.get("in") in (False, 0):
                osds_out.append(int(name))
        failed = view.failed_vm_names()  # (from the index: no walk over every VM)
        specs = [spec for spec in (view.network(vni) for vni in view.network_vnis())
                 if spec is not None]
        zones = dns_zones(specs)
        domains = {spec.vni: spec.domain or "" for spec in specs}
        return ClusterFacts(
            nodes=tuple(nodes), osds_out=tuple(sorted(osds_out)),
            ceph_checks=self._ceph_checks(), failed_vms=tuple(sorted(failed)),
            dns_conflicts=tuple(DnsConflict(vni, domains.get(vni, ""), winner)
                                for vni, winner in sorted(zones.conflicts.items())),
            restore_marker=cache.exists(paths.restore_marker),
            # a VM removed since keeps no fault
            autobackup_failures=tuple((name, message) for name, message in
                                      failed_vms(cache.get(paths.autobackup))
                                      if view.resolve_vm(name) is not None))

    def _ceph_checks(self) -> tuple[CephCheck, ...]:
        """Ceph's health checks as the primary's storage sync last mirrored them."""
        status = self.view.cache.get(self.view.paths.storage_status)
        checks = status.get("checks") if isinstance(status, dict) else None
        found = []
        for check in checks if isinstance(checks, list) else []:
            if isinstance(check, dict) and isinstance(check.get("name"), str) and \
                    check.get("severity") in CEPH_SEVERITIES:
                found.append(CephCheck(check["name"], check["severity"],
                                       str(check.get("message", ""))))
        return tuple(found)

    def _commit(self, ops: list[Op]) -> None:
        """Lost races are skipped: the next round retries them (module docstring)."""
        for op, exc in self.store.commit_each(ops):
            log.info("event=fault-write-skipped path=%s reason=%s", op.path, exc)


class FaultService:
    """The primary role's switch over the monitor: a round at once when it starts."""

    def __init__(self, monitor: FaultMonitor, controller: Controller) -> None:
        self.monitor = monitor
        self.controller = controller

    def start(self) -> None:
        self.monitor.active = True
        self.controller.enqueue(KEY)

    def stop(self) -> None:
        self.monitor.active = False


def build_faults(view: ClusterView, store: Store, interval: float, coordinator: bool,
                 clock: Callable[[], float] = time.time) -> Wiring:
    """On coordinators: the `faults` controller and the primary service `faults` (none on
    other nodes: only a primary raises faults)."""
    wiring = Wiring()
    if not coordinator:
        return wiring
    monitor = FaultMonitor(view, store, interval, clock)
    controller = wiring.add(Controller("faults", monitor.reconcile, monitor.keys,
                                       resync_interval=interval))
    service = FaultService(monitor, controller)
    wiring.services.append(PrimaryService("faults", service.start, service.stop))
    return wiring
