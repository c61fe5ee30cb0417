"""VM snapshot export/import and per-VM backup/restore (extensions.md §5.2-5.4) on a one-node
lab (libvirt test driver) with a throwaway Ceph.

The VMs are stopped (their snapshots are `stopped`-consistent: no guest needed for what is
tested here, the snapshots' consistency is tests/e2e/test_vm_snapshots.py's). Content is judged
in Ceph: `rbd export <volume>[@snapshot] -` hashed, never by what the API says. The lab's
`backup.allowed_paths` is `lab.json`'s `backup_path`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient, ok, refused, wait_until
from tests.e2e.test_cli import ok as cli_ok
from tests.e2e.test_cli import pvc
from tests.e2e.test_volume_copies import Rbd

pytestmark = [pytest.mark.slow, pytest.mark.ceph, pytest.mark.timeout(600)]

TIMEOUT = 60
MIB = 1 << 20
POOL = "vms"


class BackupLab:
    def __init__(self, workdir: Path) -> None:
        self.lab = Lab(workdir)
        self.info = self.lab.up(nodes=1, ceph=True)
        self.api = LabClient(self.info)
        self.rbd = Rbd(self.lab)
        assert self.info.backup_path is not None
        self.backups = Path(self.info.backup_path)
        self.backups.mkdir(parents=True, exist_ok=True)
        self.tmp = workdir / "scratch"
        self.tmp.mkdir()
        ok(self.call("POST", "/storage/ceph/pool", pool=POOL, pgs=16))

    def call(self, method: str, path: str, **values: Any) -> Any:
        return self.api.call(method, path, params=values, timeout=TIMEOUT)

    def volume(self, name: str, content: bytes) -> None:
        """Volume `name` holding `content`, made behind pvcd's back and adopted by its sync."""
        self.rbd.run("create", "--size", f"{len(content)}B", f"{POOL}/{name}")
        self.write(name, 0, content)
        wait_until(lambda: self.call("GET", f"/storage/ceph/volume/{POOL}/{name}")
                   .status_code == 200, timeout=TIMEOUT, interval=0.2)

    def write(self, volume: str, offset: int, data: bytes) -> None:
        """Change `data` at `offset` of the volume behind pvcd's back (as a guest would):
        `rbd import-diff` of a one-extent diff made here."""
        diff = self.tmp / "patch.diff"
        diff.write_bytes(_diff_v1(offset, data, self.size(volume)))
        self.rbd.run("import-diff", "--no-progress", str(diff), f"{POOL}/{volume}")
        diff.unlink()

    def size(self, volume: str) -> int:
        return int(json.loads(self.rbd.run("info", f"{POOL}/{volume}", "--format", "json"))
                   ["size"])

    def checksum(self, spec: str) -> str:
        return hashlib.sha256(self.rbd.export(f"{POOL}/{spec}")).hexdigest()

    def define(self, name: str, volumes: list[str]) -> str:
        uuid = str(uuidlib.uuid4())
        disks = "".join(f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
                        f"<source protocol='rbd' name='{POOL}/{v}'/>"
                        f"<target dev='vd{chr(97 + i)}' bus='virtio'/></disk>"
                        for i, v in enumerate(volumes))
        xml = tiny_guest_xml(name, uuid).replace("<devices>", "<devices>" + disks, 1)
        ok(self.call("POST", "/vm", xml=xml))
        ok(self.call("POST", f"/vm/{name}/state", state="stop", wait=1))
        return uuid

    def task(self, method: str, path: str, **values: Any) -> dict[str, Any]:
        answer = self.call(method, path, wait=1, **values)
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["result"])

    def volumes(self) -> list[str]:
        return sorted(json.loads(self.rbd.run("ls", POOL, "--format", "json")))

    def vm_spec_state(self, name: str) -> str:
        return str(ok(self.call("GET", f"/vm/{name}"))[0]["state"])

    def vm_names(self) -> list[str]:
        return sorted(vm["name"] for vm in ok(self.call("GET", "/vm")))


def _diff_v1(offset: int, data: bytes, size: int) -> bytes:
    """An `rbd diff v1` stream writing `data` at `offset` (the format rbd export-diff writes:
    header, size record, one updated extent, end)."""
    return (b"rbd diff v1\n" + b"s" + size.to_bytes(8, "little")
            + b"w" + offset.to_bytes(8, "little") + len(data).to_bytes(8, "little") + data
            + b"e")


@pytest.fixture(scope="module")
def backup_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupLab]:
    lab = BackupLab(tmp_path_factory.mktemp("backups"))
    try:
        yield lab
    finally:
        lab.lab.down()


