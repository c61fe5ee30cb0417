"""The primary's fault monitor (pvcd/controllers/faults.py) over the real store and cache, and
`/faults`, `/status`, `/metrics` and `pvc cluster` against the real API in process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from pvcd.api.metrics import Metrics
from pvcd.cli.main import cli
from pvcd.controllers.faults import FaultMonitor, build_faults
from pvcd.domain.health import HealthCheck, NodeHealth
from pvcd.domain.records import FenceRecord, NetworkSpec, NodeSpec, VmStatus
from pvcd.state.health import read_faults
from tests.fakes.api import TOKEN, running_api
from tests.fakes.nodes import SimCluster
from tests.fakes.state import ClusterState

INTERVAL = 15.0


@pytest.fixture
def monitor(sim: SimCluster) -> FaultMonitor:
    for name in ("node1", "node2", "node3"):
        sim.add_node(name)
    sim.step()
    found = FaultMonitor(sim.state.view, sim.state.store, INTERVAL, sim.clock)
    found.active = True
    return found


def faults(state: ClusterState) -> dict[str, dict[str, Any]]:
    return {ident: s.fault.to_doc() for ident, s in read_faults(state.view).items()}


def test_a_dead_node_raises_a_fault_that_follows_its_condition(
        monitor: FaultMonitor, sim: SimCluster) -> None:
    state = sim.state
    monitor.run_round()
    assert faults(state) == {}
    state.drop_alive("node2")
    first = sim.clock()
    monitor.run_round()
    dead = faults(state)["DEAD_NODE_NODE2"]
    assert (dead["status"], dead["health_delta"], dead["active"]) == ("new", 50, True)
    sim.clock.advance(INTERVAL)
    monitor.run_round()
    dead = faults(state)["DEAD_NODE_NODE2"]
    assert (dead["first_reported"], dead["last_reported"]) == (first, first + INTERVAL)

    # acknowledged (as the API does): stays so while the condition persists
    with running_api(state, sim.clock) as api:
        assert api.call("PUT", "/faults/dead_node_node2").status_code == 200
    monitor.run_round()
    dead = faults(state)["DEAD_NODE_NODE2"]
    assert (dead["status"], dead["health_delta"], dead["delta"]) == ("ack", 0, 50)

    sim.nodes["node2"].register()  # back: the fault stays, inactive
    monitor.run_round()
    dead = faults(state)["DEAD_NODE_NODE2"]
    assert (dead["status"], dead["active"]) == ("ack", False)

    state.drop_alive("node2")  # and dies again: look again
    monitor.run_round()
    dead = faults(state)["DEAD_NODE_NODE2"]
    assert (dead["status"], dead["health_delta"], dead["acknowledged_at"], dead["active"]) == \
        ("new", 50, None, True)


def test_maintenance_raises_nothing_but_an_incomplete_restore(
        monitor: FaultMonitor, sim: SimCluster) -> None:
    state = sim.state
    sim.maintenance(True)
    state.drop_alive("node3")
    state.put(state.paths.restore_marker, {"started": 1.0})
    monitor.run_round()
    assert sorted(faults(state)) == ["RESTORE_INCOMPLETE"]
    sim.maintenance(False)
    monitor.run_round()
    assert sorted(faults(state)) == ["DEAD_NODE_NODE3", "RESTORE_INCOMPLETE"]


def test_checks_from_the_cache(monitor: FaultMonitor, sim: SimCluster) -> None:
    state, paths = sim.state, sim.state.paths
    # a node's own checks (written as the node health checks write them), an invalid one
    state.put(paths.node_health("node1"), NodeHealth.of(
        [HealthCheck("load", 1.0, 50, "load 9.0 over 4 CPUs"), HealthCheck("lbvt", 1.0, 0)]
    ).to_doc())
    state.put(paths.node_health("node2"), {"health": 500, "checks": "no"})
    uuid = state.define_vm("web-1", "node1")
    state.put(paths.vm_status(uuid), VmStatus("node1", "failed", failed_reason="boom").to_doc())
    state.put(paths.fence_record("node3"), FenceRecord("failed", 2, "BMC silent").to_doc())
    state.put(paths.storage_status, {"type": "status", "health": "HEALTH_WARN", "checks": [
        {"name": "OSD_DOWN", "severity": "HEALTH_WARN", "message": "1 osds down"},
        {"name": "junk", "severity": "HEALTH_OK"}]})
    state.put(paths.storage_osds + "/4", {"id": 4, "stats": {"up": True, "in": False}})
    state.put(paths.storage_osds + "/5", {"id": 5, "stats": {"up": True, "in": True}})
    for vni, domain in ((100, "lab.example"), (200, "b.lab.example")):
        state.put(paths.network(vni), NetworkSpec(
            vni, f"net{vni}", "managed", domain, f"10.{vni // 100}.0.0/24",
            f"10.{vni // 100}.0.1").to_doc())
    monitor.run_round()
    found = {ident: doc["health_delta"] for ident, doc in faults(state).items()}
    assert found == {"NODE_PLUGIN_LOAD_NODE1": 25, "VM_FAILED_WEB_1": 10,
                     "FENCE_FAILED_NODE3": 50, "CEPH_WARN_OSD_DOWN": 10, "CEPH_OSD_OUT_4": 50,
                     "DNS_DOMAIN_CONFLICT_200": 10}


def test_a_round_never_undoes_an_acknowledgement_it_did_not_see(
        monitor: FaultMonitor, sim: SimCluster) -> None:
    state = sim.state
    state.drop_alive("node2")
    monitor.run_round()
    facts = monitor.facts
    # the API acknowledges while the next round is under way (after its facts were read)

    def facts_then_ack() -> Any:
        found = facts()
        state.change(state.paths.fault("DEAD_NODE_NODE2"), status="ack", health_delta=0,
                     acknowledged_at=5.0)
        return found

    monitor.facts = facts_then_ack  # type: ignore[method-assign]
    monitor.run_round()
    dead = faults(state)["DEAD_NODE_NODE2"]
    assert (dead["status"], dead["acknowledged_at"]) == ("ack", 5.0)


def test_only_coordinators_get_the_monitor_and_it_acts_only_as_primary(
        sim: SimCluster) -> None:
    sim.add_node("node1")
    sim.state.drop_alive("node1")
    assert build_faults(sim.state.view, sim.state.store, 1.0, coordinator=False).controllers == []
    wiring = build_faults(sim.state.view, sim.state.store, 1.0, coordinator=True,
                          clock=sim.clock)
    [(controller, _)] = wiring.controllers
    [service] = wiring.services
    assert service.name == "faults"
    controller._reconcile("faults")
    assert faults(sim.state) == {}  # not primary: nothing written
    service.start()
    controller._reconcile("faults")
    assert list(faults(sim.state)) == ["DEAD_NODE_NODE1"]
    service.stop()


@pytest.fixture
def api(monitor: FaultMonitor, sim: SimCluster) -> Iterator[Any]:
    sim.state.drop_alive("node2")
    monitor.run_round()
    sim.clock.advance(1)
    uuid = sim.state.define_vm("web1", "node1")
    sim.state.put(sim.state.paths.vm_status(uuid), VmStatus("node1", "failed").to_doc())
    monitor.run_round()
    with running_api(sim.state, sim.clock) as client:
        yield client


def test_faults_list_sort_ack_and_delete(api: Any, sim: SimCluster) -> None:
    listed = api.get("/faults").json()  # by last_reported: both in the latest round, by id
    assert [f["id"] for f in listed] == ["DEAD_NODE_NODE2", "VM_FAILED_WEB1"]
    newest = api.get("/faults", params={"sort_key": "first_reported"}).json()
    assert [f["id"] for f in newest] == ["VM_FAILED_WEB1", "DEAD_NODE_NODE2"]
    assert set(listed[0]) == {"id", "first_reported", "last_reported", "acknowledged_at",
                              "status", "health_delta", "message", "active"}
    assert [f["id"] for f in api.get("/faults", params={"sort_key": "health_delta"}).json()] \
        == ["VM_FAILED_WEB1", "DEAD_NODE_NODE2"]
    bad = api.get("/faults", params={"sort_key": "id"})
    assert bad.status_code == 510 and "last_reported" in bad.json()["message"]
    one = api.get("/faults/DEAD_NODE_NODE2").json()
    assert len(one) == 1 and one[0]["health_delta"] == 50
    for method in ("GET", "PUT", "DELETE"):
        missing = api.call(method, "/faults/NO_SUCH_FAULT")
        assert missing.status_code == 510 and "not found" in missing.json()["message"]
    assert api.get("/status").json()["cluster_health"]["health"] == 40

    assert api.call("PUT", "/faults").json()["message"] == "Acknowledged 2 fault(s)"
    acked = api.get("/faults", params={"sort_key": "acknowledged_at"}).json()
    assert {(f["status"], f["health_delta"], f["acknowledged_at"]) for f in acked} == \
        {("ack", 0, sim.clock())}
    status = api.get("/status").json()
    assert status["cluster_health"] == {"health": 100, "messages": []}
    assert api.call("DELETE", "/faults/vm_failed_web1").status_code == 200
    assert [f["id"] for f in api.get("/faults").json()] == ["DEAD_NODE_NODE2"]
    assert api.call("DELETE", "/faults").json()["message"] == "Deleted 1 fault(s)"
    assert api.get("/faults").json() == []


def test_status_document(api: Any, sim: SimCluster) -> None:
    state = sim.state
    state.put(state.paths.node_health("node1"), NodeHealth.of(
        [HealthCheck("load", 1.0, 50, "load 9.0"), HealthCheck("lbvt", 1.0, 0, "ok")]).to_doc())
    state.put(state.paths.node_health("node2"), NodeHealth.of([]).to_doc())  # node2 is dead
    status = api.get("/status").json()
    assert status["cluster_health"]["health"] == 40
    assert {m["id"]: m["health_delta"] for m in status["cluster_health"]["messages"]} == \
        {"DEAD_NODE_NODE2": 50, "VM_FAILED_WEB1": 10}
    assert status["node_health"] == {
        "node1": {"health": 50, "messages": ["'load': load 9.0"]},
        "node2": {"health": None, "messages": []},
        "node3": {"health": None, "messages": []}}
    assert status["maintenance"] is False and status["primary_node"] == "node1"
    assert status["upstream_ip"] is None and status["pvc_version"]
    assert status["nodes"] == {"total": 3, "dead,ready": 1, "run,ready": 2}
    assert status["vms"] == {"total": 1, "failed": 1}
    assert status["osds"] == {"total": 0} and status["networks"] == 0
    assert status["resources"]["memory"]["total"] == 2 * 16384
    assert status["resources"]["memory"]["provisioned"] == 64
    assert [n["name"] for n in status["detail"]["node"]] == ["node1", "node2", "node3"]
    assert status["detail"]["vm"][0]["state"] == "failed"
    assert len(status["detail"]["faults"]) == 2

    assert api.post("/status", data={"state": "maybe"}).status_code == 510
    assert api.post("/status", data={"state": "true"}).status_code == 200
    assert api.get("/status").json()["maintenance"] is True
    assert api.get("/maintenance").json()["maintenance"] is True

    primary = api.get("/status/primary_node", token=False)
    assert primary.status_code == 200 and primary.json() == {"primary_node": "node1"}
    assert api.get("/status", token=False).status_code == 401


def test_no_primary_answers_204(cluster_state: ClusterState) -> None:
    from tests.fakes.state import FakeClock

    with running_api(cluster_state, FakeClock()) as client:
        answer = client.get("/status/primary_node", token=False)
        assert answer.status_code == 204 and answer.text == ""


def test_metrics_show_health_and_faults(api: Any, sim: SimCluster) -> None:
    state = sim.state
    state.put(state.paths.node_health("node1"), NodeHealth.of(
        [HealthCheck("load", 1.0, 50, "load 9.0"), HealthCheck("lbvt", 1.0, 0)]).to_doc())
    api.call("PUT", "/faults/VM_FAILED_WEB1")
    metrics = Metrics(state.view, "node1", sim.clock)
    text = metrics.render().decode()
    assert "pvc_cluster_health 50.0" in text
    assert 'pvc_node_health{node="node1"} 50.0' in text
    assert 'pvc_node_health{node="node2"}' not in text  # dead: not known
    assert 'pvc_node_health_check_delta{check="load",node="node1"} 50.0' in text
    assert 'pvc_faults{status="new"} 1.0' in text and 'pvc_faults{status="ack"} 1.0' in text


def test_cli_cluster_status_and_faults(api: Any, sim: SimCluster) -> None:
    env = {"PVC_URL": api.base, "PVC_TOKEN": TOKEN, "PVC_CONNECTION": "",
           "PVC_CONFIG": "/nonexistent"}

    def pvc(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    status = pvc("cluster", "status")
    assert "Health:" in status and "40%" in status
    assert "DEAD_NODE_NODE2" in status and "VM_FAILED_WEB1" in status
    listed = pvc("cluster", "fault", "list", "--sort-key", "first_reported")
    assert listed.index("DEAD_NODE_NODE2") > listed.index("VM_FAILED_WEB1")
    pvc("cluster", "fault", "ack", "DEAD_NODE_NODE2")
    assert "90%" in pvc("cluster", "status")
    pvc("cluster", "fault", "ack-all")
    assert "100%" in pvc("cluster", "status")
    pvc("cluster", "fault", "delete", "VM_FAILED_WEB1", "--yes")
    pvc("cluster", "fault", "delete-all", "--yes")
    assert "No faults" in pvc("cluster", "fault", "list")
    pvc("cluster", "maintenance", "on")
    assert "Maintenance:" in pvc("cluster", "status")
    assert sim.state.view.maintenance()
    pvc("cluster", "maintenance", "off")
    assert not sim.state.view.maintenance()


def test_a_node_still_registering_is_not_dead(monitor: FaultMonitor, sim: SimCluster) -> None:
    # its spec written, its status and liveness not yet (NodeDaemon._register)
    sim.state.put(sim.state.paths.node("node4"), NodeSpec("node4", True).to_doc())
    monitor.run_round()
    assert faults(sim.state) == {}
