"""Importing exported VM snapshots and restoring VM backups (extensions.md §5.2 import, §5.4
restore): the tasks `vm.import_snapshot` and `vm.restore`, run by the primary (where the
backup folders and the storage executor are; the files never leave it).

`VmImportSteps.restore` is the reusable step: from a directory in a `Layout`,
1. read the chain of manifests (the full root first, `pvcd.drivers.backup_files.read_chain`)
   and plan what it will create (`pvcd.state.vm_restore`); a broken chain is refused;
2. verify every file's SHA-256 against its manifest, **before anything is created**: a
   corrupted or missing file fails the task with nothing created;
3. check the plan again (the cluster may have changed since the API checked it), then for each
   volume import the root (`rbd import --export-format 2`: the image with its snapshots), then
   each diff in order (`rbd import-diff`: it needs the previous snapshot and adds the next),
   through `volume-import` storage requests (so the mirror and per-volume locks stay right).
   Each new volume is an artifact (`volume`) recorded before its request: a failure, or a
   daemon killed part-way, removes it (with its snapshots);
4. remove the RBD snapshots the VM will not keep (all but the target's with `retain_snapshot`,
   else all), then write the VM record, its name, its snapshot record (`retain_snapshot`) and
   the task's emptied artifact list in one transaction: from then on the volumes are the VM's.
   The VM's node defines it and, unless `start_vm` is false, starts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pvcd.controllers.tasks import TaskContext, TaskKind, TaskOutcome
from pvcd.controllers.tasks.storage_steps import StorageSteps
from pvcd.domain.errors import Conflict, InvalidValue, NotFound
from pvcd.domain.tasks import Artifact
from pvcd.domain.vm_backups import BACKUP, EXPORT, FULL, Layout
from pvcd.drivers.backup_files import BackupDirectory, read_chain
from pvcd.state.request_size import check_request_size
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.state.vm_restore import RestorePlan, plan_restore, restored_snapshot, restored_spec

log = logging.getLogger(__name__)

IMPORT_TASK, RESTORE_TASK = "vm.import_snapshot", "vm.restore"
VOLUME_ARTIFACT = "volume"  # ref `<pool>/<volume>`
UNDO_PATIENCE, UNDO_RETRY = 90.0, 2.0  # a killed import's `rbd` may hold the image a while


class VmImportSteps:
    def __init__(self, view: ClusterView, store: Store, storage: StorageSteps,
                 allowed_paths: Sequence[str], clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.view = view
        self.store = store
        self.storage = storage
        self.allowed_paths = tuple(allowed_paths)
        self.clock = clock
        self.sleep = sleep

    def kinds(self) -> list[TaskKind]:
        return [TaskKind(IMPORT_TASK, self._import_task, self.undo),
                TaskKind(RESTORE_TASK, self._restore_task, self.undo)]

    def undo(self, artifact: Artifact) -> None:
        if artifact.kind != VOLUME_ARTIFACT:
            raise InvalidValue(f"a VM import made no artifact of kind {artifact.kind!r}")
        pool, _, volume = artifact.ref.partition("/")
        deadline = time.monotonic() + UNDO_PATIENCE
        while True:
            try:
                self.storage.run("volume-remove", {"pool": pool, "volume": volume,
                                                   "with_snapshots": True})
            except NotFound:
                return  # never made, or gone already
            except Conflict:
                if time.monotonic() >= deadline:
                    raise
                self.sleep(UNDO_RETRY)
                continue
            log.info("event=vm-import-volume-removed volume=%s/%s", pool, volume)
            return

    # the tasks
    def _import_task(self, ctx: TaskContext) -> TaskOutcome:
        args = ctx.args
        directory = BackupDirectory(Path(args["import_path"]), args["name"],
                                    args["snapshot_name"], self.allowed_paths)
        return self._outcome(self.restore(ctx, directory, EXPORT, args.get("new_name"),
                                          args.get("new_uuid"), args["retain_snapshot"],
                                          args["start_vm"]), directory)

    def _restore_task(self, ctx: TaskContext) -> TaskOutcome:
        args = ctx.args
        directory = BackupDirectory(Path(args["backup_path"]), args["name"],
                                    args["backup_datestring"], self.allowed_paths)
        return self._outcome(self.restore(ctx, directory, BACKUP, args.get("new_name"),
                                          args.get("new_uuid"), args["retain_snapshot"],
                                          args["start_vm"]), directory)

    @staticmethod
    def _outcome(result: dict[str, Any], directory: BackupDirectory) -> TaskOutcome:
        return TaskOutcome(f"Restored VM '{result['name']}' ({result['uuid']}) from "
                           f"{directory} ({len(result['chain'])} export(s)) on node "
                           f"{result['node']}" + ("; started" if result["started"] else ""),
                           result)

    # the step
    def restore(self, ctx: TaskContext, directory: BackupDirectory, layout: Layout,
                new_name: str | None, new_uuid: str | None, retain: bool, start: bool
                ) -> dict[str, Any]:
        """Import `directory` (module docstring); the task's result."""
        chain = read_chain(directory, layout)
        manifests = [manifest for _, manifest in chain]
        plan = plan_restore(self.view, manifests, new_name, new_uuid)
        self._verify(ctx, chain, plan)
        plan = plan_restore(self.view, manifests, new_name, new_uuid)
        restored_spec(self.view, plan, start)  # a VM no node can take: refused before a volume
        snapshots = self._import(ctx, chain, plan)
        keep = plan.target.snapshot_name if retain else None
        for pool, volume, snapshot in snapshots:
            if snapshot != keep:
                self.storage.run("snapshot-remove", {"pool": pool, "volume": volume,
                                                     "snapshot": snapshot}, ctx.check)
        spec = restored_spec(self.view, plan, start)
        paths = self.view.paths
        ops = [Op.create(paths.vm(spec.uuid), spec.to_doc()),
               Op.create(paths.vm_name(spec.name), {"uuid": spec.uuid})]
        if retain:
            record = restored_snapshot(plan, spec)
            ops += [Op.create(paths.vm_snapshots(spec.uuid), {}),
                    Op.create(paths.vm_snapshot(spec.uuid, record.name), record.to_doc())]
        check_request_size(ops, f"VM '{spec.name}'")
        if not ctx.hand_over(ops):  # the volumes are the VM's from this transaction on
            ctx.check()
            raise Conflict(f"could not record VM '{spec.name}': a VM of that name or UUID was "
                           "defined meanwhile; the imported volumes are removed")
        log.info("event=vm-restored vm=%s name=%s node=%s directory=%s", spec.uuid, spec.name,
                 spec.node, directory)
        return {"name": spec.name, "uuid": spec.uuid, "node": spec.node, "started": start,
                "chain": [str(where) for where, _ in chain],
                "volumes": [f"{pool}/{new}" for pool, _, new in plan.volumes],
                "retained_snapshot": keep}

    def _verify(self, ctx: TaskContext, chain: list[tuple[BackupDirectory, Any]],
                plan: RestorePlan) -> None:
        wanted = {(pool, volume) for pool, volume, _ in plan.volumes}
        files = [(where, f) for where, manifest in chain for f in manifest.files
                 if (f.pool, f.volume) in wanted]
        total = sum(f.bytes for _, f in files) or 1
        done = 0
        for where, entry in files:
            doing = f"verifying {where}/{entry.path}"

            def counted(count: int, doing: str = doing) -> None:
                nonlocal done
                done += count
                ctx.progress(min(done, total), total, doing)

            ctx.log(doing)
            try:
                where.verify(entry.path, entry.bytes, entry.sha256, counted)
            except InvalidValue as exc:
                raise InvalidValue(f"{exc}; nothing was created") from None

    def _import(self, ctx: TaskContext, chain: list[tuple[BackupDirectory, Any]],
                plan: RestorePlan) -> list[tuple[str, str, str]]:
        """Every volume imported through the chain; (pool, volume, snapshot) of each RBD
        snapshot the volumes then have."""
        wanted = {(pool, exported) for pool, exported, _ in plan.volumes}
        total = sum(f.bytes for _, manifest in chain for f in manifest.files
                    if (f.pool, f.volume) in wanted) or 1
        done = 0
        snapshots: list[tuple[str, str, str]] = []
        for pool, exported, volume in plan.volumes:
            ctx.artifact(VOLUME_ARTIFACT, f"{pool}/{volume}")  # listed before it exists
            names: list[str] = []
            for where, manifest in chain:
                entry = next(f for f in manifest.files
                             if (f.pool, f.volume) == (pool, exported))
                ctx.progress(done, total, f"importing {where}/{entry.path} into "
                                          f"{pool}/{volume}")
                request = self.storage.run(
                    "volume-import", {"pool": pool, "volume": volume,
                                      "file": where.file_path(entry.path),
                                      "diff": manifest.type != FULL, "bytes": entry.bytes},
                    ctx.check)
                names = [str(n) for n in request.result.get("snapshots") or []]
                done += entry.bytes
            if plan.target.snapshot_name not in names:
                raise InvalidValue(f"after the import, {pool}/{volume} has no snapshot "
                                   f"'{plan.target.snapshot_name}' (it has "
                                   f"{', '.join(names) or 'none'}); the export is not what "
                                   "its manifest says")
            snapshots += [(pool, volume, name) for name in names]
        ctx.progress(total, total, "recording the VM")
        return snapshots
