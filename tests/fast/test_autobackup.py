"""Autobackup in process (extensions.md §5.5): the real API, the real `cluster.autobackup` task
on the real snapshot steps (the primary's storage executor over `FakeCeph`) and export step
(`rbd` replaced by a known stream), the real fault monitor and the schedule on a fake clock.
Asserted on what is left: directories, state files, VM and RBD snapshots, faults, tasks.
(Against a real Ceph: tests/e2e/test_autobackup.py.)"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcd.controllers.autobackup import AutobackupRun
from pvcd.controllers.autobackup_schedule import KEY, AutobackupScheduler
from pvcd.controllers.faults import FaultMonitor
from pvcd.controllers.tasks.registry import TaskRegistry
from pvcd.controllers.tasks.runner import TaskRunner
from pvcd.controllers.tasks.storage_steps import StorageSteps
from pvcd.controllers.vm_exports import VmExportSteps
from pvcd.controllers.vm_snapshots import VmSnapshotSteps
from pvcd.state.autobackup import TASK_NAME
from pvcd.state.tasks import read_tasks
from tests.apiclient import ApiClient
from tests.fakes.api import serving_api
from tests.fakes.state import FakeClock
from tests.fast.test_vm_exports import Exporter
from tests.fast.test_vm_snapshot_api import World as SnapshotWorld
from tests.fast.test_vm_snapshot_api import add_vm, disk
from tests.fast.test_volume_api import Storage, refused, storage  # noqa: F401 (a fixture)

DAILY = [{"name": "daily", "type": "user", "protected": False}]


def local(*parts: int) -> float:
    return time.mktime(datetime.datetime(*parts).timetuple())  # type: ignore[arg-type]


class World(SnapshotWorld):
    """The snapshot tests' world, whose runner runs `cluster.autobackup` instead."""

    def __init__(self, lab: Storage, api: ApiClient, root: Path) -> None:
        super().__init__(lab, api)
        state, self.root = self.state, root
        self.clock = FakeClock(local(2026, 3, 4, 2, 0))
        self.exporter = Exporter()
        snapshots = VmSnapshotSteps(state.view, state.store,
                                    StorageSteps(state.view, state.store), freeze_timeout=30.0)
        exports = VmExportSteps(state.view, snapshots, self.exporter,  # type: ignore[arg-type]
                                [str(root)], self.clock)
        run = AutobackupRun(state.view, state.store, snapshots, exports, [str(root)],
                            self.clock)
        self.runner = TaskRunner("node1", state.view, state.store, TaskRegistry([run.kind()]),
                                 executor="node1/1")
        self.runner.primary_active = True

    def autobackup(self, **values: Any) -> dict[str, Any]:
        """One run through the API, an hour after the last; its task as it ended."""
        self.clock.advance(3600)
        return self.run(self.api.post("/vm/autobackup", params=values))

    def tracked(self, vm: str) -> list[tuple[str, str]]:
        doc = json.loads((self.root / "auto" / vm / ".autobackup.json").read_text())
        return [(e["type"], e["snapshot_name"]) for e in doc["tracked_backups"]]

    def on_disk(self, vm: str) -> list[str]:
        return sorted(p.name for p in (self.root / "auto" / vm).iterdir() if p.is_dir())

    def vm_snapshots(self, vm: str) -> list[str]:
        return sorted(s["name"] for s in self.api.get(f"/vm/{vm}/snapshot").json())

    def rbd_snapshots(self, volume: str) -> list[str]:
        return sorted(self.ceph.pools["p"][volume]["snapshots"])

    def faults(self) -> dict[str, Any]:
        monitor = FaultMonitor(self.state.view, self.state.store, 15.0, self.clock)
        monitor.run_round()
        return {f["id"]: f for f in self.api.get("/faults").json()}


