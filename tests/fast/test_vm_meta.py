"""VM metadata and tags (extensions.md §6) in process: the real API over the real store with
simulated nodes, and the real VM controllers on the libvirt test driver. Assertions are on what
the API answers, what the store holds and where libvirt runs the guests."""

from __future__ import annotations

from typing import Any

import pytest

from pvcd.controllers.vm import vm_key
from pvcd.domain.records import VmSpec, from_dict
from pvcd.lab.guest import tiny_guest_xml
from tests.fakes.api import ApiClient
from tests.fakes.nodes import SimCluster


def define(api: ApiClient, name: str, data: Any = None, **values: Any) -> dict[str, Any]:
    response = api.post("/vm", data=data if data is not None else
                        {"xml": tiny_guest_xml(name), **values})
    assert response.status_code == 200, response.text
    return dict(api.get(f"/vm/{name}").json()[0])


def meta(api: ApiClient, name: str) -> dict[str, Any]:
    response = api.get(f"/vm/{name}/meta")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_define_places_within_the_node_limit_and_keeps_the_meta(api3: ApiClient) -> None:
    api = api3
    vm = define(api, "a", limit="node3,node2", selector="vms", autostart="",
                migration_method="live", migration_max_downtime="1000")
    assert vm["node"] == "node2"  # the emptier of the two by `vms`, never node1
    assert meta(api, "a") == {
        "name": "a", "node_limit": ["node3", "node2"], "node_selector": "vms",
        "node_autostart": True, "migration_method": "live", "migration_max_downtime": 1000,
        "profile": None}
    assert (vm["node_limit"], vm["node_selector"], vm["tags"]) == \
        (["node3", "node2"], "vms", [])
    # a named node outside the limit counts as not valid: selection within the limit
    assert define(api, "b", node="node1", node_limit="node3")["node"] == "node3"
    assert meta(api, "b")["node_selector"] == "none"
    assert meta(api, "b")["migration_max_downtime"] == 300


def test_meta_changes_only_the_values_given(api3: ApiClient) -> None:
    api = api3
    define(api, "web", node="node1")
    response = api.post("/vm/web/meta", data={"node_selector": "load",
                                               "migration_method": "shutdown"})
    assert response.status_code == 200, response.text
    assert (meta(api, "web")["node_selector"], meta(api, "web")["migration_method"],
            meta(api, "web")["node_limit"]) == ("load", "shutdown", [])
    # a limit the VM's node is outside of: it is not moved, and the answer says so
    response = api.post("/vm/web/meta", json={"limit": "node2,node3", "autostart": True})
    assert response.status_code == 200, response.text
    assert "stays on node1" in response.json()["message"]
    assert api.get("/vm/web").json()[0]["node"] == "node1"
    assert meta(api, "web")["node_limit"] == ["node2", "node3"]
    assert meta(api, "web")["node_autostart"] is True
    assert api.post("/vm/web/meta", data={"limit": "", "autostart": "no"}).status_code == 200
    assert (meta(api, "web")["node_limit"], meta(api, "web")["node_autostart"]) == ([], False)


@pytest.mark.parametrize("data,message", [
    ({}, "no updates to apply"),
    ({"limit": "node1,node9"}, "unknown nodes: node9"),
    ({"selector": "cheapest"}, "valid values are"),
    ({"node_selector": "cheapest"}, "valid values are"),
    ({"autostart": "maybe"}, "is invalid: true"),
    ({"migration_method": "teleport"}, "valid values are"),
    ({"migration_max_downtime": "0"}, "from 1 up to 60000"),
    ({"migration_max_downtime": "60001"}, "from 1 up to 60000"),
    ({"profile": "nonexistent"}, "does not exist"),
    ({"selector": "mem", "node_selector": "vms"}, "give one of them"),
    ({"migration_method": "live", "limit": "ghost"}, "unknown nodes"),
])
def test_each_refusal_of_meta_changes_nothing(api3: ApiClient, data: dict[str, str],
                                              message: str) -> None:
    api = api3
    define(api, "web", node="node1")
    before = api.get("/vm/web").json()
    response = api.post("/vm/web/meta", data=data)
    assert response.status_code == 510, response.text
    assert message in response.json()["message"]
    assert api.get("/vm/web").json() == before