def test_full_and_two_incrementals_restore_every_point_and_refuse_a_flipped_byte(
        backup_lab: BackupLab) -> None:
    lab = backup_lab
    root = str(lab.backups)
    lab.volume("bk1_sda", os.urandom(4 * MIB))
    lab.volume("bk1_sdb", os.urandom(2 * MIB))
    uuid = lab.define("bk1", ["bk1_sda", "bk1_sdb"])
    sums: dict[str, dict[str, str]] = {}
    for point, parent in (("s1", None), ("s2", "s1"), ("s3", "s2")):
        if parent is not None:  # something changes on both disks between the points
            lab.write("bk1_sda", MIB * (1 + len(sums)), os.urandom(64 << 10))
            lab.write("bk1_sdb", 4096 * len(sums), os.urandom(4096))
        lab.task("POST", "/vm/bk1/snapshot", snapshot_name=point)
        sums[point] = {v: lab.checksum(f"{v}@{point}") for v in ("bk1_sda", "bk1_sdb")}
        result = lab.task("POST", "/vm/bk1/snapshot/export", snapshot_name=point,
                          export_path=root,
                          **({"incremental_parent": parent} if parent else {}))
        assert result["type"] == ("incremental" if parent else "full")
    assert sums["s1"] != sums["s2"] != sums["s3"]

    folder = lab.backups / "bk1"
    assert sorted(p.name for p in folder.iterdir()) == ["s1", "s2", "s3"]
    assert oct(os.stat(folder / "s2").st_mode & 0o777) == "0o700"
    manifest = json.loads((folder / "s2" / "snapshot.json").read_text())
    assert manifest["type"] == "incremental" and manifest["incremental_parent"] == "s1"
    for entry in manifest["files"]:  # the manifest's checksums are the files' (computed here)
        data = (folder / "s2" / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert entry["path"].endswith(".rbddiff")
        assert oct(os.stat(folder / "s2" / entry["path"]).st_mode & 0o777) == "0o600"
    full = json.loads((folder / "s1" / "snapshot.json").read_text())
    # an incremental export holds only the change, the full one the whole volumes' data
    assert manifest["export_size_bytes"] < full["export_size_bytes"] / 4

    ok(lab.call("DELETE", "/vm/bk1", delete_disks=1))
    wait_until(lambda: not [v for v in lab.volumes() if v.startswith("bk1")], timeout=TIMEOUT,
               interval=0.2)
    assert "bk1" not in lab.vm_names()

    for point in ("s1", "s2", "s3"):
        name = f"r{point}"
        result = lab.task("POST", "/vm/bk1/snapshot/import", snapshot_name=point,
                          import_path=root, new_name=name, start_vm=0)
        assert result["uuid"] != uuid and result["name"] == name
        for volume in ("sda", "sdb"):
            assert lab.checksum(f"{name}_{volume}") == sums[point][f"bk1_{volume}"], point
        vm = ok(lab.call("GET", f"/vm/{name}"))[0]
        assert [s["name"] for s in vm["snapshots"]] == [point]  # retained, the others gone
        assert json.loads(lab.rbd.run("snap", "ls", f"{POOL}/{name}_sda", "--format",
                                      "json"))[0]["name"] == point
        assert f"{POOL}/{name}_sda" in json.dumps(vm) and "bk1_sda" not in json.dumps(vm)

    # one flipped byte in the last diff: refused before any volume or record is created
    target = folder / "s3" / "images" / f"{POOL}.bk1_sda.rbddiff"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    before = lab.volumes(), lab.vm_names()
    answer = lab.call("POST", "/vm/bk1/snapshot/import", snapshot_name="s3", import_path=root,
                      new_name="broken", start_vm=0, wait=1)
    refused(answer, "corrupted", "nothing was created")
    assert (lab.volumes(), lab.vm_names()) == before

    # a file that matches its manifest but that Ceph refuses (cut short, the manifest made to
    # agree): the first volume is imported, the second fails; the task's undo removes the
    # first, and no VM is defined
    shutil.copytree(folder / "s1", folder / "s1cut")
    cut = folder / "s1cut" / "images" / f"{POOL}.bk1_sdb.rbdimg"
    cut.write_bytes(cut.read_bytes()[:MIB])
    doc = json.loads((folder / "s1cut" / "snapshot.json").read_text())
    for entry in doc["files"]:
        if entry["volume"] == "bk1_sdb":
            entry["bytes"], entry["sha256"] = MIB, hashlib.sha256(cut.read_bytes()).hexdigest()
    (folder / "s1cut" / "snapshot.json").write_text(json.dumps(doc))
    answer = lab.call("POST", "/vm/bk1/snapshot/import", snapshot_name="s1cut",
                      import_path=root, new_name="half", start_vm=0, wait=1)
    assert answer.status_code == 510, answer.text
    task = lab.call("GET", f"/tasks/{answer.json()['task_id']}").json()
    assert task["state"] == "failure" and task["artifacts"] == []  # undone before it ended
    assert f"{POOL}/half_sdb" in task["status"] or "half_sdb" in task["message"]
    assert (lab.volumes(), lab.vm_names()) == before

    # a broken chain (the full export gone) is refused at once
    shutil.rmtree(folder / "s1")
    refused(lab.call("POST", "/vm/bk1/snapshot/import", snapshot_name="s2", import_path=root,
                     new_name="chain", start_vm=0), "chain is broken")
    assert (lab.volumes(), lab.vm_names()) == before


def test_backup_incremental_list_restore_and_remove(backup_lab: BackupLab) -> None:
    lab = backup_lab
    root = str(lab.backups)
    lab.volume("bk2", os.urandom(2 * MIB))
    lab.define("bk2", ["bk2"])
    full = lab.task("POST", "/vm/bk2/backup", backup_path=root, retain_snapshot=1)
    refused(lab.call("POST", "/vm/bk2/backup", backup_path=root,
                     incremental_parent=full["datestring"], retain_snapshot=1), "full backups")
    # a backup's name is its second: the next one needs the next second
    wait_until(lambda: time.strftime("%Y%m%d%H%M%S") != full["datestring"], timeout=5)
    lab.write("bk2", 0, os.urandom(8192))
    expected = lab.checksum("bk2")
    incremental = lab.task("POST", "/vm/bk2/backup", backup_path=root,
                           incremental_parent=full["datestring"])
    assert incremental["type"] == "incremental"
    listed = ok(lab.call("GET", "/vm/bk2/backup", backup_path=root))
    assert [(b["datestring"], b["type"], b["retained_snapshot"]) for b in listed] == [
        (full["datestring"], "full", True), (incremental["datestring"], "incremental", False)]
    assert [s["name"] for s in ok(lab.call("GET", "/vm/bk2"))[0]["snapshots"]] == \
        [f"backup_{full['datestring']}"]
    refused(lab.call("DELETE", "/vm/bk2/backup", backup_path=root,
                     backup_datestring=full["datestring"]), "remove them first")

    shown = cli_ok(pvc(lab.lab, "vm", "backup", "list", "bk2", root))
    assert full["datestring"] in shown and "incremental" in shown and "retained" in shown
    # through the CLI, as an operator would: the restore followed to its end
    cli_ok(pvc(lab.lab, "vm", "restore", "bk2", incremental["datestring"], root,
               "--new-name", "bk2r", "--no-start", "--wait"))
    assert lab.checksum("bk2r") == expected
    assert lab.vm_spec_state("bk2r") == "stop"
    refused(lab.call("POST", "/vm/bk2/restore", backup_path=root,
                     backup_datestring=incremental["datestring"]), "exists")

    cli_ok(pvc(lab.lab, "vm", "backup", "remove", "bk2", incremental["datestring"], root,
               "--yes"))
    ok(lab.call("DELETE", "/vm/bk2/backup", backup_path=root,
                backup_datestring=full["datestring"]))
    assert ok(lab.call("GET", "/vm/bk2/backup", backup_path=root)) == []
    assert ok(lab.call("GET", "/vm/bk2"))[0]["snapshots"] == []


def test_paths_outside_the_allowed_folders_are_refused(backup_lab: BackupLab,
                                                       tmp_path: Path) -> None:
    lab = backup_lab
    lab.volume("bk3", os.urandom(MIB))
    lab.define("bk3", ["bk3"])
    lab.task("POST", "/vm/bk3/snapshot", snapshot_name="p1")
    outside = tmp_path / "outside"
    outside.mkdir()
    escape = lab.backups / "escape"
    escape.symlink_to(outside)
    (lab.backups / "bk3").mkdir(exist_ok=True)
    try:
        for path in (str(outside), str(escape), f"{lab.backups}/../scratch", "relative",
                     str(lab.backups / "missing")):
            refused(lab.call("POST", "/vm/bk3/snapshot/export", snapshot_name="p1",
                             export_path=path), "export_path")
            refused(lab.call("POST", "/vm/bk3/backup", backup_path=path), "backup_path")
            refused(lab.call("GET", "/vm/bk3/backup", backup_path=path), "backup_path")
            refused(lab.call("POST", "/vm/bk3/snapshot/import", snapshot_name="p1",
                             import_path=path), "import_path")
        # a symlink one level down (<root>/<vm>/<name>) leads out too
        (lab.backups / "bk3" / "p1").symlink_to(outside)
        refused(lab.call("POST", "/vm/bk3/snapshot/export", snapshot_name="p1",
                         export_path=str(lab.backups)), "allowed_paths")
        assert list(outside.iterdir()) == []
    finally:
        escape.unlink()
        (lab.backups / "bk3" / "p1").unlink(missing_ok=True)