@pytest.fixture
def world(storage: Storage, tmp_path: Path) -> Iterator[World]:  # noqa: F811
    with serving_api(storage.state, FakeClock(), storage_request_timeout=5.0) as (server, api):
        server.ctx.backup_paths = (str(tmp_path),)
        assert api.post("/storage/ceph/pool", params={"pool": "p", "pgs": 8}).status_code == 200
        for volume in ("a", "b", "c"):
            assert api.post("/storage/ceph/volume", params={
                "pool": "p", "volume": volume, "size": "4M"}).status_code == 200
        add_vm(storage.state, "web", disk("p/a", "vda"), tags=DAILY)
        add_vm(storage.state, "db", disk("p/b", "vda"), tags=DAILY)
        add_vm(storage.state, "other", disk("p/c", "vda"))
        yield World(storage, api, tmp_path)


def configure(world: World, **values: Any) -> None:
    response = world.api.call("PUT", "/vm/autobackup", params={
        "enabled": "true", "backup_root_path": str(world.root), "backup_root_suffix": "/auto",
        "backup_tags": ["daily"], **values})
    assert response.status_code == 200, response.text


def test_bad_configurations_and_runs_are_refused_and_change_nothing(
        world: World, tmp_path: Path) -> None:
    api = world.api
    before = api.get("/vm/autobackup").json()
    assert before["enabled"] is False and before["schedule"] == "0 2 * * *"
    assert before["next_run"] is None and before["last_run"] is None
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside)
    for values, text in [
            ({"enabled": "true"}, "without backup_root_path"),
            ({"enabled": "true", "backup_root_path": str(tmp_path)}, "without backup_root_path"),
            ({"backup_root_path": str(outside)}, "not inside backup.allowed_paths"),
            ({"backup_root_path": str(tmp_path / "link")}, "not inside backup.allowed_paths"),
            ({"backup_root_path": "relative"}, "absolute path"),
            ({"backup_root_suffix": "/../x"}, "backup_root_suffix"),
            ({"schedule": "0 25 * * *"}, "schedule"),
            ({"schedule": "0 0 31 2 *"}, "never runs"),
            ({"full_interval": "0"}, "full_interval"),
            ({"full_retention": "x"}, "full_retention"),
            ({"backup_tags": ["a/b"]}, "invalid tag"),
            ({}, "give at least one")]:
        refused(api.call("PUT", "/vm/autobackup", params=values), text)
    assert api.get("/vm/autobackup").json() == before
    assert not world.state.cache.exists(world.state.paths.autobackup)
    refused(api.post("/vm/autobackup"), "not enabled")
    # the route comes first: a VM cannot take its name
    xml = ("<domain type='kvm'><name>autobackup</name><memory unit='MiB'>64</memory>"
           "<vcpu>1</vcpu><os><type>hvm</type></os><devices/></domain>")
    refused(api.post("/vm", params={"xml": xml}), "reserved")

    configure(world)
    refused(api.post("/vm/autobackup", params={"email_recipients": ["a@b"]}), "not supported")
    first = api.post("/vm/autobackup")
    assert first.status_code == 202
    refused(api.post("/vm/autobackup"), "in progress", first.json()["task_id"])
    assert [t.id for t in read_tasks(world.state.view)] == [first.json()["task_id"]]
    shown = api.get("/vm/autobackup").json()
    assert shown["enabled"] is True and shown["backup_tags"] == ["daily"]
    assert shown["next_run"] is not None


def test_runs_keep_the_configured_fulls_and_incrementals(world: World) -> None:
    configure(world, full_interval="2", full_retention="2")
    names = []
    for _ in range(5):  # full, incremental, full, incremental, full
        done = world.autobackup()
        assert done["state"] == "success", done
        assert set(done["result"]["result"]) == {"web", "db"}  # "other" has no tag
        names.append(done["result"]["result"]["web"]["snapshot_name"])
    kinds = ["full", "incremental", "full", "incremental", "full"]
    # the oldest full went with its incremental: two fulls kept, and what hangs on them
    assert world.tracked("web") == [(kinds[i], names[i]) for i in (4, 3, 2)]
    assert world.on_disk("web") == sorted(names[2:])
    assert not (world.root / "auto" / "other").exists()
    manifest = json.loads((world.root / "auto/web" / names[3] / "snapshot.json").read_text())
    assert manifest["type"] == "incremental" and manifest["incremental_parent"] == names[2]
    # only the fulls keep their snapshots, on the VM and in Ceph
    assert world.vm_snapshots("web") == sorted([names[2], names[4]])
    assert world.rbd_snapshots("a") == sorted([names[2], names[4]])
    # force_full: a full although an incremental was due
    done = world.autobackup(force_full="true")
    assert done["result"]["result"]["web"]["type"] == "full"
    assert [kind for kind, _ in world.tracked("web")] == ["full", "full"]
    shown = world.api.get("/vm/autobackup").json()
    assert shown["last_run"]["task_id"] == done["id"] and shown["last_run"]["state"] == "success"


