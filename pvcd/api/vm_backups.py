"""VM snapshot export and import, per-VM backup and restore (extensions.md §5.2-5.4):
`POST /vm/<vm>/snapshot/export|import`, `GET|POST|DELETE /vm/<vm>/backup`,
`POST /vm/<vm>/restore`.

Everything that can be known before the task is checked here, so a 510 creates nothing: the
host path rule (`pvcd.drivers.backup_files.resolve_host_path`: inside `backup.allowed_paths`
once symlinks are resolved, which also keeps a fuzzer from writing anywhere), the snapshot and
its parent, the target directory, the chain of manifests of an import, the names and volumes
it would create (`pvcd.state.vm_restore`). The SHA-256 of every file is checked by the task,
before it creates anything (reading whole disks does not belong in a request). The work is a
task on the primary (`pvcd.controllers.vm_exports`, `pvcd.controllers.vm_imports`).

For an import or a restore, `<vm>` names the directory `<path>/<vm>/`: the VM need not exist
(it usually does not). For a backup listing or removal, a VM that exists is named by its name
or UUID; one that does not by its former name.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from pathlib import Path

from pvcd.api.routing import route
from pvcd.api.storage import run_request, storage_timeout
from pvcd.api.tasks import TASK_VALUES, start_task
from pvcd.api.values import accepts, boolean, flag, text, value
from pvcd.api.vm_snapshots import SNAPSHOT_NAME_REQUIRED, snapshot_record
from pvcd.api.vms import VmBaseHandler
from pvcd.domain.errors import Conflict, InvalidValue, NotFound
from pvcd.domain.records import VmSpec
from pvcd.domain.vm_backups import (
    BACKUP,
    EXPORT,
    Layout,
    Manifest,
    backup_datestring,
    backup_snapshot_name,
    check_datestring,
)
from pvcd.domain.vm_snapshots import split_rbd_snapshot
from pvcd.drivers.backup_files import (
    BackupDirectory,
    directory_names,
    read_chain,
    resolve_host_path,
)
from pvcd.drivers.ceph.values import check_snapshot_name
from pvcd.state.store import Op
from pvcd.state.vm_restore import plan_restore
from pvcd.state.vm_snapshots import read_snapshot, snapshot_volumes
from pvcd.vmxml import check_vm_name

_PATH_HELP = (" An absolute directory on the primary inside backup.allowed_paths (after "
              "symlinks are resolved).")
EXPORT_PATH = text("export_path", "Where the export goes: <export_path>/<vm>/<snapshot_name>/."
                   + _PATH_HELP, required=True)
IMPORT_PATH = text("import_path", "Where the export is: <import_path>/<vm>/<snapshot_name>/."
                   + _PATH_HELP, required=True)
BACKUP_PATH = text("backup_path", "The backup folder: <backup_path>/<vm>/<datestring>/."
                   + _PATH_HELP, required=True)
PARENT_SNAPSHOT = value("incremental_parent", "An older snapshot of this VM, exported into "
                        "the same export_path: the export is the difference from it (rbd "
                        "export-diff).", check_snapshot_name)
PARENT_BACKUP = value("incremental_parent", "The datestring of an earlier full backup of this "
                      "VM in backup_path whose snapshot was retained: the backup is the "
                      "difference from it.", check_datestring)
DATESTRING = value("backup_datestring", "The backup's datestring (YYYYMMDDHHMMSS).",
                   check_datestring, required=True)
RETAIN_FLAG = flag("retain_snapshot", "Keep the backup's snapshot (backup_<datestring>), so "
                   "later backups can be incremental from it (full backups only).")
RETAIN = boolean("retain_snapshot", "Keep the imported snapshot as a VM snapshot (default "
                 "true); false removes its RBD snapshots.", default=True)
START_VM = boolean("start_vm", "Start the VM once it is defined (default true).",
                   default=True)
NEW_NAME = value("new_name", "Import as a new VM of this name with a new UUID; volumes named "
                 "<vm> or <vm>_<suffix> are renamed after it.", check_vm_name)


class _BackupHandler(VmBaseHandler):
    def root(self, path_value: str, what: str) -> Path:
        return resolve_host_path(path_value, self.ctx.backup_paths, what)

    def directory_vm_name(self, vm: str) -> str:
        """The VM's name if it exists, else `vm` as a former name (a directory name)."""
        uuid = self.ctx.view.resolve_vm(vm)
        spec = self.ctx.view.vm_spec(uuid) if uuid else None
        return spec.name if spec is not None else check_vm_name(vm)

    def refuse_busy_vm(self, spec: VmSpec) -> list[tuple[str, str]]:
        """The VM's snapshot volumes, unless it cannot be snapshotted or exported now."""
        self.refuse_if_removing(spec)
        self.refuse_if_provisioning(spec)
        storage_timeout(self.ctx)
        volumes = snapshot_volumes(spec)
        if self.ctx.view.cache.exists(self.ctx.view.paths.vm_hold(spec.uuid)):
            raise Conflict(f"VM '{spec.name}' is still held by an earlier snapshot task; try "
                           "again once it is released")
        return volumes

    async def start_restore(self, task: str, vm: str, root: Path, name: str, layout: Layout,
                            args: dict[str, object]) -> None:
        storage_timeout(self.ctx)
        directory = BackupDirectory(root, check_vm_name(vm), name, self.ctx.backup_paths)
        try:
            chain = await asyncio.to_thread(read_chain, directory, layout)
        except NotFound as exc:
            raise InvalidValue(f"{exc}: nothing to import; nothing was changed") from None
        new_name = self.values[NEW_NAME]
        new_uuid = str(uuidlib.uuid4()) if new_name else None
        plan = plan_restore(self.ctx.view, [m for _, m in chain], new_name, new_uuid)
        await start_task(self, task, {**args, "name": check_vm_name(vm), "new_name": new_name,
                                      "new_uuid": new_uuid,
                                      "retain_snapshot": self.values[RETAIN],
                                      "start_vm": self.values[START_VM], "vm": plan.uuid,
                                      "target_name": plan.name},
                         plan.objects())


