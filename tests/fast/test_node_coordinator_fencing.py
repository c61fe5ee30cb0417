"""The node, coordinator and fencing controllers, in process, on simulated nodes that share one
real store (tests/fakes/nodes.py). Time is a fake clock the test advances; nothing sleeps."""

from __future__ import annotations

import pytest

from pvcd.controllers.coordinator import KEY as COORDINATOR_KEY
from pvcd.controllers.fencing import FencingController
from pvcd.controllers.node import NodeStatusWriter
from pvcd.controllers.self_fence import DeclaredDead
from pvcd.domain.records import FenceRecord, from_dict
from pvcd.drivers.fence import FenceTarget
from pvcd.state.store import Op
from tests.fakes.nodes import DEAD_THRESHOLD, KEEPALIVE_INTERVAL, SimCluster
from tests.fakes.state import ClusterState, FakeClock

DEAD_AFTER = KEEPALIVE_INTERVAL * DEAD_THRESHOLD


def fence_record(sim: SimCluster, node: str) -> FenceRecord | None:
    doc = sim.state.doc(sim.state.paths.fence_record(node))
    return None if doc is None else from_dict(FenceRecord, doc)


# node controller
def test_the_keepalive_reports_time_stats_and_what_runs_here(sim: SimCluster) -> None:
    node1 = sim.add_node("node1", memory_total=4096)
    uuid = sim.state.define_vm("web", "node1", memory=512)
    node1.reconcile_vms()
    sim.clock.advance(5)
    node1.keepalive()
    status = sim.node_status("node1")
    assert status.keepalive == sim.clock()
    assert status.stats.memory_total == 4096
    assert (status.stats.memory_allocated, status.stats.running_domains) == (512, [uuid])


def test_flush_moves_every_vm_off_and_ready_brings_them_back(sim: SimCluster) -> None:
    for name in ("node1", "node2", "node3"):
        sim.add_node(name)
    uuids = [sim.state.define_vm(f"vm{i}", "node1") for i in range(3)]
    sim.run_until(lambda: all(sim.where_running(u) == ["node1"] for u in uuids), seconds=5)
    sim.domain_state("node1", "flush")
    sim.run_until(lambda: sim.node_status("node1").domain_state == "flushed", seconds=20)
    for uuid in uuids:
        where = sim.where_running(uuid)
        assert len(where) == 1 and where != ["node1"]
    sim.domain_state("node1", "ready")
    sim.run_until(lambda: sim.node_status("node1").domain_state == "ready", seconds=20)
    sim.run_until(lambda: all(sim.where_running(u) == ["node1"] for u in uuids), seconds=5)
    assert all(sim.state.vm_spec(f"vm{i}").last_node is None for i in range(3))


# coordinator
def test_one_coordinator_takes_the_primary_role(sim: SimCluster) -> None:
    nodes = [sim.add_node(name) for name in ("node1", "node2", "node3")]
    sim.step()
    assert sim.primary() == "node1"
    states = {n.name: sim.node_status(n.name).coordinator_state for n in nodes}
    assert states == {"node1": "primary", "node2": "secondary", "node3": "secondary"}


def test_a_handover_moves_the_role_to_the_named_node(sim: SimCluster) -> None:
    for name in ("node1", "node2", "node3"):
        sim.add_node(name)
    sim.step()
    sim.handover("node3")
    sim.run_until(lambda: sim.primary() == "node3", seconds=5)
    sim.step()
    assert sim.node_status("node1").coordinator_state == "secondary"
    assert sim.node_status("node3").coordinator_state == "primary"
    assert sim.state.doc(sim.state.paths.handover) is None  # the winner removed the request


def test_the_primary_services_never_run_on_two_nodes_at_once(sim: SimCluster) -> None:
    running: list[str] = []  # the nodes whose primary services run now
    overlaps: list[list[str]] = []
    for name in ("node1", "node2", "node3"):
        node = sim.add_node(name)

        def start(name: str = name) -> None:
            if running:
                overlaps.append([*running, name])
            running.append(name)

        node.services.add("api", start, lambda name=name: running.remove(name))
    sim.step()
    assert running == ["node1"]
    sim.handover("node2")
    sim.run_until(lambda: running == ["node2"], seconds=5)
    sim.nodes["node2"].power_off()  # the primary's session is gone: another takes over
    sim.run_until(lambda: running in (["node1"], ["node3"]), seconds=5)
    assert overlaps == []