@pytest.mark.parametrize("values,message", [
    ({"limit": "node9"}, "unknown nodes"),
    ({"autostart": "perhaps"}, "is invalid: true"),
    ({"user_tags": "bad tag!"}, "invalid tag"),
    ({"migration_max_downtime": "-5"}, "from 1 up to 60000"),
])
def test_each_refusal_of_a_define_creates_nothing(api3: ApiClient, values: dict[str, str],
                                                  message: str) -> None:
    response = api3.post("/vm", data={"xml": tiny_guest_xml("fresh"), **values})
    assert response.status_code == 510, response.text
    assert message in response.json()["message"]
    assert api3.get("/vm").json() == []


def test_migrate_without_a_node_stays_within_the_limit(api3: ApiClient) -> None:
    api = api3
    for name in ("any", "named", "nowhere"):
        define(api, name, node="node1", limit="node1" if name == "nowhere" else "node1,node3")
    response = api.post("/vm/any/node", data={"action": "migrate"})
    assert response.status_code == 200, response.text
    assert api.get("/vm/any").json()[0]["node"] == "node3"  # node2 ties by name: not allowed
    # a named node outside the limit is not valid: the selector chooses within it
    response = api.post("/vm/named/node", data={"action": "migrate", "node": "node2"})
    assert response.status_code == 200, response.text
    assert api.get("/vm/named").json()[0]["node"] == "node3"
    # a limit that leaves nowhere else: refused, nothing changed
    before = api.get("/vm/nowhere").json()
    response = api.post("/vm/nowhere/node", data={"action": "migrate"})
    assert response.status_code == 510
    assert "within the node limit node1" in response.json()["message"]
    assert api.get("/vm/nowhere").json() == before


def test_tags_add_remove_and_protect(api3: ApiClient, sim: SimCluster) -> None:
    api = api3
    define(api, "web", node="node1")

    def tags() -> list[dict[str, Any]]:
        response = api.get("/vm/web/tags")
        assert response.status_code == 200, response.text
        assert response.json()["name"] == "web"
        return list(response.json()["tags"])

    def post(**data: str) -> Any:
        return api.post("/vm/web/tags", data=data)

    assert tags() == []
    assert post(action="add", tag="prod").status_code == 200
    assert post(action="add", tag="db:main", protected="").status_code == 200
    assert tags() == [{"name": "prod", "type": "user", "protected": False},
                      {"name": "db:main", "type": "user", "protected": True}]
    refused = post(action="remove", tag="db:main")
    assert refused.status_code == 510 and "protected" in refused.json()["message"]
    assert len(tags()) == 2
    assert post(action="add", tag="db:main").status_code == 200  # unprotects it
    assert post(action="remove", tag="db:main").status_code == 200
    assert post(action="remove", tag="prod").status_code == 200
    assert tags() == []
    for data, message in [({"action": "remove", "tag": "ghost"}, "no tag 'ghost'"),
                          ({"action": "add", "tag": "a b"}, "invalid tag"),
                          ({"action": "add", "tag": "x" * 65}, "invalid tag"),
                          ({"action": "tickle", "tag": "x"}, "valid values are"),
                          ({"action": "add"}, "missing mandatory value 'tag'")]:
        response = post(**data)
        assert response.status_code == 510 and message in response.json()["message"], data
        assert tags() == []
    # a tag pvcd set itself is not the API's to remove
    uuid = sim.state.vm_uuid("web")
    sim.state.change(sim.state.paths.vm(uuid),
                     tags=[{"name": "backup", "type": "system", "protected": False}])
    response = post(action="remove", tag="backup")
    assert response.status_code == 510 and "system tag" in response.json()["message"]


