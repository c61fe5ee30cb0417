"""Node endpoints, election and handover on a real lab (ZooKeeper + three `pvcd` processes)."""

from __future__ import annotations

import signal
import time

import pytest

from pvcd.drivers.host import pid_alive
from tests.e2e.labclient import LabFactory, wait_until

pytestmark = pytest.mark.slow

Lab3 = tuple


def test_three_nodes_register_with_live_stats(lab3: Lab3) -> None:
    _, api = lab3
    nodes = api.nodes()
    assert sorted(nodes) == ["node1", "node2", "node3"]
    for node in nodes.values():
        assert node["daemon_state"] == "run"
        assert node["domain_state"] == "ready"
        assert node["cpu_count"] >= 1 and node["vcpu"]["total"] == node["cpu_count"]
        assert node["memory"]["total"] > 0
        assert node["memory"]["used"] + node["memory"]["free"] == node["memory"]["total"]
        assert node["kernel"] and node["arch"] and node["os"]
        assert isinstance(node["load"], float)
        assert node["running_domains"] == [] and node["domains_count"] == 0
    assert [n["coordinator_state"] for n in nodes.values()].count("primary") == 1
    # the keepalive is live: timestamps advance with the interval (1 s in the lab)
    before = nodes["node2"]["keepalive"]
    wait_until(lambda: api.nodes()["node2"]["keepalive"] > before, timeout=3)


def test_limit_is_a_fuzzy_regex(lab3: Lab3) -> None:
    _, api = lab3

    def names(limit: str) -> list[str]:
        response = api.get("/node", params={"limit": limit})
        assert response.status_code == 200, response.text
        return [n["name"] for n in response.json()]

    assert names("2") == ["node2"]
    assert names("node") == ["node1", "node2", "node3"]
    assert names("^node[13]$") == ["node1", "node3"]
    assert names("^ode") == []
    bad = api.get("/node", params={"limit": "node("})
    assert bad.status_code == 510
    assert "not a valid regular expression" in bad.json()["message"]


def test_element_and_state_endpoints(lab3: Lab3) -> None:
    _, api = lab3
    element = api.get("/node/node2")
    assert element.status_code == 200
    assert [n["name"] for n in element.json()] == ["node2"]
    unknown = api.get("/node/node9")
    assert unknown.status_code == 510
    assert unknown.json()["message"] == "Node 'node9' not found"
    assert api.get("/node/node2/daemon-state").json() == {"name": "node2", "daemon_state": "run"}
    assert api.get("/node/node2/domain-state").json() == {"name": "node2",
                                                          "domain_state": "ready"}
    state = api.get("/node/node2/coordinator-state").json()
    assert state["name"] == "node2" and state["coordinator_state"] in ("primary", "secondary")
    for suffix in ("", "/daemon-state", "/domain-state", "/coordinator-state"):
        assert api.get(f"/node/nope{suffix}").status_code == 510


def test_coordinator_state_moves_the_api(lab3: Lab3) -> None:
    _, api = lab3
    first = api.primary()
    target = next(n for n in ("node1", "node2", "node3") if n != first)
    response = api.post(f"/node/{target}/coordinator-state", data={"coordinator-state": "primary"})
    assert response.status_code == 200, response.text
    wait_until(lambda: api.primary() == target, timeout=5)
    # the old primary reports `relinquish` until its last status write lands
    wait_until(lambda: api.nodes()[first]["coordinator_state"] == "secondary", timeout=5)
    # re-setting an existing state has no effect
    again = api.post(f"/node/{target}/coordinator-state", data={"coordinator-state": "primary"})
    assert again.status_code == 200 and "already primary" in again.json()["message"]
    # `secondary` on the primary hands over to another coordinator
    response = api.post(f"/node/{target}/coordinator-state",
                        data={"coordinator-state": "secondary"})
    assert response.status_code == 200, response.text
    new = wait_until(lambda: (p := api.primary()) not in (None, target) and p, timeout=5)
    wait_until(lambda: api.nodes()[target]["coordinator_state"] == "secondary", timeout=5)
    assert new != target


def test_domain_state_requests_are_recorded_and_completed(lab3: Lab3) -> None:
    _, api = lab3
    response = api.post("/node/node3/domain-state", data={"domain-state": "flush"})
    assert response.status_code == 200, response.text
    wait_until(lambda: api.get("/node/node3/domain-state").json()["domain_state"] == "flushed",
               timeout=5)
    again = api.post("/node/node3/domain-state", data={"domain-state": "flush"})
    assert "already in domain state flushed" in again.json()["message"]
    response = api.post("/node/node3/domain-state", json={"domain-state": "ready"})
    assert response.status_code == 200, response.text
    wait_until(lambda: api.get("/node/node3/domain-state").json()["domain_state"] == "ready",
               timeout=5)
    bad = api.post("/node/node3/domain-state", data={"domain-state": "drain"})
    assert bad.status_code == 510 and "valid values are: flush, ready" in bad.json()["message"]
    assert api.get("/node/node3/domain-state").json()["domain_state"] == "ready"


