"""Volume clone, resize/rename, snapshot rename and rollback (extensions.md §2.2-§2.4) in
process: the real API and the primary's real request executor over `FakeCeph`, whose volumes
hold bytes, so a clone and a rollback are judged by what the volume holds. Every 510 of the
spec is asked for, and Ceph and the mirror are checked unchanged after it. (The same against
a real Ceph: tests/integration/test_volume_requests.py.)"""

from __future__ import annotations

import contextlib
import threading
import uuid as uuids
from collections.abc import Iterator
from typing import Any

import pytest

from pvcd.controllers.storage.primary import PrimaryStorage
from pvcd.domain.records import StorageRequest
from pvcd.state.store import Op
from tests.apiclient import ApiClient
from tests.fakes.api import running_api
from tests.fakes.drivers import FakeCeph
from tests.fakes.state import ClusterState, FakeClock
from tests.fakes.storage import make_primary_storage
from tests.fakes.tasks import add_task

MIB = 1 << 20
SOURCE = b"pvcd clone source " * 1000


class Storage:
    """The API, the fake Ceph behind the primary's executor, and the cluster state."""

    def __init__(self, state: ClusterState, ceph: FakeCeph, service: PrimaryStorage) -> None:
        self.state, self.ceph, self.service = state, ceph, service

    def changed(self, path: str) -> None:  # the watch the daemon's wiring sets up
        key = self.service.requests.key_of_path(path)
        if key is not None:
            self.service.request_controller.enqueue(key)

    @contextlib.contextmanager
    def api(self, timeout: float = 5.0) -> Iterator[ApiClient]:
        with running_api(self.state, FakeClock(), storage_request_timeout=timeout) as client:
            yield client

    def mirrored(self, pool: str, volume: str) -> dict[str, Any] | None:
        doc = self.state.cache.get(self.state.paths.storage_volume(pool, volume))
        return doc if isinstance(doc, dict) else None

    def add_vm(self, name: str, disk: str, state: str = "stop", running: bool = False) -> None:
        uuid = str(uuids.uuid4())
        xml = (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>"
               "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
               "<devices><disk type='network' device='disk'>"
               f"<source protocol='rbd' name='{disk}'/><target dev='vda' bus='virtio'/>"
               "</disk></devices></domain>")
        paths = self.state.paths
        ops = [Op.create(paths.vm(uuid), {"uuid": uuid, "name": name, "xml": xml,
                                          "node": "node1", "state": state}),
               Op.create(paths.vm_name(name), {"uuid": uuid})]
        if running:
            ops.append(Op.create(paths.vm_status(uuid), {"node": "node1", "state": "running"}))
        self.state.store.commit(ops)


@pytest.fixture
def storage(cluster_state: ClusterState) -> Iterator[Storage]:
    ceph = FakeCeph()
    service = make_primary_storage(cluster_state, ceph)
    world = Storage(cluster_state, ceph, service)
    service.request_controller.start()
    cluster_state.cache.subscribe(world.changed)
    yield world
    cluster_state.cache.unsubscribe(world.changed)
    service.request_controller.stop()


@pytest.fixture
def api(storage: Storage) -> Iterator[ApiClient]:
    with storage.api() as client:
        assert client.post("/storage/ceph/pool", params={"pool": "p", "pgs": 8}).status_code == 200
        assert client.post("/storage/ceph/volume",
                           params={"pool": "p", "volume": "v", "size": "4M"}).status_code == 200
        storage.ceph.write("p", "v", SOURCE)
        yield client


def put(client: ApiClient, path: str, values: dict[str, str]) -> Any:
    return client.call("PUT", path, params=values)


def refused(response: Any, *texts: str) -> None:
    assert response.status_code == 510, response.text
    for text in texts:
        assert text in response.json()["message"], response.json()


# --- §2.2 clone -------------------------------------------------------------------------------