def test_a_failing_service_start_is_retried_and_the_role_kept(sim: SimCluster) -> None:
    node1 = sim.add_node("node1")
    attempts: list[int] = []

    def start() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("address in use")

    node1.services.add("api", start, lambda: None)
    sim.run_until(lambda: sim.node_status("node1").coordinator_state == "primary", seconds=10)
    assert len(attempts) == 3 and sim.primary() == "node1"


def test_a_handover_to_a_dead_node_goes_stale_and_another_takes_over(sim: SimCluster) -> None:
    for name in ("node1", "node2", "node3"):
        sim.add_node(name)
    sim.step()
    sim.nodes["node3"].power_off()
    sim.handover("node3")
    sim.run_until(lambda: sim.primary() == "node2", seconds=5)


def test_a_primary_without_a_session_drops_the_role(sim: SimCluster) -> None:
    node1 = sim.add_node("node1")
    sim.step()
    assert node1.coordinator is not None and node1.coordinator.is_primary
    node1.powered = False  # the session is gone
    node1.coordinator.reconcile(COORDINATOR_KEY)
    assert not node1.coordinator.is_primary
    # without a session it writes nothing (a write would wait on the connection): the next
    # keepalive carries the state
    assert node1.writer.status.coordinator_state == "secondary"
    node1.node.keepalive()
    assert sim.node_status("node1").coordinator_state == "secondary"


# fencing
def test_a_node_with_a_fresh_keepalive_is_left_alone(sim: SimCluster) -> None:
    sim.add_node("node1")
    sim.add_node("node2")
    sim.run(DEAD_AFTER * 3)
    assert sim.fence.fenced == [] and fence_record(sim, "node2") is None


def test_a_hung_node_is_fenced_and_its_vms_start_elsewhere(sim: SimCluster) -> None:
    for name in ("node1", "node2", "node3"):
        sim.add_node(name)
    uuid = sim.state.define_vm("web", "node2")
    sim.run_until(lambda: sim.where_running(uuid) == ["node2"], seconds=5)
    sim.nodes["node2"].hung = True
    sim.run_until(lambda: sim.where_running(uuid) in (["node1"], ["node3"]),
                  seconds=DEAD_AFTER + 5)
    assert sim.fence.fenced == ["node2"]
    record = fence_record(sim, "node2")
    assert record is not None and (record.state, record.recovered) == ("fenced", True)
    assert sim.node_status("node2").daemon_state == "fenced"
    assert sim.state.vm_spec("web").last_node == "node2"


def test_a_failed_fence_never_starts_the_vms_elsewhere(sim: SimCluster) -> None:
    for name in ("node1", "node2"):
        sim.add_node(name)
    uuid = sim.state.define_vm("web", "node2")
    sim.run_until(lambda: sim.where_running(uuid) == ["node2"], seconds=5)
    sim.fence.failing.add("node2")
    sim.nodes["node2"].hung = True
    sim.run(DEAD_AFTER * 4)
    record = fence_record(sim, "node2")
    assert record is not None and record.state == "failed" and record.attempts == 2
    assert sim.state.vm_spec("web").node == "node2"
    assert sim.where_running(uuid) == ["node2"]  # still there: the fence could not say off
    assert sim.nodes["node1"].running() == []


def test_no_fence_while_another_holds_the_fence_lock(sim: SimCluster) -> None:
    sim.add_node("node1")
    sim.add_node("node2")
    sim.step()
    # a fence started by the previous primary is still under way (its lock is held)
    sim.state.store.commit([Op.create(sim.state.paths.fence_lock,
                                      {"node": "node9", "target": "node2"}, ephemeral=True)])
    sim.nodes["node2"].hung = True
    sim.run(DEAD_AFTER * 3)
    assert sim.fence.fenced == []
    sim.state.store.commit([Op.delete(sim.state.paths.fence_lock)])
    sim.run_until(lambda: sim.fence.fenced == ["node2"], seconds=3)


def test_maintenance_mode_suspends_fencing(sim: SimCluster) -> None:
    sim.add_node("node1")
    sim.add_node("node2")
    sim.step()
    sim.maintenance(True)
    sim.nodes["node2"].hung = True
    sim.run(DEAD_AFTER * 3)
    assert sim.fence.fenced == [] and fence_record(sim, "node2") is None
    sim.maintenance(False)
    sim.run_until(lambda: sim.fence.fenced == ["node2"], seconds=DEAD_AFTER + 3)


