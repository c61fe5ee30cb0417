"""Cluster faults (extensions.md §8.2, §8.4): which conditions the primary raises, how one round
changes a fault, cluster health, and the orders `GET /faults` sorts by. Pure rules: the primary's
fault monitor (`pvcd.controllers.faults`) gathers the `ClusterFacts` from the cache and writes
what `next_fault` returns; the API and the CLI read the same records.

A fault is an incident record, as in PVC: it stays in `faults/<id>` until deleted, and it lowers
the cluster's health until acknowledged, even after its condition cleared (`active: false`).
A condition that clears and comes back returns an acknowledged fault to `new` (a pvcd addition:
the operator should look again). In maintenance mode no fault is raised (neither created nor
returned to `new`), except `RESTORE_INCOMPLETE`; faults already raised keep being updated and
cleared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from pvcd.domain.health import (
    FAULT_ACK,
    FAULT_NEW,
    MESSAGE_LIMIT,
    Fault,
    HealthCheck,
    fault_id,
    health_value,
)

RESTORE_INCOMPLETE = "RESTORE_INCOMPLETE"
# GET /faults?sort_key=: the time keys sort newest first, the others in ascending order (PVC)
FAULT_SORT_KEYS = ("first_reported", "last_reported", "acknowledged_at", "status",
                   "health_delta", "message")
FAULT_TIME_KEYS = ("first_reported", "last_reported", "acknowledged_at")
DEFAULT_SORT_KEY = "last_reported"

# the deltas of §8.4
DEAD_NODE_DELTA = 50
OSD_OUT_DELTA = 50
CEPH_WARN_DELTA = 10
CEPH_ERR_DELTA = 50
VM_FAILED_DELTA = 10
MEMORY_DELTA = 50
FENCE_FAILED_DELTA = 50
DNS_CONFLICT_DELTA = 10
AUTOBACKUP_FAILED_DELTA = 10
RESTORE_DELTA = 50


@dataclasses.dataclass(frozen=True)
class FaultCondition:
    """A condition seen in this round: the fault it raises, its delta and its message (cut to
    what a fault keeps)."""

    id: str
    delta: int
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", self.message[:MESSAGE_LIMIT])


@dataclasses.dataclass(frozen=True)
class NodeFacts:
    name: str
    daemon_state: str  # as operators see it (`ClusterView.node_daemon_state`)
    memory_total: int = 0  # MiB
    memory_allocated: int = 0  # MiB of the VMs assigned to it that should run
    fence_state: str | None = None  # of its fencing record: fencing, fenced, failed
    fence_message: str = ""
    checks: tuple[HealthCheck, ...] = ()  # its latest health checks (none: not known)


@dataclasses.dataclass(frozen=True)
class CephCheck:
    name: str
    severity: str  # HEALTH_WARN | HEALTH_ERR
    message: str


@dataclasses.dataclass(frozen=True)
class DnsConflict:
    vni: int
    domain: str
    kept_by: int


@dataclasses.dataclass(frozen=True)
class ClusterFacts:
    """What one round of checks looks at, read from the cache by the primary."""

    nodes: tuple[NodeFacts, ...] = ()
    osds_out: tuple[int, ...] = ()
    ceph_checks: tuple[CephCheck, ...] = ()
    failed_vms: tuple[str, ...] = ()  # names
    dns_conflicts: tuple[DnsConflict, ...] = ()
    restore_marker: bool = False
    # VMs (names) whose latest autobackup failed, with its message (`cluster/autobackup`)
    autobackup_failures: tuple[tuple[str, str], ...] = ()


def conditions(facts: ClusterFacts) -> list[FaultCondition]:
    """Every §8.4 condition that holds, one per fault id."""
    found: list[FaultCondition] = []
    for node in facts.nodes:
        if node.daemon_state in ("dead", "fenced"):
            found.append(FaultCondition(fault_id("DEAD_NODE", node.name), DEAD_NODE_DELTA,
                                        f"Node {node.name} is {node.daemon_state}"))
        if node.fence_state == "failed":
            found.append(FaultCondition(
                fault_id("FENCE_FAILED", node.name), FENCE_FAILED_DELTA,
                f"Fencing node {node.name} failed: {node.fence_message or 'no reason given'}"))
        if node.daemon_state == "run":  # a stopped node's last checks are stale
            for node_check in node.checks:
                if node_check.health_delta > 0:
                    found.append(FaultCondition(
                        fault_id("NODE_PLUGIN", node_check.name, node.name),
                        node_check.health_delta // 2,
                        f"Node {node.name} health check '{node_check.name}' reports "
                        f"{node_check.health_delta}: {node_check.message}"))
    for osd in facts.osds_out:
        found.append(FaultCondition(fault_id("CEPH_OSD_OUT", osd), OSD_OUT_DELTA,
                                    f"OSD {osd} is out"))
    for check in facts.ceph_checks:
        error = check.severity == "HEALTH_ERR"
        found.append(FaultCondition(
            fault_id("CEPH_ERR" if error else "CEPH_WARN", check.name),
            CEPH_ERR_DELTA if error else CEPH_WARN_DELTA,
            f"Ceph {check.severity} {check.name}: {check.message}"))
    for name in facts.failed_vms:
        found.append(FaultCondition(fault_id("VM_FAILED", name), VM_FAILED_DELTA,
                                    f"VM {name} is failed"))
    memory = memory_overprovisioned(facts.nodes)
    if memory is not None:
        found.append(memory)
    for conflict in facts.dns_conflicts:
        found.append(FaultCondition(
            fault_id("DNS_DOMAIN_CONFLICT", conflict.vni), DNS_CONFLICT_DELTA,
            f"Network {conflict.vni}'s domain '{conflict.domain}' overlaps the domain of "
            f"network {conflict.kept_by}, which keeps it: network {conflict.vni} publishes no "
            "names until one of the domains is changed"))
    for name, message in facts.autobackup_failures:
        found.append(FaultCondition(fault_id("AUTOBACKUP_FAILED", name),
                                    AUTOBACKUP_FAILED_DELTA,
                                    f"The latest autobackup of VM {name} failed: {message}"))
    if facts.restore_marker:
        found.append(FaultCondition(
            RESTORE_INCOMPLETE, RESTORE_DELTA,
            "A cluster state restore did not finish: nodes hold VM and network changes until "
            "the restore is run again or the marker is removed (DELETE /restore)"))
    unique: dict[str, FaultCondition] = {}
    for condition in found:  # two names that normalise to one id: the first one wins
        unique.setdefault(condition.id, condition)
    return list(unique.values())


def memory_overprovisioned(nodes: Iterable[NodeFacts]) -> FaultCondition | None:
    """Memory of the VMs that should run ≥ the running nodes' memory without the largest node:
    losing a node would leave VMs nowhere to go. Nothing to lose without running VMs."""
    running = [node for node in nodes if node.daemon_state == "run"]
    allocated = sum(node.memory_allocated for node in running)
    if not running or allocated <= 0:
        return None
    total = sum(node.memory_total for node in running)
    spare = total - max(node.memory_total for node in running)
    if allocated < spare:
        return None
    return FaultCondition("MEMORY_OVERPROVISIONED", MEMORY_DELTA,
                          f"Memory is overprovisioned: {allocated} MiB allocated to VMs, "
                          f"{spare} MiB would remain if the largest node were lost")


def next_fault(current: Fault | None, condition: FaultCondition | None, now: float,
               maintenance: bool = False) -> Fault | None:
    """The fault after this round, or None when nothing is to be written (module docstring)."""
    may_raise = not maintenance or (condition is not None and condition.id == RESTORE_INCOMPLETE)
    if condition is None:
        if current is None or not current.active:
            return None
        return dataclasses.replace(current, active=False)
    if current is None:
        if not may_raise:
            return None
        return Fault(condition.id, now, now, condition.delta, condition.message,
                     FAULT_NEW, None, True, condition.delta)
    if not current.active and not may_raise:
        return None  # cleared, and may not be raised again now
    status, acknowledged_at = current.status, current.acknowledged_at
    if not current.active and status == FAULT_ACK:  # it came back: look again
        status, acknowledged_at = FAULT_NEW, None
    return dataclasses.replace(
        current, last_reported=now, delta=condition.delta, message=condition.message,
        health_delta=0 if status == FAULT_ACK else condition.delta, status=status,
        acknowledged_at=acknowledged_at, active=True)


def acknowledged(fault: Fault, now: float) -> Fault | None:
    """The fault acknowledged (None: already is)."""
    if fault.status == FAULT_ACK:
        return None
    return dataclasses.replace(fault, status=FAULT_ACK, acknowledged_at=now, health_delta=0)


def cluster_health(faults: Iterable[Fault]) -> int:
    """100 minus the deltas of the unacknowledged faults, never below 0 (§8.1)."""
    return health_value([f.health_delta for f in faults if f.status == FAULT_NEW])


def sort_faults(faults: Iterable[Fault], key: str = DEFAULT_SORT_KEY) -> list[Fault]:
    """`faults` in the order of `key` (one of FAULT_SORT_KEYS); ties by id."""
    if key not in FAULT_SORT_KEYS:
        raise ValueError(f"unknown sort key {key!r}")
    by_id = sorted(faults, key=lambda f: f.id)
    if key in FAULT_TIME_KEYS:  # newest first; never acknowledged last
        return sorted(by_id, key=lambda f: (getattr(f, key) is not None, getattr(f, key) or 0),
                      reverse=True)
    return sorted(by_id, key=lambda f: getattr(f, key))
