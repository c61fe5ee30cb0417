"""VM snapshots through the API, in process (extensions.md §5.1, §5.2): the real API, the real
snapshot task kinds run by a real `TaskRunner`, and the primary's real storage executor over
`FakeCeph`, whose volumes hold bytes. Every 510 of §5.2 is asked for, and then nothing was
changed: no task, no record, no RBD snapshot. (Against a real Ceph and a running QEMU guest:
tests/e2e/test_vm_snapshots.py.)"""

from __future__ import annotations

import threading
import uuid as uuids
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from pvcd.cli.main import cli
from pvcd.controllers.tasks.registry import TaskRegistry
from pvcd.controllers.tasks.runner import TaskRunner
from pvcd.controllers.tasks.storage_steps import StorageSteps
from pvcd.controllers.vm_snapshots import VmSnapshotSteps
from pvcd.domain.errors import Conflict
from pvcd.state.store import Op
from tests.apiclient import ApiClient
from tests.fakes.api import TOKEN
from tests.fakes.state import ClusterState
from tests.fast.test_volume_api import Storage, refused, storage  # noqa: F401 (a fixture)

MIB = 1 << 20


def disk(name: str, dev: str, extra: str = "", kind: str = "network",
         device: str = "disk") -> str:
    source = f"<source protocol='rbd' name='{name}'/>" if kind == "network" else \
        f"<source file='{name}'/>"
    return (f"<disk type='{kind}' device='{device}'>{source}"
            f"<target dev='{dev}' bus='virtio'/>{extra}</disk>")


def add_vm(state: ClusterState, name: str, disks: str, vm_state: str = "stop",
           running: bool = False, **spec: Any) -> str:
    uuid = str(uuids.uuid4())
    xml = (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>"
           "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
           f"<devices>{disks}</devices></domain>")
    ops = [Op.create(state.paths.vm(uuid), {"uuid": uuid, "name": name, "xml": xml,
                                            "node": "node1", "state": vm_state, **spec}),
           Op.create(state.paths.vm_name(name), {"uuid": uuid})]
    if running:
        ops.append(Op.create(state.paths.vm_status(uuid), {"node": "node1",
                                                           "state": "running"}))
    state.store.commit(ops)
    return uuid


class World:
    def __init__(self, lab: Storage, api: ApiClient) -> None:
        state = lab.state
        self.storage, self.api, self.state, self.ceph = lab, api, state, lab.ceph
        steps = VmSnapshotSteps(state.view, state.store, StorageSteps(state.view, state.store),
                                freeze_timeout=30.0)
        self.runner = TaskRunner("node1", state.view, state.store, TaskRegistry(steps.kinds()),
                                 executor="node1/1")
        self.runner.primary_active = True

    def run(self, response: Any) -> dict[str, Any]:
        """Run the task the 202 `response` names here; its record as it ended."""
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        self.runner.reconcile(f"task/{task_id}")
        doc = self.state.doc(self.state.paths.task(task_id))
        assert isinstance(doc, dict)
        return doc

    def tasks(self) -> list[str]:
        return self.state.cache.children(self.state.paths.tasks)

    def snapshots(self, volume: str) -> set[str]:
        return set(self.ceph.pools["p"][volume]["snapshots"])


@pytest.fixture
def world(storage: Storage) -> Iterator[World]:  # noqa: F811
    with storage.api() as client:
        assert client.post("/storage/ceph/pool", params={"pool": "p", "pgs": 8}).status_code == 200
        for volume in ("a", "b", "iso"):
            assert client.post("/storage/ceph/volume", params={
                "pool": "p", "volume": volume, "size": "4M"}).status_code == 200
        storage.ceph.write("p", "a", b"disk a at the snapshot")
        storage.ceph.write("p", "b", b"disk b at the snapshot")
        add_vm(storage.state, "web", disk("p/a", "vda") + disk("p/b", "vdb")
               + disk("p/iso", "sda", device="cdrom"))
        yield World(storage, client)


