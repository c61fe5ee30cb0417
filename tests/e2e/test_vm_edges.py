"""The VM lifecycle at its edges (issue 11): flush that settles for real, flush with nowhere to
go, a node record that follows its VMs at once, forced migration, placement by memory.

Every outcome is checked in the nodes' libvirt (through the lab agent) and in the API.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient, LabFactory, wait_until
from tests.e2e.test_vms import define, vm

pytestmark = pytest.mark.slow


def running_on(lab: Lab, uuid: str, nodes: tuple[str, ...]) -> list[str]:
    return [n for n in nodes if lab.domains(n).get(uuid, {}).get("state") == "running"]


def node(api: LabClient, name: str) -> dict[str, Any]:
    response = api.get(f"/node/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json()[0])


def running_vm(lab: Lab, api: LabClient, name: str, node: str,
               nodes: tuple[str, ...] = ("node1", "node2", "node3")) -> str:
    """Define VM `name` on `node` and wait until that node's libvirt runs it."""
    uuid = define(api, name, node=node)
    wait_until(lambda: running_on(lab, uuid, nodes) == [node], timeout=10)
    return uuid


def set_domain_state(api: LabClient, name: str, state: str) -> None:
    response = api.post(f"/node/{name}/domain-state", data={"domain-state": state})
    assert response.status_code == 200, response.text


def test_node_record_follows_a_vm_start_and_stop_within_a_second(
        make_lab: LabFactory) -> None:
    # keepalive every 10 s: only the event-driven refresh can be this quick
    lab, api = make_lab(nodes=2, fencing="none", keepalive_interval=10.0)
    uuid = running_vm(lab, api, "quick", "node2", ("node1", "node2"))
    started = time.monotonic()
    wait_until(lambda: uuid in node(api, "node2")["running_domains"], timeout=1.0,
               interval=0.02)
    assert time.monotonic() - started <= 1.0
    assert api.post("/vm/quick/state", data={"state": "stop"}).status_code == 200
    wait_until(lambda: running_on(lab, uuid, ("node1", "node2")) == [], timeout=10)
    stopped = time.monotonic()
    wait_until(lambda: uuid not in node(api, "node2")["running_domains"], timeout=1.0,
               interval=0.02)
    assert time.monotonic() - stopped <= 1.0
    assert node(api, "node2")["memory"]["allocated"] == 0  # a stopped VM holds no memory


def test_flushed_only_when_nothing_runs_there_and_the_record_agrees(
        lab3: tuple[Lab, LabClient]) -> None:
    lab, api = lab3
    nodes = ("node1", "node2", "node3")
    uuids = [define(api, f"fl{i}", node="node2") for i in range(5)]
    wait_until(lambda: all(running_on(lab, u, nodes) == ["node2"] for u in uuids), timeout=10)
    set_domain_state(api, "node2", "flush")
    # look at the very first answer that says `flushed`
    deadline = time.monotonic() + 20
    while True:
        record = node(api, "node2")
        if record["domain_state"] == "flushed":
            break
        assert time.monotonic() < deadline, record
        time.sleep(0.01)
    assert record["running_domains"] == [], record
    assert record["memory"]["allocated"] == 0 and record["domains_count"] == 0, record
    assert not [u for u, d in lab.domains("node2").items()
                if u in uuids and d.get("state") == "running"]
    for u in uuids:
        assert len(running_on(lab, u, nodes)) == 1


def test_flush_with_nowhere_to_go_shuts_the_vm_down_and_ready_starts_it_again(
        make_lab: LabFactory) -> None:
    lab, api = make_lab(nodes=1, fencing="none")
    uuid = define(api, "alone")
    stopped = define(api, "resting")
    assert api.post("/vm/resting/state", data={"state": "stop"}).status_code == 200
    wait_until(lambda: running_on(lab, uuid, ("node1",)) == ["node1"], timeout=10)
    wait_until(lambda: running_on(lab, stopped, ("node1",)) == [], timeout=10)
    set_domain_state(api, "node1", "flush")
    wait_until(lambda: node(api, "node1")["domain_state"] == "flushed", timeout=20)
    assert running_on(lab, uuid, ("node1",)) == []  # shut down, not left running
    assert vm(api, "alone")["state"] == "shutdown" and vm(api, "alone")["node"] == "node1"
    set_domain_state(api, "node1", "ready")
    wait_until(lambda: node(api, "node1")["domain_state"] == "ready", timeout=20)
    wait_until(lambda: running_on(lab, uuid, ("node1",)) == ["node1"], timeout=10)
    assert vm(api, "alone")["state"] == "start"
    # the VM the operator had stopped stays stopped
    assert running_on(lab, stopped, ("node1",)) == []
    assert vm(api, "resting")["state"] == "stop"


