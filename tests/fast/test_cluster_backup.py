"""Cluster state backup and restore in process (extensions.md §9): the real API over the real
store and cache, the `cluster.restore` task run by a real `TaskRunner`.

- `GET /backup` holds the desired state and nothing else;
- a backup restored over a changed cluster gives back exactly its desired state, and the state
  it replaced is saved first;
- every refusal of `POST /restore` leaves the ZooKeeper tree as it was (every znode's mzxid);
- a restore cut off after any of its transactions leaves the name indexes consistent, and run
  again converges on the backup (the marker stays until then; `DELETE /restore` clears it).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcd.api.base import ApiContext
from pvcd.controllers.cluster_restore import ClusterRestore
from pvcd.controllers.tasks.registry import TaskRegistry
from pvcd.controllers.tasks.runner import TaskRunner, task_key
from pvcd.domain.errors import BackendError
from pvcd.drivers.nft_rules import validate_rule
from pvcd.specs.cluster_backup import check_indexes
from pvcd.state.cluster_backup import desired_state
from pvcd.state.cluster_restore import RestoreWriter
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from tests.apiclient import ApiClient
from tests.fakes.api import serving_api
from tests.fakes.nodes import SimCluster
from tests.fakes.state import ClusterState


class Bench:
    """The API, its context and a task runner with the restore kind, over one cluster."""

    def __init__(self, sim: SimCluster, client: ApiClient, ctx: ApiContext,
                 folder: Path) -> None:
        self.sim, self.state, self.client, self.ctx = sim, sim.state, client, ctx
        self.folder = folder
        kind = ClusterRestore(sim.state.view, sim.state.store, ctx.uploads, [str(folder)],
                              validate_rule, sim.clock).kind()
        self.runner = TaskRunner("node1", sim.state.view, sim.state.store, TaskRegistry([kind]),
                                 executor="node1/1")
        self.runner.primary_active = True

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.call(method, path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    def restore(self, document: Any, **query: str) -> Any:
        """POST /restore with the document as the JSON body; the task run to its end."""
        response = self.client.post("/restore", params={"yes_i_really_mean_it": "", **query},
                                    data=json.dumps(document),
                                    headers={"Content-Type": "application/json"})
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        self.runner.reconcile(task_key(task_id))
        return self.state.doc(self.state.paths.task(task_id))

    def maintenance(self, on: bool) -> None:
        self.ok("POST", "/maintenance", data={"state": "on" if on else "off"})


@pytest.fixture
def bench(sim: SimCluster, tmp_path: Path) -> Iterator[Bench]:
    for name in ("node1", "node2"):
        sim.add_node(name)
    sim.step()  # node1 takes the primary role
    with serving_api(sim.state, sim.clock) as (server, client):
        server.ctx.backup_paths = (str(tmp_path),)
        yield Bench(sim, client, server.ctx, tmp_path)


def populate(bench: Bench) -> None:
    ok = bench.ok
    ok("POST", "/network", data={"vni": "100", "description": "prod", "nettype": "managed",
                                 "domain": "prod.example", "ip4_network": "10.100.0.0/24",
                                 "ip4_gateway": "10.100.0.1", "dhcp4": "",
                                 "dhcp4_start": "10.100.0.100", "dhcp4_end": "10.100.0.200"})
    ok("POST", "/network/prod/lease", data={"macaddress": "52:54:00:00:00:01",
                                            "ipaddress": "10.100.0.10", "hostname": "db"})
    ok("POST", "/network/prod/acl", data={"description": "ssh", "direction": "in",
                                          "rule": "tcp dport 22 accept"})
    ok("POST", "/network", data={"vni": "200", "description": "lab", "nettype": "bridged"})
    for name in ("web1", "web2"):
        bench.state.define_vm(name, "node1", state="stop")
    ok("POST", "/vm/web1/meta", data={"node_limit": "node1,node2"})
    ok("POST", "/vm/web1/tags", data={"action": "add", "tag": "prod"})
    ok("POST", "/provisioner/template/system", data={"name": "small", "vcpus": "1",
                                                    "vram": "512"})
    ok("POST", "/provisioner/template/network", data={"name": "prod"})
    ok("POST", "/provisioner/template/network/prod/net", data={"vni": "100"})
    ok("POST", "/provisioner/userdata", data={"name": "basic",
                                              "data": "#cloud-config\nhostname: a\n"})
    ok("POST", "/provisioner/profile", data={"name": "web", "system_template": "small",
                                             "network_template": "prod", "userdata": "basic",
                                             "script": "blank", "profile_type": "provisioner"})


def drop_vm(state: ClusterState, name: str) -> None:
    """The VM forgotten, as its node does once it has undefined it (DELETE /vm waits for
    that, and these nodes are simulated)."""
    uuid = state.vm_uuid(name)
    state.store.commit([Op.delete(state.paths.vm_name(name)), Op.delete(state.paths.vm(uuid))])


def tree(state: ClusterState) -> dict[str, int]:
    """Every znode of the cluster with its mzxid, read from ZooKeeper itself (a rewrite of the
    same bytes is a change too)."""
    found: dict[str, int] = {}
    pending = [state.paths.root]
    while pending:
        path = pending.pop()
        found[path] = state.client.exists(path).mzxid
        pending += [f"{path}/{child}" for child in state.client.get_children(path)]
    return found


def test_backup_holds_the_desired_state_only(bench: Bench) -> None:
    populate(bench)
    state, paths = bench.state, bench.state.paths
    state.put(paths.vm_status(state.vm_uuid("web1")), {"node": "node1", "state": "stopped"})
    doc = bench.ok("GET", "/backup")
    assert (doc["format"], doc["format_version"], doc["schema_version"], doc["primary_node"]) \
        == ("pvcd-cluster-backup", 1, 2, "node1")
    znodes = doc["znodes"]
    web1 = state.vm_uuid("web1")
    assert znodes["schema/version"] == {"version": 2}
    assert znodes[f"vms/{web1}"]["tags"][0]["name"] == "prod"
    assert znodes[f"vms/{web1}"]["node_limit"] == ["node1", "node2"]
    assert znodes["vm-names/web1"] == {"uuid": web1}
    assert znodes["networks/100/static/52:54:00:00:00:01"]["hostname"] == "db"
    assert znodes["networks/100/acl/in/ssh"]["rule"] == "tcp dport 22 accept"
    assert znodes["network-names/lab"] == {"vni": 200}
    assert znodes["provisioner/profile/web"]["system_template"] == "small"
    tops = {path.split("/")[0] for path in znodes}
    assert tops == {"schema", "networks", "network-names", "vms", "vm-names", "provisioner"}
    assert not [p for p in znodes if p.endswith(("/status", "/owner", "/console"))]


def test_restore_over_a_changed_cluster_gives_back_the_backup(bench: Bench) -> None:
    populate(bench)
    state, paths = bench.state, bench.state.paths
    backup = bench.ok("GET", "/backup")
    # the cluster changes: a network and a VM go, one comes, a lease and a template change
    bench.ok("DELETE", "/network/lab")
    drop_vm(state, "web2")
    state.define_vm("extra", "node2", state="stop")
    bench.ok("PUT", "/provisioner/template/system/small", data={"vcpus": "4"})
    bench.ok("DELETE", "/network/prod/lease/52:54:00:00:00:01")
    web1 = state.vm_uuid("web1")
    state.put(paths.vm_status(web1), {"node": "node1", "state": "stopped"})
    before = desired_state(state.view)

    bench.maintenance(True)
    task = bench.restore(backup)
    assert task["state"] == "success", task
    assert desired_state(state.view) == backup["znodes"]
    assert not state.cache.exists(paths.restore_marker)
    assert state.vm_uuid("web1") == web1
    assert state.cache.exists(paths.vm_status(web1)), "an unchanged VM keeps its status"
    saved = json.loads(Path(task["result"]["pre_restore"]).read_text())
    assert Path(task["result"]["pre_restore"]).parent == bench.folder
    assert Path(task["result"]["pre_restore"]).stat().st_mode & 0o777 == 0o600
    assert saved["znodes"] == before
    assert task["result"]["kept"] >= 1 and task["result"]["created"] >= 3
    # the same document again changes nothing
    mark = tree(state)
    assert bench.restore(backup)["state"] == "success"
    assert {p: z for p, z in tree(state).items() if not p.startswith(paths.tasks)} == \
        {p: z for p, z in mark.items() if not p.startswith(paths.tasks)}


def test_a_vm_of_an_unknown_node_is_placed_again(bench: Bench) -> None:
    uuid = bench.state.define_vm("far", "node1", state="stop")
    backup = bench.ok("GET", "/backup")
    backup["znodes"][f"vms/{uuid}"]["node"] = "elsewhere"
    bench.maintenance(True)
    assert bench.restore(backup)["state"] == "success"
    spec = bench.state.view.vm_spec(uuid)
    assert spec is not None and spec.node in ("node1", "node2")


def refusal(bench: Bench, message: str, body: Any = None, form: dict[str, str] | None = None,
            **query: str) -> None:
    before = tree(bench.state)
    if form is not None:
        response = bench.client.post("/restore", params=query, data=form)
    else:
        response = bench.client.post("/restore", params=query, data=json.dumps(body),
                                     headers={"Content-Type": "application/json"})
    assert response.status_code == 510, response.text
    assert message in response.json()["message"], response.json()
    assert tree(bench.state) == before, "a refused restore changed the tree"


def test_every_refusal_changes_nothing(bench: Bench) -> None:
    populate(bench)
    state = bench.state
    good = bench.ok("GET", "/backup")
    yes = {"yes_i_really_mean_it": ""}
    refusal(bench, "yes_i_really_mean_it", good)
    refusal(bench, "maintenance mode", good, **yes)
    bench.maintenance(True)
    refusal(bench, "not a JSON document", form={"cluster_data": "{oops", **yes})
    refusal(bench, "give the backup document", form=yes)
    refusal(bench, "PVC 1.0 dump", {"/pvc/nodes": ""}, **yes)
    refusal(bench, "schema version", {**good, "schema_version": 1}, **yes)
    broken = json.loads(json.dumps(good))
    broken["znodes"]["networks/100/acl/in/ssh"]["rule"] = "tcp dport 22 accept; flush ruleset"
    refusal(bench, "networks/100/acl/in/ssh", broken, **yes)
    leak = json.loads(json.dumps(good))
    leak["znodes"]["nodes/node1"] = {"name": "node1"}
    refusal(bench, "never holds", leak, **yes)
    web1 = state.vm_uuid("web1")
    state.put(state.paths.vm_status(web1), {"node": "node1", "state": "running"})
    refusal(bench, "web1", good, **yes)
    state.put(state.paths.vm_status(web1), {"node": "node1", "state": "stopped"})
    bench.ctx.backup_paths = ()
    refusal(bench, "backup.allowed_paths", good, **yes)
    bench.ctx.backup_paths = (str(bench.folder / "missing"),)
    refusal(bench, "does not exist", good, **yes)
    bench.ctx.backup_paths = (str(bench.folder),)
    # PVC's form and spelling are accepted
    response = bench.client.post("/restore", data={"cluster_data": json.dumps(good),
                                                   "yes-i-really-mean-it": "yes"})
    assert response.status_code == 202, response.text
    refusal(bench, "a restore runs alone", good, **yes)  # that task is still pending


def test_an_empty_cluster_takes_a_restore_outside_maintenance(bench: Bench) -> None:
    populate(bench)
    backup = bench.ok("GET", "/backup")
    for profile in ("web",):
        bench.ok("DELETE", f"/provisioner/profile/{profile}")
    for kind, name in (("template/system", "small"), ("template/network", "prod"),
                       ("userdata", "basic")):
        bench.ok("DELETE", f"/provisioner/{kind}/{name}")
    for network in ("prod", "lab"):
        bench.ok("DELETE", f"/network/{network}")
    for vm in ("web1", "web2"):
        drop_vm(bench.state, vm)
    assert bench.restore(backup)["state"] == "success"
    assert desired_state(bench.state.view) == backup["znodes"]


class CutOff(Store):
    """A store whose daemon is killed after `commits` more transactions."""

    def __init__(self, store: Store, commits: int) -> None:
        super().__init__(store.client, store.cache, store.timeout)
        self.left = commits

    def commit(self, ops: Any) -> list[Any]:
        if self.left == 0:
            raise BackendError("killed")
        self.left -= 1
        return super().commit(ops)


def consistent_indexes(view: ClusterView) -> None:
    paths, cache = view.paths, view.cache
    for uuid in view.vm_uuids():
        name = cache.get(paths.vm(uuid))["name"]
        assert cache.get(paths.vm_name(name)) == {"uuid": uuid}, (uuid, name)
    for name in cache.children(paths.vm_names):
        uuid = cache.get(paths.vm_name(name))["uuid"]
        assert cache.get(paths.vm(uuid))["name"] == name, name
    for vni in view.network_vnis():
        description = cache.get(paths.network(vni))["description"]
        assert cache.get(paths.network_name(description)) == {"vni": vni}
    for description in cache.children(paths.network_names):
        vni = cache.get(paths.network_name(description))["vni"]
        assert cache.get(paths.network(vni))["description"] == description


def test_a_restore_cut_off_anywhere_keeps_indexes_and_converges(bench: Bench) -> None:
    populate(bench)
    state = bench.state
    backup = bench.ok("GET", "/backup")
    bench.ok("DELETE", "/network/lab")
    drop_vm(state, "web2")
    state.define_vm("web2", "node2", state="stop")  # the name comes back on another VM
    bench.ok("POST", "/network", data={"vni": "300", "description": "lab",
                                       "nettype": "bridged"})  # the description too
    changed = desired_state(state.view)
    writer = RestoreWriter(state.view, state.store, batch_bytes=600)  # many small batches
    total = 0
    writer.restore(backup["znodes"], lambda done, all_, _: None)
    # count the transactions once, from the changed state, then cut off after each of them
    _rewind(state, changed)
    counting = CutOff(state.store, 10_000)
    RestoreWriter(state.view, counting, batch_bytes=600).restore(
        backup["znodes"], lambda done, all_, _: None)
    total = 10_000 - counting.left
    assert total >= 6, total
    for cut in range(total):
        _rewind(state, changed)
        with pytest.raises(BackendError):
            RestoreWriter(state.view, CutOff(state.store, cut), batch_bytes=600).restore(
                backup["znodes"], lambda done, all_, _: None)
        consistent_indexes(state.view)
        writer.restore(backup["znodes"], lambda done, all_, _: None)
        assert desired_state(state.view) == backup["znodes"], cut
        consistent_indexes(state.view)


def _rewind(state: ClusterState, znodes: dict[str, Any]) -> None:
    RestoreWriter(state.view, state.store).restore(znodes, lambda done, all_, _: None)
    assert desired_state(state.view) == znodes


def test_an_interrupted_restore_keeps_its_marker_until_run_again_or_cleared(
        bench: Bench) -> None:
    populate(bench)
    state, paths = bench.state, bench.state.paths
    backup = bench.ok("GET", "/backup")
    bench.ok("DELETE", "/network/lab")
    changed = desired_state(state.view)
    # the daemon died after the marker and part of the write
    state.put(paths.restore_marker, {"task_id": "0", "started": 1.0})
    with pytest.raises(BackendError):
        RestoreWriter(state.view, CutOff(state.store, 1), batch_bytes=600).restore(
            backup["znodes"], lambda done, all_, _: None)
    assert desired_state(state.view) != changed
    # maintenance is off, the cluster is not empty: the marker lets the restore finish
    assert bench.restore(backup)["state"] == "success"
    assert desired_state(state.view) == backup["znodes"]
    assert not state.cache.exists(paths.restore_marker)
    # or the operator clears it, but not under a restore that has not ended
    state.put(paths.restore_marker, {"task_id": "0", "started": 1.0})
    pending = bench.client.post("/restore", params={"yes_i_really_mean_it": ""},
                                data=json.dumps(backup),
                                headers={"Content-Type": "application/json"})
    assert pending.status_code == 202, pending.text
    response = bench.client.call("DELETE", "/restore", params={"yes_i_really_mean_it": ""})
    assert response.status_code == 510 and "its marker goes" in response.json()["message"]
    bench.ok("DELETE", f"/tasks/{pending.json()['task_id']}")  # cancelled before it ran
    response = bench.client.call("DELETE", "/restore")
    assert response.status_code == 510 and "yes_i_really_mean_it" in response.json()["message"]
    bench.ok("DELETE", "/restore", params={"yes_i_really_mean_it": ""})
    assert not state.cache.exists(paths.restore_marker)
    response = bench.client.call("DELETE", "/restore", params={"yes_i_really_mean_it": ""})
    assert response.status_code == 510 and "no restore marker" in response.json()["message"]


def test_writes_are_compare_and_set(bench: Bench) -> None:
    """A document changed between the plan and its write makes the writer plan again."""
    populate(bench)
    state = bench.state
    backup = bench.ok("GET", "/backup")
    bench.ok("DELETE", "/network/lab")
    raced: list[bool] = []

    class Racing(Store):
        def commit(self, ops: Any) -> list[Any]:
            if not raced:
                raced.append(True)
                state.store.commit([Op.set(state.paths.network(100), {
                    **state.doc(state.paths.network(100)), "domain": "raced.example"},
                    state.cache.entry(state.paths.network(100)).version)])
            return super().commit(ops)

    backup["znodes"]["networks/100"]["domain"] = "restored.example"
    RestoreWriter(state.view, Racing(state.client, state.cache)).restore(
        backup["znodes"], lambda done, all_, _: None)
    assert state.doc(state.paths.network(100))["domain"] == "restored.example"


def test_a_json_object_of_values_carries_the_document_too(bench: Bench) -> None:
    populate(bench)
    backup = bench.ok("GET", "/backup")
    bench.maintenance(True)
    response = bench.client.post("/restore", json={"cluster_data": json.dumps(backup),
                                                   "yes_i_really_mean_it": True})
    assert response.status_code == 202, response.text
    bench.runner.reconcile(task_key(response.json()["task_id"]))
    task = bench.state.doc(bench.state.paths.task(response.json()["task_id"]))
    assert task["state"] == "success", task
    assert "cluster_data" not in task["args"]


def test_a_backup_taken_while_vms_come_and_go_is_whole(bench: Bench) -> None:
    """The cache learns a transaction one znode at a time: a copy taken in between would hold
    a VM without its name entry (or the reverse), a backup its restore refuses. Every backup
    taken while another thread defines and removes VMs passes the index check."""
    state = bench.state
    stop = threading.Event()

    def churn() -> None:
        index = 0
        while not stop.is_set():
            name = f"churn{index % 5}"
            if state.view.vm_uuid_by_name(name) is None:
                state.define_vm(name, "node1", state="stop")
            else:
                drop_vm(state, name)
            index += 1

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    try:
        for _ in range(300):
            check_indexes(desired_state(state.view))
    finally:
        stop.set()
        worker.join()


def test_a_copy_waits_for_the_rest_of_a_transaction(bench: Bench) -> None:
    """A VM spec seen without its name entry (a transaction the cache holds in part) is not
    copied as it is: the copy is taken again on the next change, once whole; a tree that stays
    half is copied after the settle time, as it is."""
    state, paths = bench.state, bench.state.paths
    uuid = "00000000-0000-4000-8000-000000000001"
    state.define_vm("whole", "node1", state="stop")
    spec = dict(state.doc(paths.vm(state.vm_uuid("whole"))), uuid=uuid, name="half")
    state.store.commit([Op.create(paths.vm(uuid), spec)])  # its name entry not yet there
    started = time.monotonic()
    copy = desired_state(state.view, settle=0.3)
    assert time.monotonic() - started >= 0.3
    assert f"vms/{uuid}" in copy and "vm-names/half" not in copy
    found: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: found.append(desired_state(state.view,
                                                                        settle=30)))
    reader.start()
    state.store.commit([Op.create(paths.vm_name("half"), {"uuid": uuid})])
    reader.join(30)
    assert found and found[0]["vm-names/half"] == {"uuid": uuid}
    check_indexes(found[0])
