"""The fault rules of extensions.md §8.2 and §8.4 (`pvcd.domain.faults`): which conditions hold,
how a round changes a fault, cluster health and the list orders."""

from __future__ import annotations

import dataclasses

import pytest

from pvcd.domain.faults import (
    CephCheck,
    ClusterFacts,
    DnsConflict,
    FaultCondition,
    NodeFacts,
    acknowledged,
    cluster_health,
    conditions,
    memory_overprovisioned,
    next_fault,
    sort_faults,
)
from pvcd.domain.health import Fault, HealthCheck

DEAD = FaultCondition("DEAD_NODE_NODE2", 50, "Node node2 is dead")


def by_id(facts: ClusterFacts) -> dict[str, FaultCondition]:
    return {c.id: c for c in conditions(facts)}


def test_every_condition_of_the_table_with_its_id_and_delta() -> None:
    check = HealthCheck("load", 1.0, 25, "load 9 on 4 CPUs")
    facts = ClusterFacts(
        nodes=(NodeFacts("hv-1.a", "dead"), NodeFacts("node2", "fenced"),
               NodeFacts("node3", "run", checks=(check, HealthCheck("zkcn", 1.0, 0))),
               NodeFacts("node4", "stop", fence_state="failed", fence_message="BMC silent",
                         checks=(check,))),
        osds_out=(3,), ceph_checks=(CephCheck("OSD_DOWN", "HEALTH_WARN", "1 osds down"),
                                    CephCheck("PG_DAMAGED", "HEALTH_ERR", "1 pg damaged")),
        failed_vms=("web 1",), dns_conflicts=(DnsConflict(200, "a.example", 100),),
        restore_marker=True)
    found = {ident: c.delta for ident, c in by_id(facts).items()}
    assert found == {
        "DEAD_NODE_HV_1_A": 50, "DEAD_NODE_NODE2": 50,
        "NODE_PLUGIN_LOAD_NODE3": 12,  # half of 25, rounded down; a stopped node's are stale
        "FENCE_FAILED_NODE4": 50, "CEPH_OSD_OUT_3": 50, "CEPH_WARN_OSD_DOWN": 10,
        "CEPH_ERR_PG_DAMAGED": 50, "VM_FAILED_WEB_1": 10, "DNS_DOMAIN_CONFLICT_200": 10,
        "RESTORE_INCOMPLETE": 50}
    assert "BMC silent" in by_id(facts)["FENCE_FAILED_NODE4"].message
    assert "1 osds down" in by_id(facts)["CEPH_WARN_OSD_DOWN"].message


def test_memory_overprovisioned_when_losing_the_largest_node_leaves_too_little() -> None:
    nodes = [NodeFacts("a", "run", 8000, 3000), NodeFacts("b", "run", 8000, 2000),
             NodeFacts("c", "run", 16000, 0), NodeFacts("d", "dead", 64000, 0)]
    assert memory_overprovisioned(nodes) is None  # 5000 < 8000 + 8000 + 16000 - 16000
    nodes[2] = NodeFacts("c", "run", 16000, 11000)
    found = memory_overprovisioned(nodes)
    assert found is not None and found.delta == 50 and "16000 MiB" in found.message
    assert memory_overprovisioned([NodeFacts("a", "run", 8000, 0)]) is None  # nothing to lose


def test_a_fault_is_raised_updated_cleared_and_returns_to_new_after_an_ack() -> None:
    raised = next_fault(None, DEAD, 100.0)
    assert raised is not None
    assert (raised.status, raised.health_delta, raised.active, raised.first_reported) == \
        ("new", 50, True, 100.0)
    later = next_fault(raised, dataclasses.replace(DEAD, delta=40, message="still"), 115.0)
    assert later is not None
    assert (later.first_reported, later.last_reported, later.health_delta, later.message) == \
        (100.0, 115.0, 40, "still")
    acked = acknowledged(later, 120.0)
    assert acked is not None and acked.health_delta == 0 and acked.delta == 40
    assert acknowledged(acked, 121.0) is None
    persisting = next_fault(acked, DEAD, 130.0)
    assert persisting is not None
    assert (persisting.status, persisting.health_delta, persisting.acknowledged_at) == \
        ("ack", 0, 120.0)
    cleared = next_fault(persisting, None, 145.0)
    assert cleared is not None and not cleared.active and cleared.status == "ack"
    assert next_fault(cleared, None, 160.0) is None  # nothing more to write
    back = next_fault(cleared, DEAD, 175.0)
    assert back is not None
    assert (back.status, back.health_delta, back.acknowledged_at, back.active) == \
        ("new", 50, None, True)


def test_maintenance_raises_nothing_but_an_incomplete_restore() -> None:
    assert next_fault(None, DEAD, 1.0, maintenance=True) is None
    restore = FaultCondition("RESTORE_INCOMPLETE", 50, "restore")
    assert next_fault(None, restore, 1.0, maintenance=True) is not None
    raised = next_fault(None, DEAD, 1.0)
    assert raised is not None
    updated = next_fault(raised, DEAD, 2.0, maintenance=True)  # raised before: kept up to date
    assert updated is not None and updated.last_reported == 2.0
    cleared = next_fault(raised, None, 2.0, maintenance=True)
    assert cleared is not None and not cleared.active
    assert next_fault(cleared, DEAD, 3.0, maintenance=True) is None  # not raised again


def fault(ident: str, first: float, last: float, delta: int, status: str = "new",
          acked: float | None = None, message: str = "m") -> Fault:
    return Fault(ident, first, last, delta if status == "new" else 0, message, status, acked,
                 True, delta)


def test_cluster_health_counts_unacknowledged_faults_only() -> None:
    faults = [fault("A", 1, 1, 50), fault("B", 1, 1, 10, "ack", 2), fault("C", 1, 1, 70)]
    assert cluster_health(faults) == 0
    assert cluster_health(faults[:2]) == 50
    assert cluster_health([]) == 100


@pytest.mark.parametrize(("key", "order"), [
    ("last_reported", ["B", "C", "A"]),
    ("first_reported", ["C", "A", "B"]),
    ("acknowledged_at", ["C", "A", "B"]),
    ("status", ["C", "A", "B"]),
    ("health_delta", ["C", "B", "A"]),
    ("message", ["C", "B", "A"]),
])
def test_sort_keys(key: str, order: list[str]) -> None:
    faults = [fault("A", 2, 3, 50, message="z"), fault("B", 1, 9, 10, message="y"),
              fault("C", 5, 5, 10, "ack", 7, message="x")]
    assert [f.id for f in sort_faults(faults, key)] == order
    with pytest.raises(ValueError):
        sort_faults(faults, "id")


def test_a_long_message_is_cut_to_what_a_fault_keeps() -> None:
    facts = ClusterFacts(ceph_checks=(CephCheck("X", "HEALTH_ERR", "m" * 5000),))
    [condition] = conditions(facts)
    assert len(condition.message) == 1024
