"""The `cluster.restore` task (extensions.md §9): replace the cluster's desired state with a
checked backup.

The API checks everything before it creates the task (`pvcd.api.cluster_backup`) and hands
the document over in-process (an `UploadPipe` under the task's id, as uploads do: the task's
`args` never carry it). The task runs on the API's node, checks the document and the safety
rules once more against the state it is about to replace (maintenance may have been turned off
meanwhile), then:

1. saves the current state, as a backup document, to `pvcd-pre-restore-<time>.json` in the
   first of `backup.allowed_paths` (mode 0600: it holds user-data and addresses);
2. writes the `cluster/restore` marker (the pre-restore file and the task in it);
3. writes the backup (`pvcd.state.cluster_restore.RestoreWriter`: only the groups that differ,
   each group's root and name entry in one transaction);
4. removes the marker.

An interruption (the daemon killed, ZooKeeper lost, the task stopped at a handover) leaves the
marker: the primary raises the fault `RESTORE_INCOMPLETE` (§8.4) until the restore is run
again with the same document (which finishes the work: the groups written already are left
alone) or the marker is removed with `DELETE /restore`. The task records no artifact, so an
interrupted or failed restore is never undone behind the operator's back.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from pvcd.controllers.tasks import TaskKind
from pvcd.controllers.tasks.context import TaskContext
from pvcd.controllers.tasks.registry import TaskOutcome
from pvcd.domain.errors import BackendError
from pvcd.domain.tasks import Artifact
from pvcd.specs.cluster_backup import RuleBody, check_backup, parse_backup
from pvcd.state.cluster_backup import backup_document, cluster_schema_version
from pvcd.state.cluster_restore import (
    TASK_NAME,
    RestoreWriter,
    check_not_oversized,
    check_restore_allowed,
    place_vms,
    pre_restore_folder,
    remove_marker,
    write_marker,
)
from pvcd.state.store import Store
from pvcd.state.tasks import read_storage_tasks, read_tasks
from pvcd.state.view import ClusterView
from pvcd.upload_pipe import UploadBroken, UploadPipes

log = logging.getLogger(__name__)

PRE_RESTORE_PREFIX = "pvcd-pre-restore-"


def save_document(folder: str, doc: dict[str, Any], now: float) -> str:
    """Write `doc` to a new `pvcd-pre-restore-<UTC time>.json` in `folder`, readable by its
    owner only; return its path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    data = json.dumps(doc, sort_keys=True).encode()
    for attempt in range(1, 100):
        suffix = "" if attempt == 1 else f"-{attempt}"
        path = os.path.join(folder, f"{PRE_RESTORE_PREFIX}{stamp}{suffix}.json")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return path
    raise BackendError(f"could not name the pre-restore copy in {folder}")


class ClusterRestore:
    """The task kind, built from explicit dependencies (`pvcd.controllers.task_kinds`)."""

    def __init__(self, view: ClusterView, store: Store, uploads: UploadPipes,
                 allowed_paths: Sequence[str], rule_body: RuleBody,
                 clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.store = store
        self.uploads = uploads
        self.allowed_paths = allowed_paths
        self.rule_body = rule_body
        self.clock = clock

    def kind(self) -> TaskKind:
        return TaskKind(TASK_NAME, self.run, self.undo)

    def run(self, ctx: TaskContext) -> TaskOutcome:
        view = self.view
        ctx.progress(0, 1, "checking the backup")
        text = self._document(ctx)
        backup = check_backup(parse_backup(text), cluster_schema_version(view),
                              view.node_names(), self.rule_body)
        check_not_oversized(backup.znodes)
        check_restore_allowed(view, [*read_tasks(view), *read_storage_tasks(view)],
                              own_task=ctx.task_id)
        folder = pre_restore_folder(self.allowed_paths)
        now = self.clock()
        saved = save_document(folder, backup_document(view, ctx.record.run_on, now), now)
        ctx.log(f"saved the state it replaces to {saved}")
        log.info("event=restore-started task=%s pre_restore=%s", ctx.task_id, saved)
        write_marker(view, self.store, {"task_id": ctx.task_id, "started": now,
                                        "pre_restore": saved, "backup_created": backup.created,
                                        "backup_primary": backup.primary_node})
        counts = RestoreWriter(view, self.store).restore(place_vms(view, backup.znodes),
                                                         ctx.progress)
        remove_marker(view, self.store)
        log.info("event=restore-done task=%s removed=%d created=%d kept=%d", ctx.task_id,
                 counts.removed, counts.created, counts.kept)
        return TaskOutcome(
            f"Restored the cluster's state ({backup.summary()}); the state it replaced is "
            f"saved in {saved}",
            {"pre_restore": saved, "removed": counts.removed, "created": counts.created,
             "kept": counts.kept})

    def undo(self, artifact: Artifact) -> None:
        """Nothing to undo: the task records no artifact (module docstring)."""

    def _document(self, ctx: TaskContext) -> bytes:
        pipe = self.uploads.take(ctx.task_id)
        if pipe is None:
            raise BackendError("the backup document is not in this process any more (the "
                               "daemon that received it restarted): send the restore again")
        try:
            parts = []
            while chunk := pipe.read(-1, ctx.stopped.is_set):
                parts.append(chunk)
            return b"".join(parts)
        except UploadBroken as exc:
            raise BackendError(f"the backup document did not arrive whole: {exc}") from None
        finally:
            self.uploads.discard(ctx.task_id)
