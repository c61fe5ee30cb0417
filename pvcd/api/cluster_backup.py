"""Cluster state backup and restore: `GET /backup`, `POST /restore` (task `cluster.restore`),
`DELETE /restore` (extensions.md §9; docs/backups.md).

`GET /backup` answers the desired state copied from the cache at one point
(`pvcd.state.cluster_backup`). `POST /restore` checks everything the task will do before
anything is written, in the order of §9's safety rules: the confirmation, maintenance mode
(or an empty cluster, or the marker of an unfinished restore being finished), the document
(format, schema version, every object by the API's own rules: `pvcd.specs.cluster_backup`),
no VM running and no other task, and a folder for the pre-restore copy. A refusal is a 510 and
changes nothing. Then it hands the document to the task in-process (an `UploadPipe`, as an
upload's body) and answers as every task endpoint does (202, or the end with `wait`).

The document arrives as PVC's form value `cluster_data` (also in a JSON object of values), or
(pvcd addition) as the whole body with `Content-Type: application/json`; then the other values
are read from the query string only, since the body is the document and not an object of
values. A JSON body is taken as an object of values only when it has `cluster_data`, which a
backup never has. The body limit of
the API does not apply to this route: a backup is as large as the cluster's state.

`DELETE /restore?yes_i_really_mean_it` removes the marker an interrupted restore left, for an
operator who decides not to run it again.
"""

from __future__ import annotations

import asyncio
import json

from pvcd.api.base import UNLIMITED, BaseHandler
from pvcd.api.routing import route
from pvcd.api.tasks import TASK_VALUES, answer_task, create_task
from pvcd.api.values import RawValues, accepts, flag, text
from pvcd.domain.errors import Conflict, InvalidValue
from pvcd.domain.tasks import TaskRecord, busy_task
from pvcd.drivers.nft_rules import validate_rule
from pvcd.specs.cluster_backup import ClusterBackup, check_backup, parse_backup
from pvcd.state.cluster_backup import backup_document, cluster_schema_version
from pvcd.state.cluster_restore import (
    TASK_NAME,
    check_not_oversized,
    check_restore_allowed,
    pre_restore_folder,
)
from pvcd.state.store import Op
from pvcd.state.tasks import read_storage_tasks, read_tasks
from pvcd.state.view import ClusterView
from pvcd.upload_pipe import UploadPipe

CONFIRM = flag("yes_i_really_mean_it", "Mandatory: the restore replaces the cluster's "
               "desired state.")
CONFIRM_PVC = flag("yes-i-really-mean-it", "PVC's spelling of yes_i_really_mean_it.")
CLUSTER_DATA = text("cluster_data", "The backup document (what GET /backup answered) as JSON "
                    "text. Or send the document as the whole body with Content-Type: "
                    "application/json, and the other values in the query string.")
RESTORE_OBJECT = "cluster:state"  # the task's object: one restore at a time


class BackupHandler(BaseHandler):
    async def get(self) -> None:
        # in a thread: the copy may wait (a moment) for the cache to hold no transaction in part
        self.reply(await asyncio.to_thread(backup_document, self.ctx.view, self.ctx.node_name,
                                           self.ctx.clock()))


class RestoreHandler(BaseHandler):
    max_body_size = UNLIMITED  # a backup is as large as the cluster's state
    _body_is_document: bool | None = None

    @property
    def raw_values(self) -> RawValues:
        if self._raw_values is None and self._document_in_body():
            self._raw_values = RawValues.from_request(self.request.query_arguments, {}, "", b"")
        return super().raw_values

    def _document_in_body(self) -> bool:
        """Whether the body is the backup document itself: a JSON body, unless it is an object
        of values (one with `cluster_data`, which a backup never has)."""
        kind = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return False
        if self._body_is_document is None:
            try:
                doc = json.loads(self.request.body)
            except ValueError:
                doc = None  # refused as the document it was meant to be
            self._body_is_document = not (isinstance(doc, dict) and "cluster_data" in doc)
        return self._body_is_document

    def _confirm(self) -> None:
        if not (self.values[CONFIRM] or self.values[CONFIRM_PVC]):
            raise InvalidValue("a restore replaces the cluster's desired state: confirm it with "
                               "yes_i_really_mean_it; nothing was changed")

    @accepts(CONFIRM, CONFIRM_PVC, CLUSTER_DATA, *TASK_VALUES)
    async def post(self) -> None:
        self._confirm()
        view = self.ctx.view
        check_restore_allowed(view, [*read_tasks(view), *read_storage_tasks(view)])
        data = self.request.body if self._document_in_body() else \
            (self.values[CLUSTER_DATA] or "").encode()
        if not data.strip():
            raise InvalidValue("give the backup document: the value cluster_data, or the whole "
                               "body with Content-Type: application/json; nothing was changed")
        backup = await asyncio.to_thread(_checked, view, data)
        pre_restore_folder(self.ctx.backup_paths)
        pipe = UploadPipe(expected=len(data), capacity=len(data) + 1)
        pipe.write(data)
        pipe.finish()
        uploads, opened = self.ctx.uploads, []

        def hand_over(task: TaskRecord) -> None:
            uploads.open(task.id, pipe)
            opened.append(task.id)

        try:
            record = await create_task(
                self, TASK_NAME, {"summary": backup.summary(), "backup_created": backup.created,
                                  "backup_primary": backup.primary_node},
                [RESTORE_OBJECT], run_on=self.ctx.node_name, before_commit=hand_over)
        except BaseException:
            for task_id in opened:  # the task was not created: nobody takes the document
                uploads.discard(task_id)
            raise
        await answer_task(self, record)

    @accepts(CONFIRM, CONFIRM_PVC)
    async def delete(self) -> None:
        self._confirm()
        view = self.ctx.view
        entry = view.cache.entry(view.paths.restore_marker)
        if entry is None:
            raise InvalidValue("no restore marker is set: there is no unfinished restore to "
                               "clear")
        running = busy_task([RESTORE_OBJECT], read_tasks(view))
        if running is not None:
            raise Conflict(f"the restore task {running.id} is {running.state}: its marker goes "
                           "when it ends; nothing was changed")
        await self.commit([Op.delete(view.paths.restore_marker, entry.version)])
        self.message("Removed the restore marker: the cluster runs on the state it has; the "
                     "unfinished restore was not completed")


def _checked(view: ClusterView, data: bytes) -> ClusterBackup:
    """The document checked completely (in a thread: ACL rules are parsed by `nft`)."""
    backup = check_backup(parse_backup(data), cluster_schema_version(view), view.node_names(),
                          validate_rule)
    check_not_oversized(backup.znodes)
    return backup


ROUTES = [route("/backup", BackupHandler), route("/restore", RestoreHandler)]
