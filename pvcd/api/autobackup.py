"""`GET`, `PUT` and `POST /vm/autobackup` (extensions.md §5.5): the autobackup configuration in
`cluster/autobackup`, and a run now (task `cluster.autobackup`).

The route comes before `/vm/<vm>` in the route table (`pvcd.api.app`), which is why
`autobackup` and `automirror` are reserved VM names. A `PUT` is checked as a whole before
anything is written (`AutobackupConfig.updated`): the root path by the host path rule of every
backup path (inside `backup.allowed_paths` once symlinks are resolved: a fuzzer cannot point
the schedule anywhere else), the suffix one folder name, the schedule a strict 5-field cron
expression. The run itself re-checks the path (`pvcd.controllers.autobackup`).
"""

from __future__ import annotations

from typing import Any

from pvcd.api.base import BaseHandler
from pvcd.api.routing import route
from pvcd.api.tasks import TASK_VALUES, start_task
from pvcd.api.values import accepts, boolean, flag, integer, text, texts, value
from pvcd.domain.autobackup import CronSchedule, check_suffix
from pvcd.domain.errors import Conflict, InvalidValue
from pvcd.domain.vm_meta import check_tag_name
from pvcd.drivers.backup_files import resolve_host_path
from pvcd.state.autobackup import (
    TASK_NAME,
    last_run,
    read_autobackup,
    run_in_progress,
    run_task,
)
from pvcd.state.store import Op

ENABLED = boolean("enabled", "Run autobackup on its schedule.", default=None)
ROOT_PATH = text("backup_root_path", "The folder backups go into: <backup_root_path>"
                 "<backup_root_suffix>/<vm>/ab<datestring>/. An absolute directory on the "
                 "primary inside backup.allowed_paths (after symlinks are resolved).")
ROOT_SUFFIX = value("backup_root_suffix", "Appended to backup_root_path: empty, or '/' and one "
                    "folder name (made if missing).", check_suffix)
TAGS = texts("backup_tags", "A VM with at least one of these tags is backed up.",
             check_tag_name)
SCHEDULE = value("schedule", "When runs start: a 5-field cron expression (minute hour "
                 "day-of-month month day-of-week; numbers, *, a-b, /step, lists) in the "
                 "primary's local time, e.g. '0 2 * * *'.",
                 lambda raw: CronSchedule.parse(raw).text)
FULL_INTERVAL = integer("full_interval", "A full backup after this many backups (the ones "
                        "between are incremental from the last full).", minimum=1,
                        maximum=1000)
FULL_RETENTION = integer("full_retention", "How many full backups (with their incrementals) "
                         "are kept per VM.", minimum=1, maximum=1000)
FORCE_FULL = flag("force_full", "Take full backups of every VM in this run.")
EMAIL = texts("email_recipients", "Not supported by pvcd (PVC 1.0 mails a report): given, the "
              "request is refused.")


class AutobackupHandler(BaseHandler):
    def get(self) -> None:
        view = self.ctx.view
        config, doc, _ = read_autobackup(view)
        next_run = None
        if config.enabled:
            next_run = CronSchedule.parse(config.schedule).next_run(self.ctx.clock())
        latest = doc.get("latest")
        self.reply({**config.to_doc(), "last_run": last_run(view, doc), "next_run": next_run,
                    "latest": latest if isinstance(latest, dict) else {}})

    @accepts(ENABLED, ROOT_PATH, ROOT_SUFFIX, TAGS, SCHEDULE, FULL_INTERVAL, FULL_RETENTION)
    async def put(self) -> None:
        view = self.ctx.view
        config, doc, version = read_autobackup(view)
        changes: dict[str, Any] = {}
        for declared, field in ((ENABLED, "enabled"), (ROOT_SUFFIX, "backup_root_suffix"),
                                (SCHEDULE, "schedule"), (FULL_INTERVAL, "full_interval"),
                                (FULL_RETENTION, "full_retention")):
            if self.values.given(declared):
                changes[field] = self.values[declared]
        if self.values.given(ROOT_PATH):
            changes["backup_root_path"] = str(resolve_host_path(
                self.values[ROOT_PATH] or "", self.ctx.backup_paths, "backup_root_path"))
        if self.values.given(TAGS):
            tags: list[str] = self.values[TAGS]
            changes["backup_tags"] = tuple(dict.fromkeys(tags))
        if not changes:
            raise InvalidValue("give at least one of enabled, backup_root_path, "
                               "backup_root_suffix, backup_tags, schedule, full_interval, "
                               "full_retention")
        new = config.updated(changes)
        if new.enabled and new.backup_root_path:  # the path rule also when only enabling
            resolve_host_path(new.backup_root_path, self.ctx.backup_paths, "backup_root_path")
        path = view.paths.autobackup
        body = {**doc, **new.to_doc()}
        await self.commit([Op.set(path, body, version) if version is not None
                           else Op.create(path, body)])
        self.message(f"Set the autobackup configuration ({', '.join(sorted(changes))})")

    @accepts(FORCE_FULL, EMAIL, *TASK_VALUES)
    async def post(self) -> None:
        view = self.ctx.view
        if self.values[EMAIL]:
            raise InvalidValue("email_recipients is not supported by pvcd: follow the run's "
                               "task, or its faults AUTOBACKUP_FAILED_<VM>")
        config, _, _ = read_autobackup(view)
        if not config.enabled:
            raise InvalidValue("autobackup is not enabled: set it first (PUT /vm/autobackup "
                               "with enabled, backup_root_path and backup_tags)")
        resolve_host_path(config.backup_root_path or "", self.ctx.backup_paths,
                          "backup_root_path")
        busy = run_in_progress(view)
        if busy is not None:
            raise Conflict(f"an autobackup run is in progress: task {busy.id} ({busy.state}); "
                           "try again when it has finished")
        args, objects = run_task(view, config, self.values[FORCE_FULL], "api")
        await start_task(self, TASK_NAME, args, objects)


ROUTES = [route("/vm/autobackup", AutobackupHandler)]