def test_define_takes_repeated_and_array_tags(api3: ApiClient) -> None:
    api = api3
    define(api, "form", data=[("xml", tiny_guest_xml("form")), ("user_tags", "a"),
                              ("user_tags", "b"), ("protected_tags", "keep")])
    assert api.get("/vm/form/tags").json()["tags"] == [
        {"name": "a", "type": "user", "protected": False},
        {"name": "b", "type": "user", "protected": False},
        {"name": "keep", "type": "user", "protected": True}]
    response = api.post("/vm", json={"xml": tiny_guest_xml("json"), "user_tags": ["x", "y"]})
    assert response.status_code == 200, response.text
    assert [t["name"] for t in api.get("/vm/json/tags").json()["tags"]] == ["x", "y"]
    # an array where one value is expected is refused
    response = api.post("/vm", json={"xml": tiny_guest_xml("arr"), "selector": ["mem"]})
    assert response.status_code == 510 and "not a list" in response.json()["message"]


def test_list_filters_by_tag_and_negate(api3: ApiClient) -> None:
    api = api3
    define(api, "a", node="node1", user_tags="prod")
    define(api, "b", node="node2", user_tags="prod")
    define(api, "c", node="node2")

    def names(**query: str) -> list[str]:
        response = api.get("/vm", params=query)
        assert response.status_code == 200, response.text
        return sorted(vm["name"] for vm in response.json())

    assert names(tag="prod") == ["a", "b"]
    assert names(tag="prod", negate="") == ["c"]
    assert names(node="node2", negate="true") == ["a"]
    assert names(tag="prod", node="node2") == ["b"]
    assert names(tag="prod", node="node2", negate="") == []
    assert names(tag="absent") == []
    assert names(tag="absent", negate="") == ["a", "b", "c"]


def test_a_schema_1_document_reads_selector_as_node_selector(api3: ApiClient,
                                                             sim: SimCluster) -> None:
    define(api3, "old", node="node1")
    uuid = sim.state.vm_uuid("old")
    doc = dict(sim.state.doc(sim.state.paths.vm(uuid)))
    for field in ("node_limit", "node_selector", "node_autostart", "migration_method",
                  "migration_max_downtime", "tags"):
        doc.pop(field)
    sim.state.put(sim.state.paths.vm(uuid), {**doc, "selector": "vcpus"})
    spec = from_dict(VmSpec, sim.state.doc(sim.state.paths.vm(uuid)))
    assert (spec.node_selector, spec.node_limit, spec.migration_method) == ("vcpus", [], "none")
    assert meta(api3, "old")["node_selector"] == "vcpus"
    assert api3.get("/vm/old").json()[0]["node_selector"] == "vcpus"


def test_live_only_migration_that_fails_keeps_the_vm_on_its_source(sim: SimCluster) -> None:
    """The test driver cannot migrate: `live` keeps the guest where it runs (assigned there
    again, with the reason); `none` falls back to shutdown and start on the target."""
    sim.add_node("node1")
    sim.add_node("node2")
    sim.step()
    live = sim.state.define_vm("live", "node1", migration_method="live")
    fallback = sim.state.define_vm("fallback", "node1")
    sim.run_until(lambda: sim.where_running(live) == ["node1"] and
                  sim.where_running(fallback) == ["node1"], seconds=10)
    sim.migrate("live", "node2")
    sim.migrate("fallback", "node2")
    sim.run_until(lambda: sim.where_running(fallback) == ["node2"], seconds=20)
    sim.run_until(lambda: sim.state.vm_spec("live").migration is None, seconds=20)
    assert sim.where_running(live) == ["node1"]
    spec, status = sim.state.vm_spec("live"), sim.state.vm_status("live")
    assert (spec.node, spec.last_node) == ("node1", None)
    assert (status.node, status.state) == ("node1", "running")
    assert "live migration to node2 failed" in status.failed_reason
    # the reason stays while nothing changes, and the VM is left alone there
    for _ in range(5):
        sim.step()
    assert sim.where_running(live) == ["node1"]
    assert "live migration" in sim.state.vm_status("live").failed_reason
    # a new state request clears it
    sim.state.change(sim.state.paths.vm(live), state_request=1)
    sim.nodes["node1"].vm.reconcile(vm_key(live))
    assert sim.state.vm_status("live").failed_reason == ""
