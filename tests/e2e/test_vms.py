"""VMs on a test-driver lab: define, placement, states, self-healing, migration, flush/ready.

Every effect is checked in libvirt on the node (through the lab agent, which answers from the
daemon's own libvirt connection), not only in the API.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient, wait_until

pytestmark = pytest.mark.slow

NODES = ("node1", "node2", "node3")


def define(api: LabClient, name: str, memory: int = 64, vcpus: int = 1, **values: str) -> str:
    response = api.post("/vm", data={"xml": tiny_guest_xml(name, memory_mib=memory,
                                                           vcpus=vcpus), **values})
    assert response.status_code == 200, response.text
    return str(api.get(f"/vm/{name}").json()[0]["uuid"])


def vm(api: LabClient, name: str) -> dict[str, Any]:
    response = api.get(f"/vm/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json()[0])


def running_on(lab: Lab, uuid: str) -> list[str]:
    """The nodes whose libvirt runs `uuid`."""
    return [n for n in NODES if lab.domains(n).get(uuid, {}).get("state") == "running"]


def test_define_start_stop_restart_delete(lab3: tuple[Lab, LabClient]) -> None:
    lab, api = lab3
    uuid = define(api, "web1", node="node2")
    obj = vm(api, "web1")
    assert obj["node"] == "node2" and obj["memory"] == 64 and obj["vcpu"] == 1
    assert obj["uuid"] == vm(api, uuid)["uuid"]  # by name or by UUID
    wait_until(lambda: running_on(lab, uuid) == ["node2"], timeout=5)
    assert api.get("/vm/web1/state").json() == {"name": "web1", "state": "start"}

    assert api.post("/vm/web1/state", data={"state": "shutdown"}).status_code == 200
    wait_until(lambda: lab.domains("node2")[uuid]["state"] == "shutoff", timeout=5)
    assert api.post("/vm/web1/state", data={"state": "start"}).status_code == 200
    wait_until(lambda: running_on(lab, uuid) == ["node2"], timeout=5)
    assert api.post("/vm/web1/state", data={"state": "stop"}).status_code == 200
    wait_until(lambda: lab.domains("node2")[uuid]["state"] == "shutoff", timeout=5)
    assert api.post("/vm/web1/state", data={"state": "restart"}).status_code == 200
    wait_until(lambda: running_on(lab, uuid) == ["node2"], timeout=5)
    wait_until(lambda: vm(api, "web1")["state"] == "start", timeout=5)

    dump = api.get("/vm/web1/dump")
    assert dump.status_code == 200 and dump.headers["Content-Type"].startswith("application/xml")
    assert "<name>web1</name>" in dump.text

    assert api.call("DELETE", "/vm/web1").status_code == 200
    wait_until(lambda: uuid not in lab.domains("node2"), timeout=5)
    assert api.get("/vm/web1").status_code == 510
    assert api.get("/vm", params={"limit": "web1"}).json() == []


def test_a_domain_destroyed_behind_our_back_comes_back(lab3: tuple[Lab, LabClient]) -> None:
    lab, api = lab3
    uuid = define(api, "phoenix", node="node1")
    wait_until(lambda: running_on(lab, uuid) == ["node1"], timeout=5)
    lab.destroy_domain("node1", uuid)
    assert lab.domains("node1")[uuid]["state"] == "shutoff" or running_on(lab, uuid)
    wait_until(lambda: running_on(lab, uuid) == ["node1"], timeout=5)


def test_put_xml_with_restart_applies_the_new_definition(lab3: tuple[Lab, LabClient]) -> None:
    lab, api = lab3
    uuid = define(api, "grow", node="node3")
    wait_until(lambda: running_on(lab, uuid) == ["node3"], timeout=5)
    new_xml = tiny_guest_xml("grow", uuid=uuid, memory_mib=128)
    response = api.call("PUT", "/vm/grow", data={"xml": new_xml, "restart": ""})
    assert response.status_code == 200, response.text
    wait_until(lambda: vm(api, "grow")["memory"] == 128 and vm(api, "grow")["state"] == "start",
               timeout=5)
    wait_until(lambda: running_on(lab, uuid) == ["node3"], timeout=5)


def test_placement_follows_the_selector(lab3: tuple[Lab, LabClient]) -> None:
    _, api = lab3
    # memory: a big VM on one node pushes the next ones elsewhere
    define(api, "big", memory=4096, node="node1")
    placed = {vm(api, f"m{i}")["node"] for i in range(2)
              if define(api, f"m{i}", memory=64, selector="mem")}
    assert "node1" not in placed
    # vms: spread by count
    for i in range(9):
        define(api, f"c{i}", selector="vms")
    counts = {n: len(api.get("/vm", params={"node": n}).json()) for n in NODES}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    # vcpus
    define(api, "wide", vcpus=16, node="node2", memory=64)
    assert vm(api, define_and_name(api, "v1", selector="vcpus"))["node"] != "node2"
    # an invalid node falls back to auto-selection
    define(api, "lost", node="node9")
    assert vm(api, "lost")["node"] in NODES


def define_and_name(api: LabClient, name: str, **values: str) -> str:
    define(api, name, **values)
    return name


def test_fifty_vms_all_run_exactly_once(lab3: tuple[Lab, LabClient]) -> None:
    lab, api = lab3
    selectors = ["mem", "vcpus", "load", "vms"]
    uuids = [define(api, f"f{i:02d}", selector=selectors[i % 4]) for i in range(50)]

    def all_running_once() -> bool:
        domains = {n: lab.domains(n) for n in NODES}
        for uuid in uuids:
            hosts = [n for n in NODES if domains[n].get(uuid, {}).get("state") == "running"]
            if len(hosts) != 1:
                return False
        return True

    wait_until(all_running_once, timeout=20)
    states = {o["state"] for o in api.get("/vm").json()}
    assert states == {"start"}


def test_migrate_unmigrate_and_move(lab3: tuple[Lab, LabClient]) -> None:
    lab, api = lab3
    uuid = define(api, "mover", node="node1")
    wait_until(lambda: running_on(lab, uuid) == ["node1"], timeout=5)
    response = api.post("/vm/mover/node", data={"action": "migrate", "node": "node2"})
    assert response.status_code == 200, response.text
    wait_until(lambda: running_on(lab, uuid) == ["node2"] and uuid not in lab.domains("node1"),
               timeout=10)
    assert api.get("/vm/mover/node").json() == {"name": "mover", "node": "node2",
                                                "last_node": "node1"}
    again = api.post("/vm/mover/node", data={"action": "migrate"})
    assert again.status_code == 510 and "already been migrated" in again.json()["message"]
    assert api.post("/vm/mover/node", data={"action": "unmigrate"}).status_code == 200
    wait_until(lambda: running_on(lab, uuid) == ["node1"], timeout=10)
    assert vm(api, "mover")["last_node"] is None
    assert api.post("/vm/mover/node", data={"action": "migrate", "node": "node3",
                                            "permanent": ""}).status_code == 200
    wait_until(lambda: running_on(lab, uuid) == ["node3"], timeout=10)
    assert vm(api, "mover")["last_node"] is None and vm(api, "mover")["migrated"] is False


def test_flush_and_ready(lab3: tuple[Lab, LabClient]) -> None:
    lab, api = lab3
    uuids = [define(api, f"fl{i}", node="node2") for i in range(4)]
    wait_until(lambda: all(running_on(lab, u) == ["node2"] for u in uuids), timeout=10)
    assert api.post("/node/node2/domain-state", data={"domain-state": "flush"}).status_code == 200
    wait_until(lambda: api.get("/node/node2/domain-state").json()["domain_state"] == "flushed",
               timeout=20)
    for u in uuids:
        hosts = running_on(lab, u)
        assert len(hosts) == 1 and hosts != ["node2"], (u, hosts)
    assert not [u for u in lab.domains("node2") if u in uuids]
    # a flushed node takes no new VMs
    define(api, "newcomer")
    assert vm(api, "newcomer")["node"] != "node2"
    assert api.post("/node/node2/domain-state", data={"domain-state": "ready"}).status_code == 200
    wait_until(lambda: api.get("/node/node2/domain-state").json()["domain_state"] == "ready",
               timeout=20)
    wait_until(lambda: all(running_on(lab, u) == ["node2"] for u in uuids), timeout=10)


def test_sigkill_during_flush_keeps_every_vm_exactly_once(lab3: tuple[Lab, LabClient]) -> None:
    lab, api = lab3
    uuids = [define(api, f"k{i}", node="node3") for i in range(6)]
    wait_until(lambda: all(running_on(lab, u) == ["node3"] for u in uuids), timeout=10)
    api.post("/node/node3/domain-state", data={"domain-state": "flush"})
    wait_until(lambda: api.get("/node/node3/domain-state").json()["domain_state"] != "ready",
               timeout=5)  # the flush has begun
    lab.signal_node("node3", signal.SIGKILL)
    assert lab.wait_node_exit("node3")
    lab.start_node("node3")
    wait_until(lambda: api.nodes()["node3"]["daemon_state"] == "run", timeout=15)

    def exactly_once() -> bool:
        return all(len(running_on(lab, u)) == 1 for u in uuids)

    wait_until(exactly_once, timeout=20)
    wait_until(lambda: api.get("/node/node3/domain-state").json()["domain_state"] == "flushed",
               timeout=20)
    assert exactly_once()


# The API's validation cases (invalid values, duplicates) run in process: tests/fast/
# test_api_validation.py.
