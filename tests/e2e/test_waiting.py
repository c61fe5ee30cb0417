"""The API's `wait` on a real lab: each answer comes only once the nodes have carried the change
out, so every check right after an answer looks at libvirt on the nodes without polling; a wait
that answered early fails here. A node that cannot act makes the wait time out with a 510 that
says what it waited for and what it saw."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient
from tests.e2e.test_cli import pvc

pytestmark = pytest.mark.slow

NODES = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabClient]]:
    # no fencing: a node is paused on purpose below
    the_lab = Lab(tmp_path_factory.mktemp("waitlab") / "lab")
    info = the_lab.up(nodes=3, fencing="none")
    try:
        yield the_lab, LabClient(info)
    finally:
        the_lab.down()


def waiting(api: LabClient, path: str, **values: Any) -> requests.Response:
    return api.post(path, data={**values, "wait": "true"}, timeout=60)


def settled(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    doc = dict(response.json())
    assert doc["wait"]["outcome"] == "settled", doc
    return doc


def running_on(lab: Lab, uuid: str) -> list[str]:
    return [n for n in NODES if lab.domains(n).get(uuid, {}).get("state") == "running"]


def vm(api: LabClient, name: str) -> dict[str, Any]:
    return dict(api.get(f"/vm/{name}").json()[0])


def test_define_start_stop_and_migrate_answer_once_settled(lab: tuple[Lab, LabClient]) -> None:
    the_lab, api = lab
    doc = settled(waiting(api, "/vm", xml=tiny_guest_xml("w1"), node="node2"))
    uuid = vm(api, "w1")["uuid"]
    assert doc["wait"]["what"] == "VM 'w1' to run on node2"
    assert running_on(the_lab, uuid) == ["node2"]

    settled(waiting(api, "/vm/w1/state", state="stop"))
    assert the_lab.domains("node2")[uuid]["state"] == "shutoff"
    assert vm(api, "w1")["running_on"] is None
    settled(waiting(api, "/vm/w1/state", state="start"))
    assert running_on(the_lab, uuid) == ["node2"]
    settled(waiting(api, "/vm/w1/state", state="restart"))
    assert running_on(the_lab, uuid) == ["node2"] and vm(api, "w1")["state"] == "start"

    doc = settled(waiting(api, "/vm/w1/node", action="migrate", node="node3"))
    assert doc["wait"]["seen"] == "running on node3"
    assert running_on(the_lab, uuid) == ["node3"]
    obj = vm(api, "w1")
    assert (obj["state"], obj["node"], obj["last_node"]) == ("start", "node3", "node2")
    settled(waiting(api, "/vm/w1/node", action="unmigrate"))
    assert running_on(the_lab, uuid) == ["node2"]
    assert api.call("DELETE", "/vm/w1").status_code == 200


def test_flush_answers_once_the_node_is_flushed_and_ready_once_ready(
        lab: tuple[Lab, LabClient]) -> None:
    the_lab, api = lab
    uuids = []
    for name in ("f1", "f2"):
        settled(waiting(api, "/vm", xml=tiny_guest_xml(name), node="node1"))
        uuids.append(vm(api, name)["uuid"])
    doc = settled(waiting(api, "/node/node1/domain-state", **{"domain-state": "flush"}))
    assert doc["wait"]["what"] == "node node1 to be flushed"
    assert api.get("/node/node1").json()[0]["domain_state"] == "flushed"
    for name, uuid in zip(("f1", "f2"), uuids, strict=True):
        obj = vm(api, name)  # moved, and running there already
        assert obj["node"] != "node1" and obj["last_node"] == "node1"
        assert running_on(the_lab, uuid) == [obj["node"]]

    settled(waiting(api, "/node/node1/domain-state", **{"domain-state": "ready"}))
    assert api.get("/node/node1").json()[0]["domain_state"] == "ready"
    for name in ("f1", "f2"):
        assert api.call("DELETE", f"/vm/{name}").status_code == 200


def test_a_node_that_cannot_act_makes_the_wait_time_out_with_what_it_saw(
        lab: tuple[Lab, LabClient]) -> None:
    the_lab, api = lab
    target = next(n for n in ("node3", "node2") if n != api.primary())
    settled(waiting(api, "/vm", xml=tiny_guest_xml("t1"), node=target))
    uuid = vm(api, "t1")["uuid"]
    the_lab.signal_node(target, signal.SIGSTOP)  # its daemon hangs: nobody acts on the VM
    try:
        response = waiting(api, "/vm/t1/state", state="stop", wait_timeout="1")
        # `pvc --wait` ends with exit code 5 and the API's message
        cli = pvc(the_lab, "vm", "start", "t1", "--wait", "--timeout", "1")
    finally:
        the_lab.signal_node(target, signal.SIGCONT)
    assert response.status_code == 510
    assert response.json()["message"] == (
        f"Timed out after 1 s waiting for VM 't1' to be stopped (on {target}); last seen: "
        f"running on {target}, {target} has not handled the request yet. The request was "
        "accepted: Setting VM 't1' to state stop. It is still being carried out.")
    assert response.json()["wait"]["outcome"] == "timeout"
    assert cli.returncode == 5, (cli.stdout, cli.stderr)
    assert f"Error: Timed out after 1 s waiting for VM 't1' to run on {target}; last seen: " \
        in cli.stderr
    assert "Setting VM 't1' to state start" in cli.stderr
    # the requests go on; asking again at the state (as `pvc` does after a handover) waits
    # until the latest one (start) has settled
    again = api.get("/vm/t1/state", params={"wait": "true", "wait_timeout": "30"}, timeout=60)
    assert settled(again)["state"] == "start"
    assert running_on(the_lab, uuid) == [target]
    assert api.call("DELETE", "/vm/t1").status_code == 200
