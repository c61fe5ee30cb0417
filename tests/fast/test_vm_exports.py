"""The export step (`VmExportSteps.export`) against the real state store, with `rbd` replaced
by a stream of known bytes: the files, their checksums and the manifest it writes, and a
failure part-way whose directory the task's undo removes (a daemon killed part-way is undone
the same way, by the primary's cleanup of the artifact)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from pvcd.controllers.vm_exports import DIRECTORY_ARTIFACT, VmExportSteps
from pvcd.domain.errors import BackendError
from pvcd.domain.tasks import Artifact
from pvcd.domain.vm_backups import EXPORT
from pvcd.domain.vm_snapshots import VmSnapshot
from pvcd.drivers.backup_files import BackupDirectory
from pvcd.state.store import Op
from tests.fakes.state import ClusterState


class Ctx:
    """What the step uses of a TaskContext."""

    def __init__(self) -> None:
        self.artifacts: list[Artifact] = []
        self.progressed: list[tuple[int, int]] = []
        self.task_id = "t1"

    def artifact(self, kind: str, ref: str) -> None:
        self.artifacts.append(Artifact(kind, ref))

    def progress(self, current: int, total: int, message: str) -> None:
        self.progressed.append((current, total))

    def log(self, line: str) -> None:
        pass

    def check(self) -> None:
        pass


class Exporter:
    """`rbd export` as a known stream per volume; `broken` volumes fail after one block."""

    def __init__(self, broken: tuple[str, ...] = ()) -> None:
        self.broken = broken
        self.calls: list[tuple[str, str | None]] = []

    def export(self, pool: str, volume: str, snapshot: str, parent: str | None,
               out: IO[bytes], size_hint: int, on_bytes: Callable[[int], None],
               check: Callable[[], None]) -> tuple[int, str]:
        self.calls.append((volume, parent))
        block = f"{volume}@{snapshot}".encode() * 1000
        out.write(block)
        on_bytes(len(block))
        if volume in self.broken:
            raise BackendError(f"`rbd export` of {volume} failed")
        return len(block), hashlib.sha256(block).hexdigest()


@pytest.fixture
def vm(cluster_state: ClusterState) -> str:
    uuid = cluster_state.define_vm("web", "node1", state="stop")
    record = VmSnapshot(name="s1", timestamp=5.0, consistency="stopped", xml="<domain/>",
                        rbd_snapshots=["vms/web_sda@s1", "vms/web_sdb@s1"])
    paths = cluster_state.paths
    cluster_state.store.commit([Op.create(paths.vm_snapshots(uuid), {}),
                                Op.create(paths.vm_snapshot(uuid, "s1"), record.to_doc())])
    return uuid


def steps(state: ClusterState, exporter: Exporter, root: Path) -> VmExportSteps:
    return VmExportSteps(state.view, None, exporter, [str(root)])  # type: ignore[arg-type]


def test_an_export_writes_checksummed_files_and_the_manifest_last(
        cluster_state: ClusterState, vm: str, tmp_path: Path) -> None:
    exporter, ctx = Exporter(), Ctx()
    directory = BackupDirectory(tmp_path, "web", "s1", [str(tmp_path)])
    manifest = steps(cluster_state, exporter, tmp_path).export(
        ctx, vm, "s1", directory, EXPORT, None)  # type: ignore[arg-type]
    written = json.loads((tmp_path / "web/s1/snapshot.json").read_text())
    assert written == manifest.to_doc() and written["type"] == "full"
    for entry in written["files"]:
        data = (tmp_path / "web/s1" / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert written["vm_detail"]["name"] == "web" and written["vm_detail"]["uuid"] == vm
    assert ctx.artifacts == [Artifact(DIRECTORY_ARTIFACT, str(tmp_path / "web/s1"))]
    assert ctx.progressed[-1][0] == ctx.progressed[-1][1]


def test_a_failure_part_way_leaves_no_manifest_and_the_undo_removes_the_directory(
        cluster_state: ClusterState, vm: str, tmp_path: Path) -> None:
    exporter, ctx = Exporter(broken=("web_sdb",)), Ctx()
    export = steps(cluster_state, exporter, tmp_path)
    directory = BackupDirectory(tmp_path, "web", "s1", [str(tmp_path)])
    with pytest.raises(BackendError, match="web_sdb"):
        export.export(ctx, vm, "s1", directory, EXPORT, None)  # type: ignore[arg-type]
    # the first file is complete, the second's temporary file gone, no manifest
    assert sorted(p.name for p in (tmp_path / "web/s1/images").iterdir()) == [
        "vms.web_sda.rbdimg"]
    assert not (tmp_path / "web/s1/snapshot.json").exists()
    for artifact in reversed(ctx.artifacts):
        export.undo(artifact)
    assert not (tmp_path / "web/s1").exists() and (tmp_path / "web").exists()


def test_an_incremental_export_needs_its_base_and_an_undo_stays_inside(
        cluster_state: ClusterState, vm: str, tmp_path: Path) -> None:
    export = steps(cluster_state, Exporter(), tmp_path)
    directory = BackupDirectory(tmp_path, "web", "s2", [str(tmp_path)])
    with pytest.raises(Exception, match="snapshot"):
        export.export(Ctx(), vm, "s1", directory, EXPORT, "s0")  # type: ignore[arg-type]
    assert not (tmp_path / "web/s2").exists()
    outside = tmp_path.parent / f"{tmp_path.name}-outside" / "web" / "s1"
    outside.mkdir(parents=True)
    with pytest.raises(Exception, match="allowed_paths"):
        export.undo(Artifact(DIRECTORY_ARTIFACT, str(outside)))
    assert outside.exists()


def test_remove_takes_the_directory_and_leaves_a_vm_without_that_snapshot_alone(
        cluster_state: ClusterState, vm: str, tmp_path: Path) -> None:
    export = steps(cluster_state, Exporter(), tmp_path)
    directory = BackupDirectory(tmp_path, "web", "s1", [str(tmp_path)])
    export.export(Ctx(), vm, "s1", directory, EXPORT, None)  # type: ignore[arg-type]
    # no snapshot record "gone" on the VM: only the directory goes
    assert export.remove(Ctx(), vm, directory, "gone")  # type: ignore[arg-type]
    assert not (tmp_path / "web/s1").exists()
    assert not export.remove(Ctx(), None, directory, None)  # type: ignore[arg-type]