def test_take_rollback_and_remove_a_snapshot_of_a_stopped_vm(world: World) -> None:
    api, ceph = world.api, world.ceph
    done = world.run(api.post("/vm/web/snapshot", params={"snapshot_name": "s1"}))
    assert done["state"] == "success", done
    assert done["result"] == {"name": "s1", "consistency": "stopped",
                              "rbd_snapshots": ["p/a@s1", "p/b@s1"]}
    assert world.snapshots("a") == world.snapshots("b") == {"s1"}
    assert world.snapshots("iso") == set()  # a CD-ROM is left out
    listed = api.get("/vm/web/snapshot").json()
    assert [s["name"] for s in listed] == ["s1"] and listed[0]["consistency"] == "stopped"
    assert api.get("/vm/web").json()[0]["snapshots"] == listed
    assert [vm["snapshots"] for vm in api.get("/vm").json()] == [listed]

    ceph.write("p", "a", b"changed")
    ceph.write("p", "b", b"changed")
    done = world.run(api.post("/vm/web/snapshot/rollback", params={"snapshot_name": "s1"}))
    assert done["state"] == "success", done
    assert ceph.read("p", "a").startswith(b"disk a at the snapshot")
    assert ceph.read("p", "b").startswith(b"disk b at the snapshot")

    done = world.run(api.call("DELETE", "/vm/web/snapshot", params={"snapshot_name": "s1"}))
    assert done["state"] == "success", done
    assert world.snapshots("a") == world.snapshots("b") == set()
    assert api.get("/vm/web/snapshot").json() == []
    assert api.get("/vm").json()[0]["snapshots"] == []


def test_a_snapshot_that_cannot_go_keeps_what_remains_in_the_record(world: World) -> None:
    api, ceph = world.api, world.ceph
    assert world.run(api.post("/vm/web/snapshot",
                              params={"snapshot_name": "s1"}))["state"] == "success"
    delete = ceph.snapshot_delete

    def with_clones(pool: str, volume: str, snapshot: str) -> None:
        if volume == "b":
            raise Conflict(f"snapshot {pool}/{volume}@{snapshot} has clones")
        delete(pool, volume, snapshot)

    ceph.snapshot_delete = with_clones  # type: ignore[method-assign]
    done = world.run(api.call("DELETE", "/vm/web/snapshot", params={"snapshot_name": "s1"}))
    assert done["state"] == "failure" and "has clones" in done["message"], done
    assert world.snapshots("a") == set() and world.snapshots("b") == {"s1"}
    assert [s["rbd_snapshots"] for s in api.get("/vm/web/snapshot").json()] == [["p/b@s1"]]


def test_a_failed_rollback_leaves_the_vm_stopped_and_names_the_disks_done(world: World) -> None:
    api, ceph = world.api, world.ceph
    assert world.run(api.post("/vm/web/snapshot",
                              params={"snapshot_name": "s1"}))["state"] == "success"
    rollback = ceph.snapshot_rollback

    def broken(pool: str, volume: str, snapshot: str, size_bytes: int = 0) -> None:
        if volume == "b":
            raise Conflict("the disk is broken")
        rollback(pool, volume, snapshot, size_bytes)

    ceph.snapshot_rollback = broken  # type: ignore[method-assign]
    done = world.run(api.post("/vm/web/snapshot/rollback", params={"snapshot_name": "s1"}))
    assert done["state"] == "failure", done
    assert "disks rolled back already: p/a" in done["message"], done
    assert api.get("/vm/web").json()[0]["state"] == "stop"


@pytest.mark.parametrize("setup, method, path, values, words", [
    (None, "POST", "/vm/web/snapshot", {"snapshot_name": "a/b"}, "snapshot name 'a/b'"),
    (None, "POST", "/vm/web/snapshot", {"snapshot_name": "s", "consistency": "x"},
     "invalid consistency 'x'"),
    (None, "POST", "/vm/nope/snapshot", {}, "VM 'nope' not found"),
    ("rbd-taken", "POST", "/vm/web/snapshot", {"snapshot_name": "taken"},
     "p/b of VM 'web' already has a snapshot 'taken'"),
    ("no-rbd", "POST", "/vm/other/snapshot", {}, "no writable RBD disk"),
    ("file-disk", "POST", "/vm/other/snapshot", {}, "not RBD volumes"),
    ("provision", "POST", "/vm/other/snapshot", {}, "being provisioned"),
    ("migrating", "POST", "/vm/other/snapshot", {}, "is migrating"),
    ("busy", "POST", "/vm/web/snapshot", {}, "busy with task"),
    (None, "DELETE", "/vm/web/snapshot", {}, "snapshot_name"),
    (None, "DELETE", "/vm/web/snapshot", {"snapshot_name": "nope"}, "no snapshot 'nope'"),
    (None, "POST", "/vm/web/snapshot/rollback", {"snapshot_name": "nope"},
     "no snapshot 'nope'"),
    ("running", "POST", "/vm/other/snapshot/rollback", {"snapshot_name": "s1"},
     "runs on node1"),
])
def test_refusals_change_nothing(world: World, setup: str | None, method: str, path: str,
                                 values: dict[str, str], words: str) -> None:
    state = world.state
    if setup == "rbd-taken":
        world.ceph.snapshot_create("p", "b", "taken")  # and in the mirror, as the sync writes it
        state.store.commit([Op.create(state.paths.storage_snapshot("p", "b", "taken"), {})])
    elif setup == "no-rbd":
        add_vm(state, "other", disk("p/iso", "sda", device="cdrom"))
    elif setup == "file-disk":
        add_vm(state, "other", disk("p/a", "vda") + disk("/x.img", "vdb", kind="file"))
    elif setup == "provision":
        add_vm(state, "other", disk("p/a", "vda"), vm_state="provision")
    elif setup == "migrating":
        add_vm(state, "other", disk("p/a", "vda"), vm_state="start",
               migration={"request": 1, "source": "node1", "action": "migrate"})
    elif setup == "busy":
        state.store.commit([Op.create(state.paths.storage_request("0000000000001-aa"), {
            "id": "0000000000001-aa", "op": "volume-modify", "target": "primary",
            "args": {"pool": "p", "volume": "a", "size": "8M"}, "created": 1.0})])
    elif setup == "running":
        uuid = add_vm(state, "other", disk("p/a", "vda"), vm_state="start", running=True)
        state.store.commit([
            Op.create(state.paths.vm_snapshots(uuid), {}),
            Op.create(state.paths.vm_snapshot(uuid, "s1"), {
                "name": "s1", "timestamp": 1.0, "consistency": "stopped", "xml": "",
                "rbd_snapshots": ["p/a@s1"]})])
    tasks = list(world.tasks())
    refused(world.api.call(method, path, params=values), words)
    assert world.tasks() == tasks
    assert world.snapshots("a") == set()


