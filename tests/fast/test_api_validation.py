"""API validation in process: the real Tornado application over the real store on the session
ZooKeeper, with simulated nodes registered (no controllers need to act for a refusal). These
cases used to start a fresh three-node lab each (tests/e2e/test_vms.py, test_nodes.py); their
assertions are unchanged. "Nothing changed" is read at once: the API applies its own writes to
the cache it answers from before it replies, so a write that happened would already show."""

from __future__ import annotations

import uuid as uuidlib

import pytest

from pvcd.lab.guest import tiny_guest_xml
from tests.fakes.api import ApiClient, running_api
from tests.fakes.nodes import SimCluster


def define(api: ApiClient, name: str, **values: str) -> str:
    response = api.post("/vm", data={"xml": tiny_guest_xml(name), **values})
    assert response.status_code == 200, response.text
    return str(api.get(f"/vm/{name}").json()[0]["uuid"])


@pytest.mark.parametrize("method,path,data,message", [
    ("POST", "/vm", {}, "missing mandatory value 'xml'"),
    ("POST", "/vm", {"xml": "<domain"}, "XML"),
    ("POST", "/vm", {"xml": "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
                            "<domain type='kvm'><name>&e;</name></domain>"}, ""),
    ("POST", "/vm", {"xml": "<domain type='kvm'><memory>1</memory></domain>"}, "name"),
    ("POST", "/vm", {"xml": "XML:selector", "selector": "cheapest"}, "valid values are"),
    ("POST", "/vm/dup/state", {"state": "explode"}, "valid values are"),
    ("POST", "/vm/dup/state", {}, "missing mandatory value 'state'"),
    ("POST", "/vm/dup/node", {"action": "teleport"}, "valid values are"),
    ("POST", "/vm/dup/node", {"action": "unmigrate"}, "has not been migrated"),
    ("POST", "/vm/dup/node", {"action": "migrate", "selector": "x"}, "valid values are"),
    ("PUT", "/vm/dup", {"xml": "XML:other-uuid"}, "UUID"),
    ("POST", "/vm/ghost/state", {"state": "start"}, "not found"),
    ("DELETE", "/vm/ghost", {}, "not found"),
    ("GET", "/vm?state=dancing", {}, "valid values are"),
    ("GET", "/vm?limit=(", {}, "regular expression"),
])
def test_invalid_values_answer_510_and_change_nothing(
        api3: ApiClient, method: str, path: str, data: dict[str, str], message: str) -> None:
    api = api3
    define(api, "dup", node="node1")
    before = api.get("/vm").json()
    if data.get("xml") == "XML:selector":
        data = {**data, "xml": tiny_guest_xml("fresh")}
    if data.get("xml") == "XML:other-uuid":
        data = {**data, "xml": tiny_guest_xml("dup", uuid=str(uuidlib.uuid4()))}
    response = api.call(method, path, data=data)
    assert response.status_code == 510, response.text
    assert message in response.json()["message"]
    after = api.get("/vm").json()
    assert [(v["name"], v["node"], v["xml"]) for v in after] == \
        [(v["name"], v["node"], v["xml"]) for v in before]


def test_duplicate_name_or_uuid_is_refused(api3: ApiClient) -> None:
    api = api3
    uuid = define(api, "one")
    same_name = api.post("/vm", data={"xml": tiny_guest_xml("one")})
    assert same_name.status_code == 510 and "already exists" in same_name.json()["message"]
    same_uuid = api.post("/vm", data={"xml": tiny_guest_xml("two", uuid=uuid)})
    assert same_uuid.status_code == 510 and "already exists" in same_uuid.json()["message"]
    assert [v["name"] for v in api.get("/vm").json()] == ["one"]


def test_invalid_coordinator_requests_change_nothing(sim: SimCluster) -> None:
    for name in ("node1", "node2", "node3"):
        sim.add_node(name)
    sim.add_node("node4", coordinator=False)
    sim.step()
    with running_api(sim.state, sim.clock) as api:
        primary = api.primary()
        cases = [
            ("node2", {"coordinator-state": "leader"}, "valid values are: primary, secondary"),
            ("node2", {}, "missing mandatory value 'coordinator-state'"),
            ("node4", {"coordinator-state": "primary"}, "not a coordinator"),
            ("node9", {"coordinator-state": "primary"}, "not found"),
        ]
        for node, data, message in cases:
            response = api.post(f"/node/{node}/coordinator-state", data=data)
            assert response.status_code == 510, (node, data, response.text)
            assert message in response.json()["message"]
        sim.step()  # the coordinators look at the state again: nothing asked them to move
        assert api.primary() == primary == "node1"
        assert api.nodes()["node4"]["coordinator_state"] == "client"
        assert sim.state.doc(sim.state.paths.handover) is None