class VmSnapshotExportHandler(_BackupHandler):
    @accepts(SNAPSHOT_NAME_REQUIRED, EXPORT_PATH, PARENT_SNAPSHOT, *TASK_VALUES)
    async def post(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        name, parent = self.values[SNAPSHOT_NAME_REQUIRED], self.values[PARENT_SNAPSHOT]
        root = self.root(self.values[EXPORT_PATH], "export_path")
        self.refuse_if_removing(spec)
        storage_timeout(self.ctx)
        record = snapshot_record(self.ctx.view, spec, name)
        directory = BackupDirectory(root, spec.name, name, self.ctx.backup_paths)
        if directory.exists():
            raise Conflict(f"{directory} exists already; remove it or export another snapshot")
        if parent is not None:
            older = snapshot_record(self.ctx.view, spec, parent)
            if older.timestamp >= record.timestamp or parent == name:
                raise InvalidValue(f"incremental_parent '{parent}' must be an older snapshot "
                                   f"than '{name}'")
            base = directory.sibling(parent)
            if not await asyncio.to_thread(_has_manifest, base, EXPORT):
                raise InvalidValue(f"{base} has no {EXPORT.manifest}: export snapshot "
                                   f"'{parent}' there first (an incremental export needs its "
                                   "base)")
        await start_task(self, "vm.export_snapshot",
                         {"vm": spec.uuid, "name": spec.name, "snapshot_name": name,
                          "export_path": str(root), "incremental_parent": parent},
                         [f"vm:{spec.uuid}", *(f"volume:{p}/{v}" for p, v in record.volumes())])


class VmSnapshotImportHandler(_BackupHandler):
    @accepts(SNAPSHOT_NAME_REQUIRED, IMPORT_PATH, RETAIN, START_VM, NEW_NAME, *TASK_VALUES)
    async def post(self, vm: str) -> None:
        name = self.values[SNAPSHOT_NAME_REQUIRED]
        root = self.root(self.values[IMPORT_PATH], "import_path")
        await self.start_restore("vm.import_snapshot", vm, root, name, EXPORT,
                                 {"snapshot_name": name, "import_path": str(root)})


class VmRestoreHandler(_BackupHandler):
    @accepts(BACKUP_PATH, DATESTRING, RETAIN, START_VM, NEW_NAME, *TASK_VALUES)
    async def post(self, vm: str) -> None:
        datestring = self.values[DATESTRING]
        root = self.root(self.values[BACKUP_PATH], "backup_path")
        await self.start_restore("vm.restore", vm, root, datestring, BACKUP,
                                 {"backup_datestring": datestring, "backup_path": str(root)})


class VmBackupHandler(_BackupHandler):
    @accepts(BACKUP_PATH)
    async def get(self, vm: str) -> None:
        root = self.root(self.values[BACKUP_PATH], "backup_path")
        name = self.directory_vm_name(vm)
        manifests = await asyncio.to_thread(_backups, root, name, self.ctx.backup_paths)
        self.reply([m.summary() for m in manifests])

    @accepts(BACKUP_PATH, PARENT_BACKUP, RETAIN_FLAG, *TASK_VALUES)
    async def post(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        root = self.root(self.values[BACKUP_PATH], "backup_path")
        parent, retain = self.values[PARENT_BACKUP], self.values[RETAIN_FLAG]
        if parent is not None and retain:
            raise InvalidValue("retain_snapshot is for full backups only: an incremental "
                               "backup's snapshot is removed (as in PVC)")
        volumes = self.refuse_busy_vm(spec)
        view = self.ctx.view
        datestring = backup_datestring(self.ctx.clock())
        snapshot = backup_snapshot_name(datestring)
        directory = BackupDirectory(root, spec.name, datestring, self.ctx.backup_paths)
        if directory.exists() or view.cache.exists(view.paths.vm_snapshot(spec.uuid, snapshot)):
            raise Conflict(f"a backup {datestring} of VM '{spec.name}' exists already; try "
                           "again in a second")
        if parent is not None:
            base = directory.sibling(parent)
            if not await asyncio.to_thread(_has_manifest, base, BACKUP):
                raise NotFound(f"no backup {parent} of VM '{spec.name}' in {root}")
            try:
                read_snapshot(view, spec.uuid, backup_snapshot_name(parent))
            except NotFound:
                raise InvalidValue(f"the snapshot {backup_snapshot_name(parent)} of backup "
                                   f"{parent} is gone (it was not retained): take a full "
                                   "backup") from None
        await start_task(self, "vm.backup",
                         {"vm": spec.uuid, "name": spec.name, "backup_path": str(root),
                          "datestring": datestring, "incremental_parent": parent,
                          "retain_snapshot": retain},
                         [f"vm:{spec.uuid}", *(f"volume:{p}/{v}" for p, v in volumes)])

    @accepts(BACKUP_PATH, DATESTRING)
    async def delete(self, vm: str) -> None:
        root = self.root(self.values[BACKUP_PATH], "backup_path")
        datestring = self.values[DATESTRING]
        name = self.directory_vm_name(vm)
        directory = BackupDirectory(root, name, datestring, self.ctx.backup_paths)
        backups = await asyncio.to_thread(_backups, root, name, self.ctx.backup_paths)
        if not any(m.datestring == datestring for m in backups) and not directory.exists():
            raise NotFound(f"no backup {datestring} of VM '{name}' in {root}")
        children = [str(m.datestring) for m in backups if m.incremental_parent == datestring]
        if children:
            raise Conflict(f"backups {', '.join(children)} are incremental from {datestring}: "
                           "remove them first; nothing was changed")
        removed = await self._drop_snapshot(vm, datestring)
        await asyncio.to_thread(directory.remove)
        self.message(f"Removed backup {datestring} of VM '{name}' ({directory})"
                     + (f" and its snapshot {removed}" if removed else ""))

    async def _drop_snapshot(self, vm: str, datestring: str) -> str | None:
        """Remove the retained `backup_<datestring>` VM snapshot, if the VM still has it."""
        view = self.ctx.view
        uuid = view.resolve_vm(vm)
        if uuid is None:
            return None
        name = backup_snapshot_name(datestring)
        try:
            record = read_snapshot(view, uuid, name)
        except NotFound:
            return None
        storage_timeout(self.ctx)
        for spec_text in record.rbd_snapshots:
            pool, volume, snapshot = split_rbd_snapshot(spec_text)
            if view.cache.exists(view.paths.storage_snapshot(pool, volume, snapshot)):
                await run_request(self, "snapshot-remove",
                                  {"pool": pool, "volume": volume, "snapshot": snapshot})
        entry = view.cache.entry(view.paths.vm_snapshot(uuid, name))
        if entry is not None:
            await self.commit([Op.delete(view.paths.vm_snapshot(uuid, name), entry.version)])
        return name


def _has_manifest(directory: BackupDirectory, layout: Layout) -> bool:
    try:
        directory.read_manifest(layout.manifest)
    except NotFound:
        return False
    return True


def _backups(root: Path, vm: str, allowed: tuple[str, ...]) -> list[Manifest]:
    """The readable backups of `vm` in `root`, oldest first (incomplete ones left out)."""
    found = []
    for name in directory_names(root, vm, allowed):
        try:
            doc = BackupDirectory(root, vm, name, allowed).read_manifest(BACKUP.manifest)
            found.append(Manifest.from_doc(doc, BACKUP))
        except (NotFound, InvalidValue):
            continue
    return found


ROUTES = [
    route("/vm/<vm>/snapshot/export", VmSnapshotExportHandler),
    route("/vm/<vm>/snapshot/import", VmSnapshotImportHandler),
    route("/vm/<vm>/backup", VmBackupHandler),
    route("/vm/<vm>/restore", VmRestoreHandler),
]