def test_a_node_that_reports_again_loses_its_suspicion(sim: SimCluster) -> None:
    sim.add_node("node1")
    node2 = sim.add_node("node2")
    sim.step()
    node2.hung = True
    sim.run(DEAD_AFTER - 1)
    node2.hung = False
    sim.run(DEAD_AFTER * 3)
    assert sim.fence.fenced == []
    assert sim.node_status("node2").daemon_state == "run"


def test_a_self_fencing_node_never_writes_over_the_primarys_dead_mark(
        cluster_state: ClusterState) -> None:
    """The primary marks a node dead with compare-and-set on its status; a node that fences
    itself by watchdog then finds that mark instead of writing its keepalive over it (and so
    pets its watchdog no more), while one that does not keeps today's behaviour."""
    for name, yields in (("hv1", True), ("hv2", False)):
        cluster_state.put(cluster_state.paths.node(name), {"name": name})
        path = cluster_state.paths.node_status(name)
        writer = NodeStatusWriter(cluster_state.store, path, yield_to_fence=yields)
        writer.update(lambda s: setattr(s, "daemon_state", "run"))
        cluster_state.change(path, daemon_state="dead")  # the primary's mark
        if yields:
            with pytest.raises(DeclaredDead, match="marked this node dead"):
                writer.update(lambda s: setattr(s, "keepalive", 2.0))
            assert cluster_state.doc(path)["daemon_state"] == "dead"
        else:
            writer.update(lambda s: setattr(s, "keepalive", 2.0))
            assert cluster_state.doc(path)["daemon_state"] == "run"


class RecordingFence:
    """A fence driver that records the targets it was given (and powers nothing off)."""

    def __init__(self) -> None:
        self.targets: list[FenceTarget] = []

    def fence(self, target: FenceTarget, timeout: float) -> None:
        self.targets.append(target)


def test_the_primary_fences_by_its_own_configuration_never_by_the_nodes_record(
        cluster_state: ClusterState) -> None:
    """Issue 13's takeover: a node record written by anyone who reaches ZooKeeper named the
    driver and the command line the primary ran. Now the record's `fence` is ignored: the
    primary fences hv2 with the target from its own configuration, and hv3, which it has no
    target for, not at all (a failed fence, its VMs left alone)."""
    state, clock = cluster_state, FakeClock()
    forged = {"driver": "lab", "command": ["/bin/sh", "-c", "id"], "ipmi_host": "evil"}
    for node in ("hv2", "hv3"):
        state.put(state.paths.node(node), {"name": node, "coordinator": False, "fence": forged})
        state.put(state.paths.node_status(node), {"daemon_state": "run", "keepalive": 1.0})
    driver = RecordingFence()
    configured = FenceTarget("hv2", "ipmi", {"ipmi_host": "bmc-hv2", "ipmi_user": "admin",
                                             "ipmi_password": "local-secret"})
    asked: list[str] = []

    def drivers(name: str) -> RecordingFence:
        asked.append(name)
        return driver

    fencing = FencingController("hv1", state.view, state.store, lambda: True,
                                keepalive_interval=1.0, dead_threshold=3, fence_timeout=5.0,
                                attempts=1, on_failure="none", drivers=drivers, clock=clock,
                                targets={"hv2": configured})
    fencing.reconcile("node/hv2")
    fencing.reconcile("node/hv3")
    assert driver.targets == [configured] and asked == ["ipmi"]
    assert from_dict(FenceRecord, state.doc(state.paths.fence_record("hv2"))).state == "fenced"
    record = from_dict(FenceRecord, state.doc(state.paths.fence_record("hv3")))
    assert record.state == "failed" and "no fence target" in record.message


def test_fencing_follows_a_nodes_record_status_and_alive_not_its_health() -> None:
    key_of = FencingController.key_of_node_path
    assert key_of("/pvc/nodes/", "/pvc/nodes/hv2") == "node/hv2"
    assert key_of("/pvc/nodes/", "/pvc/nodes/hv2/status") == "node/hv2"
    assert key_of("/pvc/nodes/", "/pvc/nodes/hv2/alive") == "node/hv2"
    assert key_of("/pvc/nodes/", "/pvc/nodes/hv2/health") is None
