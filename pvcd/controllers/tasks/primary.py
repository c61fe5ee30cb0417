"""The primary's care of tasks: interrupted tasks, their cleanup, and the retention.

- **Interrupted**: a `running` task whose executor is gone (the `alive` znode of its node is
  gone, or names another pid: the daemon restarted) is set to `failure` with `error:
  Interrupted` and `cleanup` by one compare-and-set; tasks are never resumed.
- **Cleanup**: a failed task with `cleanup` set (interrupted, or cancelled by the API while it
  held reservations) has its artifacts removed in reverse order by its kind's `undo`, then
  `cleanup` is cleared and the message says what could not be removed. A primary that dies in
  the middle leaves `cleanup` set and the rest listed: the next primary goes on.
- **Retention**: finished tasks older than `tasks.retention`, and beyond the newest
  `tasks.keep`, are deleted (checked every `EXPIRY_INTERVAL` s at most).

Only the primary does this (`active`, set with the role by `TaskService`). The executor's
liveness is judged from the cache, fed by the watch on `nodes/`: an `alive` znode deleted
enqueues the node's running tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pvcd.config.schema import TasksSection
from pvcd.controllers.base import DONE, Result
from pvcd.controllers.tasks.cleanup import failure_message, undo_artifacts
from pvcd.controllers.tasks.registry import TaskRegistry
from pvcd.controllers.tasks.runner import task_key
from pvcd.domain.errors import Conflict, PvcError
from pvcd.domain.tasks import TaskRecord, expired
from pvcd.state.store import Op, Store
from pvcd.state.tasks import read_tasks
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

EXPIRE_KEY = "expire"
EXPIRY_INTERVAL = 60.0  # seconds


class TaskJanitor:
    """The primary's duties over tasks (module docstring)."""

    def __init__(self, node: str, view: ClusterView, store: Store, registry: TaskRegistry,
                 config: TasksSection, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.view = view
        self.store = store
        self.registry = registry
        self.config = config
        self.clock = clock
        self.active = False

    def keys(self) -> list[str]:
        return [EXPIRE_KEY, *(task_key(t.id) for t in read_tasks(self.view)
                              if t.state == "running" or t.cleanup)]

    def key_of_task_path(self, path: str) -> str | None:
        prefix = self.view.paths.tasks + "/"
        task_id = path[len(prefix):] if path.startswith(prefix) else ""
        doc = self.view.cache.get(path)
        if not task_id or "/" in task_id or not isinstance(doc, dict):
            return None
        return task_key(task_id) if doc.get("state") == "running" or doc.get("cleanup") \
            else None

    def key_of_node_path(self, path: str) -> str | None:
        prefix = self.view.paths.nodes + "/"
        if not path.startswith(prefix) or not path.endswith("/alive"):
            return None
        return "node/" + path[len(prefix):].split("/", 1)[0]

    def executor_gone(self, executor: str | None) -> bool:
        """Whether the process `<node>/<pid>` no longer runs its node's daemon."""
        node, _, pid = (executor or "").partition("/")
        alive = self.view.cache.get(self.view.paths.node_alive(node)) if node else None
        return not isinstance(alive, dict) or str(alive.get("pid")) != pid

    # reconcile
    def reconcile(self, key: str) -> Result:
        if not self.active:
            return DONE
        if key == EXPIRE_KEY:
            self._expire()
            return Result(requeue_after=min(EXPIRY_INTERVAL, self.config.retention))
        kind, _, name = key.partition("/")
        if kind == "node":
            for record in read_tasks(self.view):
                if record.state == "running" and (record.executor or "").startswith(name + "/"):
                    self._check(record.id)
        elif kind == "task":
            self._check(name)
        return DONE

    def _check(self, task_id: str) -> None:
        path = self.view.paths.task(task_id)
        entry = self.view.cache.entry(path)
        if entry is None or not isinstance(entry.doc, dict):
            return
        record, version = TaskRecord.from_doc(entry.doc), entry.version
        if record.state == "running" and self.executor_gone(record.executor):
            record.state, record.error, record.cleanup = "failure", "Interrupted", True
            record.message = (f"interrupted: its executor {record.executor} is gone (node "
                              "session ended or daemon restarted); tasks are never resumed")
            record.finished = record.updated = self.clock()
            try:
                version = self.store.commit([Op.set(path, record.to_doc(), version)])[0].version
            except Conflict:
                return  # it changed meanwhile (finished after all): the watch brings it back
            log.warning("event=task-interrupted task=%s name=%s executor=%s", record.id,
                        record.name, record.executor)
        if record.cleanup:
            self._clean(path, record, version)

    def _clean(self, path: str, record: TaskRecord, version: int) -> None:
        versions = [version]

        def save() -> bool:
            try:
                versions[0] = self.store.commit(
                    [Op.set(path, record.to_doc(), versions[0])])[0].version
                return True
            except PvcError as exc:
                log.info("event=task-cleanup-not-written task=%s error=%s", record.id, exc)
                return False

        left = undo_artifacts(record, self.registry.get(record.name), save)
        record.cleanup = False
        record.message = failure_message(record.message, left)
        record.updated = self.clock()
        save()

    def _expire(self) -> None:
        paths = self.view.paths
        gone = expired(read_tasks(self.view), self.clock(), self.config.retention,
                       self.config.keep)
        for record in gone:
            entry = self.view.cache.entry(paths.task(record.id))
            if entry is None:
                continue
            try:
                self.store.commit([Op.delete(paths.task(record.id), entry.version)])
            except Conflict:
                pass  # changed or deleted meanwhile: the next round decides again
        if gone:
            log.info("event=tasks-expired node=%s count=%d", self.node, len(gone))