def test_a_clone_is_a_full_copy_of_the_volume_or_of_a_snapshot(api: ApiClient,
                                                               storage: Storage) -> None:
    ceph = storage.ceph
    answer = api.post("/storage/ceph/volume/p/v/clone", params={"new_volume": "c1"})
    assert answer.status_code == 200, answer.text
    assert "Cloned RBD volume p/v to p/c1" in answer.json()["message"]
    assert ceph.read("p", "c1") == ceph.read("p", "v")
    assert storage.mirrored("p", "c1")["stats"]["size"] == 4 * MIB
    assert api.post("/storage/ceph/volume/snapshot",
                    params={"pool": "p", "volume": "v", "snapshot": "s1"}).status_code == 200
    at_snapshot = ceph.read("p", "v")
    ceph.write("p", "v", b"changed after the snapshot")
    answer = api.post("/storage/ceph/volume/p/v/clone",
                      params={"new_volume": "c2", "snapshot": "s1", "wait": "true"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["source"] == "p/v@s1"
    assert ceph.read("p", "c2") == at_snapshot != ceph.read("p", "v")
    ceph.write("p", "c2", b"the copy is independent")
    assert ceph.read("p", "v").startswith(b"changed after the snapshot")


@pytest.mark.parametrize(("path", "values", "texts"), [
    ("/storage/ceph/volume/nope/v/clone", {"new_volume": "c"}, ("RBD pool nope not found",)),
    ("/storage/ceph/volume/p/nope/clone", {"new_volume": "c"}, ("p/nope not found",)),
    ("/storage/ceph/volume/p/v/clone", {"new_volume": "c", "snapshot": "nope"},
     ("p/v@nope not found",)),
    ("/storage/ceph/volume/p/v/clone", {"new_volume": "a/b"}, ("volume name 'a/b' is invalid",)),
    ("/storage/ceph/volume/p/v/clone", {}, ("new_volume",)),
    ("/storage/ceph/volume/p/v/clone", {"new_volume": "v"}, ("p/v already exists",)),
])
def test_a_clone_of_unknown_or_into_a_taken_or_invalid_name_is_refused(
        api: ApiClient, storage: Storage, path: str, values: dict[str, str],
        texts: tuple[str, ...]) -> None:
    refused(api.post(path, params=values), *texts)
    assert sorted(storage.ceph.pools["p"]) == ["v"]


def test_a_clone_needs_room_in_the_pool(api: ApiClient, storage: Storage) -> None:
    ceph = storage.ceph
    ceph.capacity["p"] = 4 * MIB + len(SOURCE)  # the 4 MiB copy needs more than is free
    refused(api.post("/storage/ceph/volume/p/v/clone", params={"new_volume": "c"}),
            "needs 4194304 bytes", "free", "nothing was changed")
    ceph.capacity["p"] = 5 * MIB  # fits, but past 80 % of the capacity
    refused(api.post("/storage/ceph/volume/p/v/clone", params={"new_volume": "c"}),
            "soft cap", "force")
    assert sorted(ceph.pools["p"]) == ["v"] and storage.mirrored("p", "c") is None
    answer = api.post("/storage/ceph/volume/p/v/clone", params={"new_volume": "c", "force": "true"})
    assert answer.status_code == 200, answer.text
    assert ceph.read("p", "c") == ceph.read("p", "v")


def test_a_clone_of_a_volume_a_running_vm_uses_needs_a_snapshot(api: ApiClient,
                                                                storage: Storage) -> None:
    storage.add_vm("web1", "p/v", state="start", running=True)
    refused(api.post("/storage/ceph/volume/p/v/clone", params={"new_volume": "c"}),
            "used by VM web1 (start, running on node1)", "take a snapshot")
    assert api.post("/storage/ceph/volume/snapshot",
                    params={"pool": "p", "volume": "v", "snapshot": "s"}).status_code == 200
    answer = api.post("/storage/ceph/volume/p/v/clone", params={"new_volume": "c", "snapshot": "s"})
    assert answer.status_code == 200, answer.text


def test_a_clone_of_a_busy_volume_is_refused(api: ApiClient, storage: Storage) -> None:
    add_task(storage.state, "0000000000001-aaaaaaaa", objects=("volume:p/v",),
             name="volume.upload", state="running")
    refused(api.post("/storage/ceph/volume/p/v/clone", params={"new_volume": "c"}),
            "busy with task 0000000000001-aaaaaaaa (volume.upload", "/api/v1/tasks/")
    assert sorted(storage.ceph.pools["p"]) == ["v"]


def test_a_clone_still_running_at_the_timeout_answers_202_and_finishes_as_a_task(
        storage: Storage, api: ApiClient) -> None:
    release = threading.Event()
    copy = storage.ceph.volume_copy

    def slow_copy(*args: Any, **kwargs: Any) -> None:
        release.wait(10)
        copy(*args, **kwargs)

    storage.ceph.volume_copy = slow_copy  # type: ignore[method-assign]
    with storage.api(timeout=0.2) as short:
        answer = short.post("/storage/ceph/volume/p/v/clone", params={"new_volume": "c"})
        assert answer.status_code == 202, answer.text
        doc = answer.json()
        assert doc["task_name"] == "storage.volume-clone" and doc["run_on"] == "node1"
        assert answer.headers["Location"] == f"/api/v1/tasks/{doc['task_id']}"
        assert short.get(f"/tasks/{doc['task_id']}").json()["state"] == "running"
        refused(short.post("/storage/ceph/volume/p/v/clone", params={"new_volume": "d"}),
                f"busy with task {doc['task_id']} (storage.volume-clone")
        release.set()
        storage.service.request_controller.stop()  # waits for the copy to end
        task = short.get(f"/tasks/{doc['task_id']}").json()
        assert task["state"] == "success", task
    assert storage.ceph.read("p", "c") == storage.ceph.read("p", "v")


# --- §2.3 resize and rename -------------------------------------------------------------------

def test_resize_and_rename_in_one_request_with_pvc_names(api: ApiClient,
                                                         storage: Storage) -> None:
    answer = put(api, "/storage/ceph/volume/p/v", {"new_size": "8M", "new_name": "w"})
    assert answer.status_code == 200, answer.text
    assert "resized to 8388608 bytes and renamed to w" in answer.json()["message"]
    assert sorted(storage.ceph.pools["p"]) == ["w"]
    assert storage.ceph.pools["p"]["w"]["size"] == 8 * MIB
    assert storage.ceph.read("p", "w").startswith(SOURCE)
    assert storage.mirrored("p", "v") is None and storage.mirrored("p", "w") is not None
    # both spellings with the same value are one value
    assert put(api, "/storage/ceph/volume/p/w", {"size": "16M",
                                                "new_size": "16777216"}).status_code == 200


@pytest.mark.parametrize(("values", "texts"), [
    ({"size": "8M", "new_size": "16M"}, ("'size' and 'new_size'", "different values")),
    ({"name": "a", "new_name": "b"}, ("'name' and 'new_name'",)),
    ({}, ("give 'name' or 'new_name'",)),
    ({"new_size": "lots"}, ("size 'lots' is invalid",)),
    ({"new_name": "a@b"}, ("volume name 'a@b' is invalid",)),
    ({"size": "1M"}, ("allow_shrink",)),
])
def test_a_bad_change_is_refused(api: ApiClient, storage: Storage, values: dict[str, str],
                                 texts: tuple[str, ...]) -> None:
    refused(put(api, "/storage/ceph/volume/p/v", values), *texts)
    assert storage.ceph.pools["p"]["v"]["size"] == 4 * MIB and list(storage.ceph.pools["p"]) \
        == ["v"]


def test_a_rename_onto_a_taken_name_or_of_a_volume_a_vm_names_is_refused(
        api: ApiClient, storage: Storage) -> None:
    assert api.post("/storage/ceph/volume", params={"pool": "p", "volume": "x",
                                             "size": "1M"}).status_code == 200
    refused(put(api, "/storage/ceph/volume/p/v", {"name": "x"}), "p/x already exists")
    storage.add_vm("db1", "p/v@golden")  # even a stopped VM, even through a snapshot
    storage.add_vm("db2", "p/v")
    refused(put(api, "/storage/ceph/volume/p/v", {"new_name": "y"}),
            "named in the XML of VM db1, db2", "/vm/<vm>/rename")
    assert sorted(storage.ceph.pools["p"]) == ["v", "x"]
    assert put(api, "/storage/ceph/volume/p/v", {"size": "8M"}).status_code == 200  # a grow is


def test_a_shrink_under_a_running_vm_is_refused_and_a_grow_needs_room(
        api: ApiClient, storage: Storage) -> None:
    storage.add_vm("web1", "p/v", state="start", running=True)
    refused(put(api, "/storage/ceph/volume/p/v", {"size": "2M", "allow_shrink": "true"}),
            "used by VM web1", "stop the VM first")
    assert storage.ceph.pools["p"]["v"]["size"] == 4 * MIB
    storage.ceph.capacity["p"] = 10 * MIB
    refused(put(api, "/storage/ceph/volume/p/v", {"size": "16M"}), "only", "bytes free")
    refused(put(api, "/storage/ceph/volume/p/v", {"size": "12M"}), "soft cap")
    assert storage.ceph.pools["p"]["v"]["size"] == 4 * MIB
    assert storage.mirrored("p", "v")["stats"]["size"] == 4 * MIB
    answer = put(api, "/storage/ceph/volume/p/v", {"size": "12M", "force": ""})
    assert answer.status_code == 200, answer.text
    assert "VM web1 runs with it" in answer.json()["message"]
    assert "guest was NOT told" in answer.json()["message"]
    assert storage.ceph.pools["p"]["v"]["size"] == 12 * MIB


def test_a_change_of_a_busy_volume_is_refused(api: ApiClient, storage: Storage) -> None:
    request = StorageRequest(id="0000000000002-bbbbbbbb", op="snapshot-add",
                             args={"pool": "p", "volume": "v", "snapshot": "s"},
                             target="node9", created=1.0)  # no executor here takes it
    storage.state.store.commit([Op.create(storage.state.paths.storage_request(request.id),
                                          request.to_doc())])
    refused(put(api, "/storage/ceph/volume/p/v", {"size": "8M"}),
            "busy with task 0000000000002-bbbbbbbb (storage.snapshot-add, pending)")
    assert storage.ceph.pools["p"]["v"]["size"] == 4 * MIB


# --- §2.4 snapshot rename and rollback --------------------------------------------------------

def test_a_snapshot_is_renamed_and_keeps_its_contents(api: ApiClient, storage: Storage) -> None:
    for name in ("s1", "s2"):
        assert api.post("/storage/ceph/volume/snapshot",
                        params={"pool": "p", "volume": "v", "snapshot": name}).status_code == 200
    path = "/storage/ceph/volume/snapshot/p/v/s1"
    refused(put(api, path, {"new_name": "s2"}), "p/v@s2 already exists")
    refused(put(api, path, {"new_name": "a b"}), "snapshot name 'a b' is invalid")
    refused(put(api, path, {}), "new_name")
    refused(put(api, "/storage/ceph/volume/snapshot/p/v/nope", {"new_name": "x"}), "not found")
    assert put(api, path, {"new_name": "golden"}).status_code == 200
    assert storage.ceph.pools["p"]["v"]["snapshots"] == {"golden", "s2"}
    names = [s["snapshot"] for s in api.get("/storage/ceph/snapshot?volume=v").json()]
    assert sorted(names) == ["golden", "s2"]
    storage.ceph.write("p", "v", b"later")
    assert api.post("/storage/ceph/volume/p/v/clone", params={"new_volume": "c",
                                                       "snapshot": "golden"}).status_code == 200
    assert storage.ceph.read("p", "c").startswith(SOURCE)


def test_a_rollback_restores_the_snapshot_bytes(api: ApiClient, storage: Storage) -> None:
    ceph = storage.ceph
    # PVC's element POST takes the snapshot
    assert api.post("/storage/ceph/snapshot/p/v/s").status_code == 200
    before = ceph.read("p", "v")
    ceph.write("p", "v", b"overwritten")
    storage.add_vm("web1", "p/v", state="stop")
    answer = api.post("/storage/ceph/volume/snapshot/p/v/s/rollback")
    assert answer.status_code == 200, answer.text
    assert ceph.read("p", "v") == before
    ceph.write("p", "v", b"again")
    assert api.post("/storage/ceph/snapshot/p/v/s/rollback",
                    params={"wait": "1"}).status_code == 200  # PVC's path
    assert ceph.read("p", "v") == before


def test_a_rollback_is_refused_while_the_volume_is_in_use(api: ApiClient,
                                                          storage: Storage) -> None:
    ceph = storage.ceph
    assert api.post("/storage/ceph/snapshot/p/v/s").status_code == 200
    ceph.write("p", "v", b"current")
    path = "/storage/ceph/volume/snapshot/p/v/s/rollback"
    refused(api.post("/storage/ceph/volume/snapshot/p/v/nope/rollback"), "p/v@nope not found")
    storage.add_vm("web1", "p/v", state="start")
    refused(api.post(path), "used by VM web1 (start)", "stop the VM first")
    storage.add_vm("web2", "p/v", state="stop", running=True)  # stopping, still runs
    refused(api.post(path), "web2 (stop, running on node1)")
    assert ceph.read("p", "v").startswith(b"current")


def test_a_rollback_is_refused_while_someone_has_the_volume_open(api: ApiClient,
                                                                 storage: Storage) -> None:
    ceph = storage.ceph
    assert api.post("/storage/ceph/snapshot/p/v/s").status_code == 200
    ceph.write("p", "v", b"current")
    ceph.watchers[("p", "v")] = ["client.4242 at 10.0.0.9:0/123"]
    answer = api.post("/storage/ceph/volume/snapshot/p/v/s/rollback")
    refused(answer, "is open (client.4242 at 10.0.0.9:0/123)")
    assert storage.state.doc(storage.state.paths.storage_request(answer.json()["task_id"]))[
        "error"] == "Conflict"
    add_task(storage.state, "0000000000001-aaaaaaaa", objects=("volume:p/v",), state="pending")
    refused(api.post("/storage/ceph/volume/snapshot/p/v/s/rollback"), "busy with task")
    assert ceph.read("p", "v").startswith(b"current")


# --- the CLI ----------------------------------------------------------------------------------

def test_the_cli_clones_renames_a_snapshot_and_rolls_back(api: ApiClient,
                                                          storage: Storage) -> None:
    from click.testing import CliRunner

    from pvcd.cli.main import cli
    from tests.fakes.api import TOKEN

    env = {"PVC_URL": api.base, "PVC_TOKEN": TOKEN, "PVC_CONNECTION": "",
           "PVC_CONFIG": "/nonexistent"}
    ceph = storage.ceph

    def pvc(*args: str) -> Any:
        return CliRunner().invoke(cli, list(args), env=env)

    assert pvc("storage", "snapshot", "add", "p", "v", "s").exit_code == 0
    ceph.write("p", "v", b"after")
    done = pvc("storage", "volume", "clone", "p", "v", "c", "--snapshot", "s", "--wait")
    assert done.exit_code == 0 and "Cloned RBD volume p/v@s to p/c" in done.output, done.output
    assert ceph.read("p", "c").startswith(SOURCE)
    assert pvc("storage", "snapshot", "rename", "p", "v", "s", "golden").exit_code == 0
    refused_rollback = pvc("storage", "snapshot", "rollback", "p", "v", "s", "--yes")
    assert refused_rollback.exit_code != 0 and "p/v@s not found" in refused_rollback.output
    rolled = pvc("storage", "snapshot", "rollback", "p", "v", "golden", "--yes")
    assert rolled.exit_code == 0, rolled.output
    assert ceph.read("p", "v") == ceph.read("p", "c")
    storage.ceph.capacity["p"] = 5 * MIB // 4  # room for 1 MiB more, but past 80 %
    capped = pvc("storage", "volume", "resize", "p", "v", "5M")
    assert capped.exit_code != 0 and "soft cap" in capped.output
    assert pvc("storage", "volume", "resize", "p", "v", "5M", "--force").exit_code == 0
    assert ceph.pools["p"]["v"]["size"] == 5 * MIB


def test_vm_documents_written_past_the_api_are_no_volume_users(api: ApiClient,
                                                               storage: Storage) -> None:
    from tests.fakes.attacker import write_past_the_api

    paths = storage.state.paths
    write_past_the_api(storage.state, paths.vm("junk"), {"junk": True})
    write_past_the_api(storage.state, paths.vm("badxml"), {
        "uuid": "badxml", "name": "bad", "xml": "<domain><disk", "node": "node1"})
    answer = put(api, "/storage/ceph/volume/p/v", {"name": "w"})
    assert answer.status_code == 200, answer.text
    assert sorted(storage.ceph.pools["p"]) == ["w"]
