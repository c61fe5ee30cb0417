"""Node health through the real ZooKeeper, cache and API: the round's document written by
compare-and-set, what `GET /node` makes of it (valid, invalid, node stopped), and the checks
that read the cluster's state (`ceph`, `zkcn`)."""

from __future__ import annotations

from typing import Any

from pvcd.controllers.health import HealthWriter, SessionEvents
from pvcd.controllers.health.node_checks import CephOsdCheck, ZookeeperSessionCheck
from pvcd.controllers.health.rounds import Check, Finding, HealthRounds
from pvcd.domain.health import NodeHealth
from tests.apiclient import ApiClient
from tests.fakes.nodes import SimCluster


def node(api: ApiClient, name: str = "node1") -> dict[str, Any]:
    response = api.get(f"/node/{name}")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()[0]
    return doc


def test_a_round_shows_in_get_node(sim_node1: SimCluster, node1_api: ApiClient) -> None:
    state = sim_node1.state
    assert node(node1_api)["health"] is None  # no round yet
    assert node(node1_api)["health_details"] == []
    writer = HealthWriter(state.store, state.paths.node_health("node1"))
    rounds = HealthRounds("node1", [Check("load", lambda: Finding(0, "fine")),
                                    Check("zkpr", lambda: Finding(50, "not serving"))],
                          writer, 2.0, lambda: True, clock=lambda: 1234.5)
    rounds.reconcile(rounds.key())
    shown = node(node1_api)
    assert shown["health"] == 50
    assert shown["health_plugins"] == ["load", "zkpr"]
    assert shown["health_details"][1] == {"name": "zkpr", "last_run": 1234.5,
                                          "health_delta": 50, "message": "not serving",
                                          "data": {}}
    listed = {n["name"]: n for n in node1_api.get("/node").json()}
    assert listed["node1"]["health"] == 50

    # someone else wrote the document: the writer's next write re-reads the version
    state.put(state.paths.node_health("node1"), {"health": 100, "checks": []})
    writer.write(NodeHealth(90, []))
    assert node(node1_api)["health"] == 90


def test_an_invalid_document_reads_as_no_health(sim_node1: SimCluster,
                                                node1_api: ApiClient) -> None:
    state = sim_node1.state
    path = state.paths.node_health("node1")
    for bad in ({"health": 500, "checks": []}, ["not", "an", "object"],
                {"health": 90, "checks": [{"name": "x; rm", "last_run": 1,
                                           "health_delta": 10}]}):
        state.put(path, bad)
        shown = node(node1_api)
        assert (shown["health"], shown["health_plugins"], shown["health_details"]) == \
            (None, [], [])


def test_a_stopped_node_has_no_health(sim_node1: SimCluster, node1_api: ApiClient) -> None:
    state = sim_node1.state
    state.put(state.paths.node_health("node1"), NodeHealth(100, []).to_doc())
    assert node(node1_api)["health"] == 100
    state.change(state.paths.node_status("node1"), daemon_state="stop")
    assert node(node1_api)["health"] is None


def test_ceph_counts_this_nodes_down_osds(sim_node1: SimCluster) -> None:
    state = sim_node1.state
    for osd, owner, up in ((0, "node1", True), (1, "node1", False), (2, "node2", False),
                           (3, "node1", False)):
        state.put(state.paths.storage_osd(osd),
                  {"id": osd, "node": owner, "device": None, "stats": {"up": up}})
    found = CephOsdCheck("node1", state.view).run()
    assert (found.delta, found.message) == (20, "OSD 1, 3 down")
    assert CephOsdCheck("node9", state.view).run().message.startswith("not applicable")


def test_zkcn_a_suspended_session_since_the_last_round(sim_node1: SimCluster) -> None:
    state = sim_node1.state
    events = SessionEvents()
    check = ZookeeperSessionCheck(events, state.store, state.paths.node_status("node1"))
    fine = check.run()
    assert fine.delta == 0 and fine.data["round_trip_ms"] < 1000
    events.note("SUSPENDED")
    events.note("CONNECTED")
    found = check.run()
    assert (found.delta, found.message) == (10, "the session was suspended since the last "
                                                "round")
    assert check.run().delta == 0  # counted once
