"""Exporting VM snapshots and backing VMs up into directories (extensions.md §5.2 export,
§5.3, §5.4 backup): the tasks `vm.export_snapshot` and `vm.backup`, run by the primary.

Where the I/O runs: on the primary, whose daemon runs these tasks (they follow the primary, as
the API does), and which reads the volumes through `rbd` (client.admin, `drivers.ceph`) and
writes into `backup.allowed_paths` (shared storage mounted on every coordinator, so a new
primary sees the same folders). Nothing is copied through ZooKeeper.

`VmExportSteps.export` is the reusable step (autobackup calls it too): one VM snapshot, full
(`rbd export --export-format 2`) or incremental from a parent snapshot (`rbd export-diff
--from-snap`), into `<root>/<vm>/<name>/` in a `Layout`. Each volume's stream is hashed as it
passes (`pvcd.drivers.ceph.rbd_files`), written under a temporary name and renamed; the
manifest goes last (`pvcd.drivers.backup_files`). The directory is the task's artifact
(`backup-directory`), recorded right after it is made: a failure, or a daemon killed
part-way (the primary's cleanup of an interrupted task), removes it with whatever it holds.

`remove` removes a directory and its retained snapshot (a task's step, e.g. autobackup's
retention; the API's `DELETE /vm/<vm>/backup` does the same synchronously).

`backup` is PVC's older per-VM backup: take snapshot `backup_<datestring>` (`auto`
consistency, `VmSnapshotSteps.take`), export it in the backup layout, and remove the snapshot
unless it is retained (a full backup that later incrementals start from). A failure removes
the snapshot too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pvcd.controllers.tasks import TaskContext, TaskKind, TaskOutcome
from pvcd.controllers.vm_snapshots import VmSnapshotSteps
from pvcd.domain.errors import InvalidValue, NotFound
from pvcd.domain.records import VmSpec
from pvcd.domain.tasks import Artifact
from pvcd.domain.vm_backups import (
    BACKUP,
    EXPORT,
    FULL,
    INCREMENTAL,
    Layout,
    Manifest,
    ManifestFile,
    backup_snapshot_name,
)
from pvcd.domain.vm_snapshots import VmSnapshot
from pvcd.drivers.backup_files import BackupDirectory, is_inside
from pvcd.drivers.ceph.rbd_files import RbdExporter
from pvcd.state.view import ClusterView
from pvcd.state.vm_snapshots import read_snapshot

log = logging.getLogger(__name__)

EXPORT_TASK, BACKUP_TASK = "vm.export_snapshot", "vm.backup"
DIRECTORY_ARTIFACT = "backup-directory"  # ref: the directory's absolute path


class VmExportSteps:
    def __init__(self, view: ClusterView, snapshots: VmSnapshotSteps, exporter: RbdExporter,
                 allowed_paths: Sequence[str], clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.snapshots = snapshots
        self.exporter = exporter
        self.allowed_paths = tuple(allowed_paths)
        self.clock = clock
        self.monotonic = monotonic

    def kinds(self) -> list[TaskKind]:
        return [TaskKind(EXPORT_TASK, self._export_task, self.undo),
                TaskKind(BACKUP_TASK, self._backup_task, self.undo)]

    def undo(self, artifact: Artifact) -> None:
        if artifact.kind == DIRECTORY_ARTIFACT:
            path = Path(artifact.ref)
            if not is_inside(str(path.parent), self.allowed_paths):
                raise InvalidValue(f"{path} is not inside backup.allowed_paths: left alone")
            if BackupDirectory(path.parent.parent, path.parent.name, path.name,
                               self.allowed_paths).remove():
                log.info("event=vm-export-partial-removed directory=%s", path)
        else:
            self.snapshots.undo(artifact)

    # the tasks
    def _export_task(self, ctx: TaskContext) -> TaskOutcome:
        args = ctx.args
        directory = BackupDirectory(Path(args["export_path"]), args["name"],
                                    args["snapshot_name"], self.allowed_paths)
        manifest = self.export(ctx, args["vm"], args["snapshot_name"], directory, EXPORT,
                               args.get("incremental_parent"))
        return TaskOutcome(f"Exported snapshot '{manifest.snapshot_name}' of VM "
                           f"'{args['name']}' ({manifest.type}, "
                           f"{manifest.export_size_bytes} bytes) to {directory}",
                           _result(manifest, directory))

    def _backup_task(self, ctx: TaskContext) -> TaskOutcome:
        args = ctx.args
        manifest, directory = self.backup(ctx, args["vm"], Path(args["backup_path"]),
                                          args["datestring"], args.get("incremental_parent"),
                                          bool(args.get("retain_snapshot")))
        return TaskOutcome(f"Backed up VM '{args['name']}' ({manifest.type}, "
                           f"{manifest.export_size_bytes} bytes) to {directory}",
                           _result(manifest, directory))

    # the steps
    def backup(self, ctx: TaskContext, uuid: str, root: Path, datestring: str,
               parent_datestring: str | None, retain: bool) -> tuple[Manifest, BackupDirectory]:
        """Snapshot `backup_<datestring>`, exported into `<root>/<vm>/<datestring>/`; the
        snapshot removed afterwards unless `retain`."""
        spec = self._spec(uuid)
        name = backup_snapshot_name(datestring)
        parent = backup_snapshot_name(parent_datestring) if parent_datestring else None
        directory = BackupDirectory(root, spec.name, datestring, self.allowed_paths)
        self.snapshots.take(ctx, uuid, name, "auto")
        try:
            manifest = self.export(ctx, uuid, name, directory, BACKUP, parent,
                                   datestring=datestring, parent_directory=parent_datestring,
                                   retained=retain)
        except BaseException:
            self._drop_snapshot(ctx, uuid, name)
            raise
        if not retain:
            self.snapshots.remove(ctx, uuid, name)
        return manifest, directory

    def export(self, ctx: TaskContext, uuid: str, snapshot_name: str,
               directory: BackupDirectory, layout: Layout, parent: str | None,
               datestring: str | None = None, parent_directory: str | None = None,
               retained: bool = False) -> Manifest:
        """Write VM snapshot `snapshot_name` into `directory` (full, or the diff from snapshot
        `parent`, whose export is the sibling directory `parent_directory`, by default named
        after it). The manifest written."""
        began = self.monotonic()
        spec = self._spec(uuid)
        record = read_snapshot(self.view, uuid, snapshot_name)
        if parent is not None:
            read_snapshot(self.view, uuid, parent)
            try:
                directory.sibling(parent_directory or parent).read_manifest(layout.manifest)
            except NotFound:
                raise NotFound(f"the parent export {directory.sibling(parent_directory or parent)}"
                               f" has no {layout.manifest}: an incremental export needs its "
                               "base") from None
        if directory.exists():
            raise InvalidValue(f"{directory} exists already; nothing was written")
        directory.create(layout.disks)
        ctx.artifact(DIRECTORY_ARTIFACT, str(directory.path))
        kind = FULL if parent is None else INCREMENTAL
        volumes = [(pool, volume, self._size(pool, volume, snapshot_name))
                   for pool, volume in record.volumes()]
        total = sum(size for _, _, size in volumes) or 1
        done = 0
        files = []
        for pool, volume, size in volumes:
            relative = layout.disk_file(pool, volume, kind)
            doing = f"exporting {pool}/{volume}@{snapshot_name}" + \
                (f" from {parent}" if parent else "")
            ctx.log(doing)

            def counted(count: int, doing: str = doing) -> None:
                nonlocal done
                done += count
                ctx.progress(min(done, total), total, doing)

            with directory.incoming(relative) as out:
                length, sha256 = self.exporter.export(pool, volume, snapshot_name, parent, out,
                                                      size, counted, ctx.check)
            files.append(ManifestFile(path=relative, pool=pool, volume=volume,
                                      volume_size=size, bytes=length, sha256=sha256))
        manifest = Manifest(type=kind, snapshot_name=snapshot_name,
                            incremental_parent=parent_directory or parent,
                            created=self.clock(), consistency=record.consistency,
                            vm_detail=vm_detail(spec, record), files=files,
                            datestring=datestring,
                            runtime_secs=round(self.monotonic() - began, 3), result=True,
                            result_message="complete", retained_snapshot=retained)
        directory.write_manifest(layout.manifest, manifest.to_doc())
        ctx.progress(total, total, f"wrote {directory}")
        log.info("event=vm-exported vm=%s snapshot=%s type=%s directory=%s bytes=%d", uuid,
                 snapshot_name, kind, directory, manifest.export_size_bytes)
        return manifest

    def remove(self, ctx: TaskContext, uuid: str | None, directory: BackupDirectory,
               snapshot_name: str | None) -> bool:
        """Remove an export or backup directory, and its retained VM snapshot if VM `uuid`
        still has it (autobackup's retention); whether the directory was there."""
        if uuid is not None and snapshot_name is not None and \
                self.view.cache.exists(self.view.paths.vm_snapshot(uuid, snapshot_name)):
            self.snapshots.remove(ctx, uuid, snapshot_name)
        removed = directory.remove()
        if removed:
            log.info("event=vm-export-removed directory=%s", directory)
        return removed

    # helpers of the steps
    def _spec(self, uuid: str) -> VmSpec:
        spec = self.view.vm_spec(uuid)
        if spec is None:
            raise NotFound(f"VM {uuid} not found")
        return spec

    def _size(self, pool: str, volume: str, snapshot: str) -> int:
        for path in (self.view.paths.storage_snapshot(pool, volume, snapshot),
                     self.view.paths.storage_volume(pool, volume)):
            doc = self.view.cache.get(path)
            if isinstance(doc, dict):
                size = doc.get("size") or (doc.get("stats") or {}).get("size")
                if isinstance(size, int) and size > 0:
                    return size
        return 0

    def _drop_snapshot(self, ctx: TaskContext, uuid: str, name: str) -> None:
        try:
            self.snapshots.remove(ctx, uuid, name)
        except Exception as exc:  # also a stopped task: the RBD snapshots are the task's
            # artifacts, undone anyway
            log.warning("event=vm-backup-snapshot-left vm=%s snapshot=%s error=%s", uuid, name,
                        exc)


def vm_detail(spec: VmSpec, record: VmSnapshot) -> dict[str, Any]:
    """The manifest's `vm_detail`: the VM as it was at the snapshot (its XML, metadata, tags)."""
    return {"name": spec.name, "uuid": spec.uuid, "node": spec.node, "state": spec.state,
            "xml": record.xml, **record.meta, "tags": list(record.tags)}


def _result(manifest: Manifest, directory: BackupDirectory) -> dict[str, Any]:
    return {"directory": str(directory), "type": manifest.type,
            "snapshot_name": manifest.snapshot_name,
            "incremental_parent": manifest.incremental_parent,
            "datestring": manifest.datestring, "runtime_secs": manifest.runtime_secs,
            "export_size_bytes": manifest.export_size_bytes,
            "files": [{"path": f.path, "bytes": f.bytes, "sha256": f.sha256}
                      for f in manifest.files]}
