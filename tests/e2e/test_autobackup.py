"""Autobackup (extensions.md §5.5) on a one-node lab with a throwaway Ceph: runs started with
`POST /vm/autobackup` keep exactly the configured fulls and incrementals, on disk and as RBD
snapshots (read with `rbd snap ls`, not from the API); an incremental restores to the content
the volume had; a VM that fails raises `AUTOBACKUP_FAILED_<VM>` while the others are backed up,
and the fault clears once its backup succeeds again. (The schedule itself: the fast tests.)"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from pvcd.lab.guest import tiny_guest_xml
from tests.e2e.labclient import ok, wait_until
from tests.e2e.test_vm_backups import (
    POOL,
    TIMEOUT,
    BackupLab,
    backup_lab,  # noqa: F401 (the lab, a fixture)
)

pytestmark = [pytest.mark.slow, pytest.mark.ceph, pytest.mark.timeout(400)]

KIB = 1 << 10


def define_tagged(lab: BackupLab, name: str, volume: str) -> None:
    uuid = str(uuidlib.uuid4())
    disk = (f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
            f"<source protocol='rbd' name='{POOL}/{volume}'/>"
            "<target dev='vda' bus='virtio'/></disk>")
    xml = tiny_guest_xml(name, uuid).replace("<devices>", "<devices>" + disk, 1)
    ok(lab.call("POST", "/vm", xml=xml, user_tags="nightly"))
    ok(lab.call("POST", f"/vm/{name}/state", state="stop", wait=1))


def run(lab: BackupLab, last: list[str]) -> Any:
    """One run, in a second later than the last one (a run's snapshot name is its datestring);
    the answer of `POST /vm/autobackup?wait`."""
    if last:
        wait_until(lambda: f"ab{time.strftime('%Y%m%d%H%M%S')}" > last[-1], timeout=5)
    return lab.call("POST", "/vm/autobackup", wait=1)


def rbd_snapshots(lab: BackupLab, volume: str) -> list[str]:
    return sorted(s["name"] for s in json.loads(lab.rbd.run(
        "snap", "ls", f"{POOL}/{volume}", "--format", "json")))


def faults(lab: BackupLab) -> dict[str, Any]:
    return {f["id"]: f for f in ok(lab.call("GET", "/faults"))}


def test_runs_keep_the_configured_backups_and_a_failing_vm_raises_its_fault(
        backup_lab: BackupLab) -> None:  # noqa: F811
    lab = backup_lab
    lab.volume("abweb_vda", b"web at run 0 ".ljust(256 * KIB, b"."))
    lab.volume("abdb_vda", b"db at run 0 ".ljust(256 * KIB, b"."))
    define_tagged(lab, "abweb", "abweb_vda")
    define_tagged(lab, "abdb", "abdb_vda")
    ok(lab.call("PUT", "/vm/autobackup", enabled="true", backup_root_path=str(lab.backups),
                backup_root_suffix="/auto", backup_tags="nightly", full_interval="2",
                full_retention="2"))
    auto = lab.backups / "auto"
    names: list[str] = []
    checksums = []
    for number in range(1, 6):  # full, incremental, full, incremental, full
        lab.write("abweb_vda", 4 * KIB * number, f"change {number}".encode())
        checksums.append(lab.checksum("abweb_vda"))
        answer = run(lab, names)
        assert answer.status_code == 200, answer.text
        result = answer.json()["result"]["result"]
        assert set(result) == {"abweb", "abdb"}
        names.append(result["abweb"]["snapshot_name"])
        assert result["abweb"]["type"] == ("full" if number % 2 else "incremental")
    kept = [names[4], names[3], names[2]]
    state = json.loads((auto / "abweb/.autobackup.json").read_text())
    assert [(e["type"], e["snapshot_name"]) for e in state["tracked_backups"]] == [
        ("full", kept[0]), ("incremental", kept[1]), ("full", kept[2])]
    assert sorted(p.name for p in (auto / "abweb").iterdir() if p.is_dir()) == sorted(kept)
    # only the kept fulls have snapshots left, in Ceph and on the VM
    assert rbd_snapshots(lab, "abweb_vda") == sorted([names[2], names[4]])
    assert sorted(s["name"] for s in ok(lab.call("GET", "/vm/abweb/snapshot"))) == \
        sorted([names[2], names[4]])

    # the kept incremental restores (with its full) to the content of its run
    ok(lab.call("POST", "/vm/abweb/snapshot/import", snapshot_name=names[3],
                import_path=str(auto), new_name="abback", start_vm="false",
                retain_snapshot="false", wait=1))
    assert lab.checksum("abback_vda") == checksums[3]

    # abdb's state file is damaged: abdb fails, abweb is still backed up
    (auto / "abdb/.autobackup.json").write_text("not json")
    answer = run(lab, names)
    assert answer.status_code == 510 and "abdb" in answer.json()["message"], answer.text
    shown = ok(lab.call("GET", "/vm/autobackup"))
    assert shown["last_run"]["state"] == "failure"
    assert shown["latest"]["abweb"]["result"] == "success"
    assert shown["latest"]["abdb"]["result"] == "failure"
    names.append(shown["latest"]["abweb"]["snapshot_name"])
    assert (auto / "abweb" / names[-1] / "snapshot.json").exists()
    fault = wait_until(lambda: faults(lab).get("AUTOBACKUP_FAILED_ABDB"), timeout=TIMEOUT,
                       interval=0.5)
    assert fault["active"] is True and "autobackup state file" in fault["message"]

    (auto / "abdb/.autobackup.json").unlink()  # the operator's fix: a fresh chain
    answer = run(lab, names)
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["result"]["abdb"]["type"] == "full"
    wait_until(lambda: faults(lab)["AUTOBACKUP_FAILED_ABDB"]["active"] is False,
               timeout=TIMEOUT, interval=0.5)


def test_a_path_outside_the_allowed_folders_is_never_configured(
        backup_lab: BackupLab, tmp_path: Path) -> None:  # noqa: F811
    lab = backup_lab
    before = ok(lab.call("GET", "/vm/autobackup"))
    answer = lab.call("PUT", "/vm/autobackup", backup_root_path=str(tmp_path))
    assert answer.status_code == 510 and "allowed_paths" in answer.json()["message"]
    assert ok(lab.call("GET", "/vm/autobackup"))["backup_root_path"] == \
        before["backup_root_path"]
