"""The autobackup run (extensions.md §5.5): the task `cluster.autobackup`, on the primary.

It backs up the VMs the run was created for (those with one of `backup_tags` then), one after
another, each into `<root><suffix>/<vm>/ab<datestring>/` in the export layout (§5.3), with the
vmbackup steps: `VmSnapshotSteps.take` (`auto` consistency), `VmExportSteps.export`, and
`VmExportSteps.remove` for retention. Full or incremental and what retention deletes are the
pure rules of `pvcd.domain.autobackup`; the VM's `.autobackup.json` lists what it keeps.

Each VM is its own unit of work. Once its backup is written and listed in the state file, the
task hands its artifacts over (`TaskContext.hand_over`, with the VM's entry of `latest` in
`cluster/autobackup`): a later failure, or the run ending in `failure`, never undoes a good
backup. A VM that fails has what it made undone at once (its partial directory, its snapshot),
its `latest` entry says why (the fault monitor raises `AUTOBACKUP_FAILED_<VM>` from it), and
the run goes on. A run with any failed VM ends in `failure` (`BackendError`) naming them; its
`result` still maps every VM. A handover stops the run (`Interrupted`, by the runner): the VM
under way is undone by the task's cleanup, the ones before it stay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pvcd.controllers.tasks import TaskContext, TaskKind, TaskOutcome
from pvcd.controllers.tasks.context import TaskStopped
from pvcd.controllers.vm_exports import VmExportSteps
from pvcd.controllers.vm_snapshots import VmSnapshotSteps
from pvcd.domain.autobackup import (
    FULL,
    INCREMENTAL,
    RESULT_FAILURE,
    RESULT_SUCCESS,
    AutobackupConfig,
    expired_backups,
    next_backup,
    snapshot_name,
    vm_result,
)
from pvcd.domain.errors import BackendError, InvalidValue, NotFound, PvcError
from pvcd.domain.tasks import Artifact
from pvcd.domain.vm_backups import EXPORT, backup_datestring
from pvcd.drivers.autobackup_state import read_state, write_state
from pvcd.drivers.backup_files import DIR_MODE, BackupDirectory, is_inside, resolve_host_path
from pvcd.state.autobackup import TASK_NAME, read_autobackup
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

SAVE_ATTEMPTS = 5  # compare-and-set rounds against a concurrent PUT


class AutobackupRun:
    def __init__(self, view: ClusterView, store: Store, snapshots: VmSnapshotSteps,
                 exports: VmExportSteps, allowed_paths: Sequence[str],
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.store = store
        self.snapshots = snapshots
        self.exports = exports
        self.allowed_paths = tuple(allowed_paths)
        self.clock = clock
        self.monotonic = monotonic

    def kind(self) -> TaskKind:
        return TaskKind(TASK_NAME, self.run, self.undo)

    def undo(self, artifact: Artifact) -> None:
        self.exports.undo(artifact)

    def run(self, ctx: TaskContext) -> TaskOutcome:
        config, _, _ = read_autobackup(self.view)
        force_full = bool(ctx.args.get("force_full"))
        datestring = backup_datestring(self.clock())
        self._save(ctx, last_run={"task_id": ctx.task_id, "state": "running", "error": None,
                                  "started": self.clock(), "finished": None})
        results: dict[str, dict[str, Any]] = {}
        names = list(ctx.args.get("names") or [])
        for index, uuid in enumerate(ctx.args.get("vms") or []):
            name = names[index] if index < len(names) else uuid
            ctx.log(f"backing up VM {name} ({index + 1} of {len(names)})")
            results[name] = self._one(ctx, config, uuid, name, datestring, force_full)
        failed = sorted(name for name, entry in results.items()
                        if entry["result"] == RESULT_FAILURE)
        ctx.record.result = {"result": results}
        self._save(ctx, last_run={"task_id": ctx.task_id,
                                  "state": "failure" if failed else "success",
                                  "error": "BackendError" if failed else None,
                                  "started": ctx.record.started, "finished": self.clock()})
        if failed:
            raise BackendError(f"autobackup of {len(failed)} of {len(results)} VMs failed: "
                               f"{', '.join(failed)} (see the task's result and the faults "
                               "AUTOBACKUP_FAILED_<VM>)")
        return TaskOutcome(f"Autobackup of {len(results)} VMs done", {"result": results})

    def _one(self, ctx: TaskContext, config: AutobackupConfig, uuid: str, name: str,
             datestring: str, force_full: bool) -> dict[str, Any]:
        """Back VM `uuid` up, then apply retention; its `result` entry. Only a stopped task
        escapes (the runner's cleanup then undoes the VM under way)."""
        began = self.monotonic()
        snapshot = snapshot_name(datestring)
        planned: list[str] = []
        try:
            directory, tracked, result = self._backup(ctx, config, uuid, name, snapshot,
                                                      datestring, force_full, planned)
        except TaskStopped:
            raise
        except Exception as exc:
            message = _message(exc)
            log.warning("event=autobackup-vm-failed vm=%s error=%s", name, message)
            ctx.log(f"VM {name} failed: {message}")
            self._undo_vm(ctx, uuid, snapshot)
            result = vm_result(RESULT_FAILURE, planned[0] if planned else None, snapshot,
                               self.monotonic() - began, 0, message)
            self._save(ctx, vm=(name, result))
            return result
        try:
            self._retain(ctx, uuid, directory, tracked, config.full_retention)
        except TaskStopped:
            raise
        except Exception as exc:  # the new backup stays: it is listed and handed over
            result = {**result, "result": RESULT_FAILURE,
                      "message": f"{result['message']}, but retention failed: {_message(exc)}"}
            ctx.log(f"VM {name}: {result['message']}")
            self._save(ctx, vm=(name, result))
        return result

    def _backup(self, ctx: TaskContext, config: AutobackupConfig, uuid: str, name: str,
                snapshot: str, datestring: str, force_full: bool, planned: list[str]
                ) -> tuple[BackupDirectory, list[dict[str, Any]], dict[str, Any]]:
        """The backup of one VM, listed in its state file and handed over: its directory,
        the backups the state file lists, its `result` entry. `planned` gets its type."""
        began = self.monotonic()
        spec = self.view.vm_spec(uuid)
        if spec is None:
            raise NotFound(f"VM {name} was removed before its backup")
        directory = BackupDirectory(self._root(config), spec.name, snapshot, self.allowed_paths)
        tracked = read_state(directory.vm_dir, self.allowed_paths)
        plan = next_backup(tracked, config.full_interval, force_full,
                           lambda parent: self._usable(uuid, directory.sibling(parent), parent))
        planned.append(plan.type)
        self.snapshots.take(ctx, uuid, snapshot, "auto")
        manifest = self.exports.export(ctx, uuid, snapshot, directory, EXPORT, plan.parent,
                                       datestring=datestring, retained=plan.type == FULL)
        if plan.type == INCREMENTAL:
            self.snapshots.remove(ctx, uuid, snapshot)
        entry = {"snapshot_name": snapshot, "type": plan.type, "datestring": datestring,
                 "incremental_parent": plan.parent, "created": manifest.created,
                 "runtime_secs": manifest.runtime_secs,
                 "export_size_bytes": manifest.export_size_bytes,
                 "retained_snapshot": plan.type == FULL}
        tracked = [entry, *tracked]
        write_state(directory.vm_dir, tracked, self.allowed_paths)
        result = vm_result(RESULT_SUCCESS, plan.type, snapshot, self.monotonic() - began,
                           manifest.export_size_bytes, f"{plan.type} backup to {directory}")
        self._save(ctx, vm=(name, result))  # from here on the backup is kept
        log.info("event=autobackup-vm-done vm=%s type=%s directory=%s", name, plan.type,
                 directory)
        return directory, tracked, result

    def _root(self, config: AutobackupConfig) -> Path:
        """`<backup_root_path><backup_root_suffix>`, made if missing, inside the allowed
        paths (checked again at every run: a folder may have become a symlink)."""
        base = resolve_host_path(config.backup_root_path or "", self.allowed_paths,
                                 "backup_root_path")
        if not config.backup_root_suffix:
            return base
        root = base / config.backup_root_suffix.lstrip("/")
        if not is_inside(str(root), self.allowed_paths):
            raise InvalidValue(f"{root} leads outside backup.allowed_paths (a symlink?)")
        root.mkdir(mode=DIR_MODE, exist_ok=True)
        return root

    def _usable(self, uuid: str, directory: BackupDirectory, parent: str) -> bool:
        """Whether a full backup can be the parent of an incremental one: its snapshot is
        still on the VM and its directory holds a manifest."""
        if not self.view.cache.exists(self.view.paths.vm_snapshot(uuid, parent)):
            return False
        try:
            directory.read_manifest(EXPORT.manifest)
        except (NotFound, InvalidValue):
            return False
        return True

    def _retain(self, ctx: TaskContext, uuid: str, directory: BackupDirectory,
                tracked: list[dict[str, Any]], retention: int) -> None:
        """Delete the fulls beyond `retention` with their incrementals and snapshots; the
        state file lists what is left after each one."""
        for old in expired_backups(tracked, retention):
            old_name = str(old["snapshot_name"])
            ctx.log(f"retention: removing {old.get('type')} backup {old_name}")
            self.exports.remove(ctx, uuid, directory.sibling(old_name), old_name)
            tracked = [e for e in tracked if e is not old]
            write_state(directory.vm_dir, tracked, self.allowed_paths)

    def _drop_snapshot(self, uuid: str, name: str) -> None:
        """The snapshot record of a failed backup (its RBD snapshots are artifacts)."""
        path = self.view.paths.vm_snapshot(uuid, name)
        entry = self.view.cache.entry(path)
        if entry is not None:
            try:
                self.store.commit([Op.delete(path, entry.version)])
            except PvcError as exc:
                log.warning("event=autobackup-snapshot-record-left vm=%s snapshot=%s error=%s",
                            uuid, name, exc)

    def _undo_vm(self, ctx: TaskContext, uuid: str, snapshot: str) -> None:
        """Undo what a failed VM's backup made (its artifacts, newest first)."""
        for artifact in reversed(ctx.record.artifacts):
            try:
                self.exports.undo(artifact)
            except Exception as exc:
                log.warning("event=autobackup-undo-failed artifact=%s error=%s", artifact.ref,
                            exc)
                ctx.log(f"could not remove {artifact.kind} {artifact.ref}: {exc}")
        self._drop_snapshot(uuid, snapshot)

    def _save(self, ctx: TaskContext, last_run: dict[str, Any] | None = None,
              vm: tuple[str, dict[str, Any]] | None = None) -> None:
        """Write `last_run` or a VM's `latest` into `cluster/autobackup`, and hand the task's
        artifacts over with it (compare-and-set, retried against a concurrent PUT)."""
        path = self.view.paths.autobackup
        for _ in range(SAVE_ATTEMPTS):
            current = self.store.read_optional(path)
            doc = dict(current[0]) if current and isinstance(current[0], dict) else {}
            if last_run is not None:
                doc["last_run"] = last_run
            if vm is not None:
                latest = dict(doc.get("latest") or {})
                latest[vm[0]] = {**vm[1], "task_id": ctx.task_id, "finished": self.clock()}
                doc["latest"] = latest
            op = Op.set(path, doc, current[1].version) if current else Op.create(path, doc)
            if ctx.hand_over([op]):
                return
            ctx.check()
        log.warning("event=autobackup-state-not-written task=%s", ctx.task_id)


def _message(exc: Exception) -> str:
    return str(exc) if isinstance(exc, PvcError) else f"internal error: {exc!r}"