def test_sigkill_of_the_primary_fails_over(lab3: Lab3) -> None:
    lab, api = lab3
    old = api.primary()
    assert old is not None
    lab.signal_node(old, signal.SIGKILL)
    killed = time.monotonic()
    new = wait_until(lambda: (p := api.primary()) not in (None, old) and p,
                     timeout=lab.info.session_timeout + 2)
    elapsed = time.monotonic() - killed
    assert elapsed <= lab.info.session_timeout + 2
    assert new != old
    assert api.nodes()[old]["daemon_state"] == "dead"
    assert api.nodes()[old]["coordinator_state"] == "secondary"


def test_sigterm_of_the_primary_hands_over_quickly(lab3: Lab3) -> None:
    lab, api = lab3
    old = api.primary()
    assert old is not None
    lab.signal_node(old, signal.SIGTERM)
    stopped = time.monotonic()
    wait_until(lambda: (p := api.primary()) not in (None, old) and p, timeout=2)
    assert time.monotonic() - stopped < 2.0
    assert lab.wait_node_exit(old)
    assert api.nodes()[old]["daemon_state"] == "stop"


def test_a_restarted_node_rejoins_at_once(lab3: Lab3) -> None:
    lab, api = lab3
    lab.signal_node("node3", signal.SIGKILL)
    assert lab.wait_node_exit("node3")
    started = time.monotonic()
    lab.start_node("node3")
    # its stale `alive` from the killed session is cleared, it does not wait for the timeout
    wait_until(lambda: api.nodes()["node3"]["daemon_state"] == "run" and
               api.nodes()["node3"]["keepalive"] > time.time() - 2, timeout=10)
    assert time.monotonic() - started < lab.info.session_timeout + 2


def test_session_expiry_recovers_without_restart(lab3: Lab3) -> None:
    lab, api = lab3
    victim = next(n for n in ("node1", "node2", "node3") if n != api.primary())
    pid = lab.info.node(victim).pid
    lab.signal_node(victim, signal.SIGSTOP)  # hung: the session expires on the server
    try:
        wait_until(lambda: api.nodes()[victim]["daemon_state"] == "dead",
                   timeout=lab.info.session_timeout + 3)
    finally:
        lab.signal_node(victim, signal.SIGCONT)
    wait_until(lambda: api.nodes()[victim]["daemon_state"] == "run", timeout=15)
    assert lab.info.node(victim).pid == pid  # the same process: no restart
    wait_until(lambda: api.nodes()[victim]["keepalive"] > time.time() - 2.5, timeout=5)


def test_expired_primary_gives_way_and_one_primary_remains(lab3: Lab3) -> None:
    lab, api = lab3
    old = api.primary()
    assert old is not None
    lab.signal_node(old, signal.SIGSTOP)
    time.sleep(lab.info.session_timeout + 1)
    lab.signal_node(old, signal.SIGCONT)
    # the old primary saw its session expire: it stops serving, another takes over
    wait_until(lambda: (p := api.primary()) not in (None, old) and p, timeout=15)
    wait_until(lambda: api.nodes()[old]["daemon_state"] == "run", timeout=15)
    states = [n["coordinator_state"] for n in api.nodes().values()]
    assert states.count("primary") == 1


def test_lab_json_describes_the_lab(lab3: Lab3) -> None:
    lab, _ = lab3
    import json

    doc = json.loads(lab.lab_file.read_text())
    assert doc["api"].startswith("http://127.0.0.1:") and doc["token"]
    assert doc["zookeeper"].startswith("127.0.0.1:")
    assert sorted(n["name"] for n in doc["nodes"]) == ["node1", "node2", "node3"]
    assert all(n["pid"] > 0 for n in doc["nodes"])


def test_lab_down_leaves_nothing_behind(make_lab: LabFactory) -> None:
    lab, _ = make_lab(nodes=2, zk_ensemble=3)
    assert len(lab.info.zookeeper_servers) == 3
    pids = [n.pid for n in lab.info.nodes] + [s["pid"] for s in lab.info.zookeeper_servers]
    workdir = lab.workdir
    lab.down()
    for pid in pids:
        assert not pid_alive(pid)
    assert not workdir.exists()