def test_forced_migration_never_picks_the_current_node_and_keeps_the_first_last_node(
        lab3: tuple[Lab, LabClient]) -> None:
    lab, api = lab3
    nodes = ("node1", "node2", "node3")
    uuid = running_vm(lab, api, "wanderer", "node1")
    response = api.post("/vm/wanderer/node", data={"action": "migrate", "node": "node2"})
    assert response.status_code == 200, response.text
    wait_until(lambda: vm(api, "wanderer")["state"] == "start", timeout=15)
    wait_until(lambda: running_on(lab, uuid, nodes) == ["node2"], timeout=10)
    # forced, onward to node3: it still remembers the node it first left
    response = api.post("/vm/wanderer/node",
                        data={"action": "migrate", "node": "node3", "force": "true"})
    assert response.status_code == 200, response.text
    moved = vm(api, "wanderer")
    assert (moved["node"], moved["last_node"]) == ("node3", "node1")
    wait_until(lambda: vm(api, "wanderer")["state"] == "start", timeout=15)
    wait_until(lambda: running_on(lab, uuid, nodes) == ["node3"], timeout=10)
    # forced, naming the node it is on: that node is never the target
    response = api.post("/vm/wanderer/node",
                        data={"action": "migrate", "node": "node3", "force": "true"})
    assert response.status_code == 200, response.text
    moved = vm(api, "wanderer")
    assert moved["node"] != "node3"
    # still node1, unless it went back there (then there is nothing to unmigrate)
    assert moved["last_node"] == ("node1" if moved["node"] != "node1" else None)
    wait_until(lambda: vm(api, "wanderer")["state"] == "start", timeout=15)
    wait_until(lambda: running_on(lab, uuid, nodes) == [moved["node"]], timeout=10)
    if moved["node"] == "node1":
        return
    # unmigrate brings it back to the original node
    assert api.post("/vm/wanderer/node", data={"action": "unmigrate"}).status_code == 200
    wait_until(lambda: running_on(lab, uuid, nodes) == ["node1"], timeout=15)
    assert vm(api, "wanderer")["last_node"] is None


def test_a_second_move_during_a_migration_is_refused_not_stacked(
        lab3: tuple[Lab, LabClient]) -> None:
    lab, api = lab3
    nodes = ("node1", "node2", "node3")
    uuid = running_vm(lab, api, "busy", "node1")
    first = api.post("/vm/busy/node", data={"action": "migrate", "node": "node2"})
    second = api.post("/vm/busy/node", data={"action": "migrate", "node": "node3",
                                             "force": "true"})
    assert first.status_code == 200, first.text
    # either the first had already finished, or the second is refused with the reason
    if second.status_code == 510:
        assert "being migrated" in second.json()["message"]
    else:
        assert second.status_code == 200, second.text
    wait_until(lambda: vm(api, "busy")["state"] == "start", timeout=15)
    final = vm(api, "busy")["node"]
    assert final in ("node2", "node3")
    wait_until(lambda: running_on(lab, uuid, nodes) == [final], timeout=10)


def test_placement_skips_and_refuses_nodes_without_the_memory(
        make_lab: LabFactory) -> None:
    lab, api = make_lab(nodes=2, fencing="none")
    nodes = ("node1", "node2")
    total = min(node(api, n)["memory"]["total"] for n in nodes)
    assert total > 0
    big = int(total * 0.6)
    # more than any node has: refused at define, nothing recorded
    response = api.post("/vm", data={"xml": _xml("huge", 2 * total)})
    assert response.status_code == 510 and "memory" in response.json()["message"], response.text
    assert "huge" not in [v["name"] for v in api.get("/vm").json()]
    uuid = define(api, "big1", memory=big, node="node1")
    define(api, "big2", memory=big, node="node2")
    # a third one fits on neither; naming a node that lacks room is refused with the numbers
    response = api.post("/vm", data={"xml": _xml("big3", big), "node": "node1"})
    assert response.status_code == 510 and "lacks memory" in response.json()["message"]
    # migrate: the only other node has no room
    wait_until(lambda: running_on(lab, uuid, nodes) == ["node1"], timeout=10)
    response = api.post("/vm/big1/node", data={"action": "migrate"})
    assert response.status_code == 510 and "memory" in response.json()["message"], response.text
    assert vm(api, "big1")["node"] == "node1" and vm(api, "big1")["last_node"] is None
    # flush: nowhere with room, so it is shut down where it is rather than overcommitting
    set_domain_state(api, "node1", "flush")
    wait_until(lambda: node(api, "node1")["domain_state"] == "flushed", timeout=20)
    assert vm(api, "big1")["node"] == "node1" and running_on(lab, uuid, nodes) == []


def _xml(name: str, memory: int) -> str:
    from pvcd.lab.guest import tiny_guest_xml

    return tiny_guest_xml(name, memory_mib=memory)