def test_a_rename_moves_the_records_with_the_volumes(world: World) -> None:
    api = world.api
    assert api.post("/storage/ceph/volume", params={
        "pool": "p", "volume": "db_root", "size": "4M"}).status_code == 200
    add_vm(world.state, "db", disk("p/db_root", "vda") + disk("p/a", "vdb"))
    assert world.run(api.post("/vm/db/snapshot",
                              params={"snapshot_name": "s1"}))["state"] == "success"
    answer = api.post("/vm/db/rename", params={"new_name": "pg"})
    assert answer.status_code == 200, answer.text
    assert world.ceph.pools["p"]["pg_root"]["snapshots"] == {"s1"}
    record = world.state.doc(world.state.paths.vm_snapshot(world.state.vm_uuid("pg"), "s1"))
    assert record["rbd_snapshots"] == ["p/pg_root@s1", "p/a@s1"]
    assert "<name>pg</name>" in record["xml"] and "p/pg_root" in record["xml"]
    assert world.run(api.post("/vm/pg/snapshot/rollback",
                              params={"snapshot_name": "s1"}))["state"] == "success"


def test_the_cli_takes_lists_rolls_back_and_removes(world: World) -> None:
    env = {"PVC_URL": world.api.base, "PVC_TOKEN": TOKEN, "PVC_CONNECTION": "",
           "PVC_CONFIG": "/nonexistent"}
    stop = threading.Event()

    def run_tasks() -> None:  # the primary's task runner
        while not stop.wait(0.05):
            for key in list(world.runner.keys()):
                world.runner.reconcile(key)

    runner = threading.Thread(target=run_tasks, daemon=True)
    runner.start()
    try:
        def pvc(*args: str) -> str:
            result = CliRunner().invoke(cli, ["vm", "snapshot", *args], env=env)
            assert result.exit_code == 0, result.output
            return result.output

        assert "Took snapshot 's1' of VM 'web' (stopped)" in pvc("create", "web", "s1",
                                                                 "--wait")
        listed = pvc("list", "web")
        assert "s1" in listed and "stopped" in listed and "p/a, p/b" in listed
        assert "Rolled VM 'web' back to snapshot 's1'" in pvc("rollback", "web", "s1", "--yes",
                                                             "--wait")
        assert "Removed snapshot 's1'" in pvc("remove", "web", "s1", "--yes", "--wait")
        assert "has no snapshots" in pvc("list", "web")
        bad = CliRunner().invoke(cli, ["vm", "snapshot", "create", "web", "a/b"], env=env)
        assert bad.exit_code == 1 and "snapshot name 'a/b' is invalid" in bad.output
    finally:
        stop.set()
        runner.join(5)


def test_none_takes_the_disks_of_a_running_vm_without_holding_it(world: World) -> None:
    uuid = add_vm(world.state, "live", disk("p/iso", "vda"), vm_state="start", running=True)
    done = world.run(world.api.post("/vm/live/snapshot", params={
        "snapshot_name": "s1", "consistency": "none"}))
    assert done["state"] == "success", done
    assert done["result"]["consistency"] == "none" and world.snapshots("iso") == {"s1"}
    assert not world.state.cache.exists(world.state.paths.vm_hold(uuid))
    assert [a["kind"] for a in done["artifacts"]] == ["rbd-snapshot"]