def test_a_failing_vm_raises_its_fault_and_the_run_goes_on(world: World) -> None:
    configure(world)
    world.exporter.broken = ("b",)  # db's disk
    done = world.autobackup()
    assert done["state"] == "failure" and done["error"] == "BackendError", done
    assert "db" in done["message"] and "web" not in done["message"].split(":")[0]
    results = done["result"]["result"]
    assert results["web"]["result"] == "success" and results["db"]["result"] == "failure"
    assert "rbd export" in results["db"]["message"]
    # web's backup stays although the run failed; db's partial backup and snapshot are gone
    assert len(world.on_disk("web")) == 1 and world.vm_snapshots("web") != []
    assert world.on_disk("db") == [] and world.vm_snapshots("db") == []
    assert world.rbd_snapshots("b") == []
    faults = world.faults()
    assert faults["AUTOBACKUP_FAILED_DB"]["active"] is True
    assert "AUTOBACKUP_FAILED_WEB" not in faults
    # fixed: the next run succeeds and the fault's condition clears
    world.exporter.broken = ()
    assert world.autobackup()["state"] == "success"
    assert world.faults()["AUTOBACKUP_FAILED_DB"]["active"] is False
    assert [kind for kind, _ in world.tracked("web")] == ["incremental", "full"]
    assert [kind for kind, _ in world.tracked("db")] == ["full"]


def test_the_schedule_fires_once_per_minute_and_never_catches_up(world: World) -> None:
    configure(world, schedule="30 3 * * *")
    clock = FakeClock(local(2026, 3, 5, 3, 29, 40))
    scheduler = AutobackupScheduler("node1", world.state.view, world.state.store, clock)

    def runs() -> list[str]:
        return [t.id for t in read_tasks(world.state.view) if t.name == TASK_NAME]

    scheduler.start()
    wait = scheduler.reconcile(KEY).requeue_after
    assert runs() == [] and wait is not None and 1.0 <= wait <= 30.0
    clock.advance(25)  # 03:30:05
    scheduler.reconcile(KEY)
    assert len(runs()) == 1
    scheduler.reconcile(KEY)
    # a handover within the minute: the new primary sees scheduled_for
    scheduler.stop()
    clock.advance(10)
    scheduler.start()
    scheduler.reconcile(KEY)
    assert len(runs()) == 1
    # a primary down over the next day's 03:30 does not catch it up when it comes back
    scheduler.stop()
    clock.now = local(2026, 3, 6, 3, 45)
    scheduler.start()
    scheduler.reconcile(KEY)
    assert len(runs()) == 1


def test_an_empty_schedule_in_a_json_body_is_a_510_that_changes_nothing(world: World) -> None:
    """As the OpenAPI fuzz run sent it: an empty schedule was read as None and answered 500."""
    before = world.api.call("GET", "/vm/autobackup").json()
    response = world.api.call("PUT", "/vm/autobackup", json={
        "enabled": False, "backup_root_path": None, "backup_root_suffix": "",
        "backup_tags": [], "schedule": "", "full_interval": 1, "full_retention": 1})
    assert response.status_code == 510, (response.status_code, response.text)
    assert "schedule is empty" in response.json()["message"]
    assert world.api.call("GET", "/vm/autobackup").json() == before
