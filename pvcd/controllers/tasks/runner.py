"""The task runner of one node: claims the tasks it should run and carries them out.

A task is this node's when it is `pending` and either names this node (`run_on`, e.g. a VM's
node) or follows the primary (`follows_primary`) while this node is primary. The runner claims
it with a compare-and-set (`running`, `executor` = `<node>/<pid>`, `run_on` = this node), runs
its kind's `run` on a worker of the `tasks` controller (`tasks.workers` at once) and records
the outcome: `success` with message and result, or `failure` after removing its artifacts in
reverse order (`cleanup`).

Overlapping tasks (an object in common) run one at a time in id order: a task waits while an
earlier unfinished one shares an object (looked at again every `BLOCKED_RECHECK` s and whenever
a task changes).

Races named. (1) Two nodes see the same pending task: the claim is a compare-and-set, one wins.
(2) An earlier overlapping task created after this node judged its task free: ids come from the
creating node's clock, so only clocks that disagree (or one millisecond shared) can make that
happen; the API refuses a client's task on a busy object anyway (`pvcd.api.tasks`). (3) A
primary handover: the old primary stops claiming at once (`handover`); its running tasks may
finish within `tasks.handover_wait`, then they are stopped and end `Interrupted`, cleaned up
here. (4) The primary declared a task of this node interrupted while it still ran (the session
had expired): the handler is stopped at its next report, and the primary removes its artifacts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from pvcd.controllers.base import DONE, Result
from pvcd.controllers.tasks.cleanup import failure_message, undo_artifacts
from pvcd.controllers.tasks.context import TaskContext, TaskStopped
from pvcd.controllers.tasks.registry import TaskOutcome, TaskRegistry
from pvcd.domain.errors import Conflict, InvalidValue, PvcError
from pvcd.domain.tasks import TaskRecord, blocking_task
from pvcd.state.store import Op, Store
from pvcd.state.tasks import read_tasks
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

BLOCKED_RECHECK = 1.0  # seconds between looks at a task waiting behind an overlapping one
TAKEN_OVER = "taken-over"  # key prefix: a task running here changed under it


def task_key(task_id: str) -> str:
    return f"task/{task_id}"


class TaskRunner:
    """Claims and runs this node's tasks (module docstring)."""

    def __init__(self, node: str, view: ClusterView, store: Store, registry: TaskRegistry,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 executor: str | None = None) -> None:
        self.node = node
        self.view = view
        self.store = store
        self.registry = registry
        self.clock = clock
        self.monotonic = monotonic
        self.executor = executor or f"{node}/{os.getpid()}"
        self.primary_active = False  # set while this node is primary (`TaskService`)
        self._running: dict[str, TaskContext] = {}
        self._guard = threading.Lock()

    # which tasks are this node's
    def eligible(self, record: TaskRecord) -> bool:
        if record.state != "pending":
            return False
        return self.primary_active if record.follows_primary else record.run_on == self.node

    def keys(self) -> list[str]:
        return [task_key(t.id) for t in read_tasks(self.view) if self.eligible(t)]

    def key_of_path(self, path: str) -> str | None:
        prefix = self.view.paths.tasks + "/"
        task_id = path[len(prefix):] if path.startswith(prefix) else ""
        doc = self.view.cache.get(path)
        if not task_id or "/" in task_id or not isinstance(doc, dict) or \
                doc.get("state") != "pending":
            return None
        return task_key(task_id) if self.eligible(TaskRecord.from_doc(doc)) else None

    def key_of_running_path(self, path: str) -> str | None:
        """A change of a task running here (was it taken over?), for the `tasks-stop`
        controller: its workers are never all busy running tasks."""
        task_id = path[len(self.view.paths.tasks) + 1:]
        with self._guard:
            return f"{TAKEN_OVER}/{task_id}" if task_id in self._running else None

    def running(self) -> list[str]:
        with self._guard:
            return sorted(self._running)

    # handover
    def handover(self, wait: float) -> None:
        """This node stops being primary: claim nothing for the primary from now on; stop the
        primary's running tasks here once `wait` seconds are over."""
        self.primary_active = False
        with self._guard:
            contexts = [c for c in self._running.values() if c.record.follows_primary]
        if not contexts:
            return

        def stop_late() -> None:
            if self.primary_active:
                return  # primary again meanwhile: they may go on
            for context in contexts:
                context.stop(f"stopped {wait:g} s after a primary handover "
                             "(tasks.handover_wait)")

        timer = threading.Timer(wait, stop_late)
        timer.daemon = True
        timer.start()

    # reconcile
    def reconcile_running(self, key: str) -> Result:
        """Stop a task running here that the primary declared interrupted (or that is gone)."""
        task_id = key.partition("/")[2]
        with self._guard:
            context = self._running.get(task_id)
        doc = self.view.cache.get(self.view.paths.task(task_id))
        if context is not None and (not isinstance(doc, dict) or doc.get("state") != "running"
                                    or doc.get("executor") != self.executor):
            context.taken_over = True
            context.stop("the task was declared interrupted while it ran here")
        return DONE

    def reconcile(self, key: str) -> Result:
        task_id = key.partition("/")[2]
        path = self.view.paths.task(task_id)
        entry = self.view.cache.entry(path)
        if entry is None or not isinstance(entry.doc, dict):
            return DONE
        record = TaskRecord.from_doc(entry.doc)
        with self._guard:
            if task_id in self._running:
                return DONE
        if not self.eligible(record):
            return DONE
        blocker = blocking_task(record, read_tasks(self.view))
        if blocker is not None:
            log.debug("event=task-waiting task=%s behind=%s", task_id, blocker.id)
            return Result(requeue_after=BLOCKED_RECHECK)
        now = self.clock()
        record.state, record.executor, record.run_on = "running", self.executor, self.node
        record.started = record.updated = now
        try:
            version = self.store.commit([Op.set(path, record.to_doc(), entry.version)])[0].version
        except Conflict:
            return DONE  # claimed, cancelled or changed meanwhile: the watch brings it back
        log.info("event=task-start node=%s task=%s name=%s", self.node, task_id, record.name)
        context = TaskContext(record, path, version, self.store, self.executor, self.clock,
                              self.monotonic)
        with self._guard:
            self._running[task_id] = context
        try:
            self._run(context)
        finally:
            with self._guard:
                self._running.pop(task_id, None)
        return DONE

    def _run(self, context: TaskContext) -> None:
        record = context.record
        kind = self.registry.get(record.name)
        started = self.monotonic()
        try:
            if kind is None:
                raise InvalidValue(f"node {self.node} has no task kind {record.name!r} (known: "
                                   f"{', '.join(self.registry.names()) or 'none'})")
            outcome = kind.run(context)
            context.check()
        except TaskStopped as exc:
            if context.taken_over:
                log.warning("event=task-taken-over node=%s task=%s", self.node, record.id)
                return  # the primary removes its artifacts
            self._fail(context, "Interrupted", f"interrupted: {exc}")
            return
        except PvcError as exc:
            self._fail(context, type(exc).__name__, str(exc))
            return
        except Exception as exc:  # a bug or an unexpected failure: reported, the node goes on
            log.exception("event=task-error node=%s task=%s", self.node, record.id)
            self._fail(context, "BackendError", f"internal error: {exc!r}")
            return
        self._succeed(context, outcome)
        log.info("event=task-success node=%s task=%s name=%s seconds=%.3f", self.node,
                 record.id, record.name, self.monotonic() - started)

    def _succeed(self, context: TaskContext, outcome: TaskOutcome) -> None:
        record = context.record
        record.state, record.message, record.result = "success", outcome.message, \
            dict(outcome.result)
        record.finished = self.clock()
        context.commit()

    def _fail(self, context: TaskContext, error: str, reason: str) -> None:
        record = context.record
        log.info("event=task-failure node=%s task=%s name=%s error=%s message=%s", self.node,
                 record.id, record.name, error, reason)
        context.flush()
        left = undo_artifacts(record, self.registry.get(record.name), context.commit)
        record.state, record.error = "failure", error
        record.message = failure_message(reason, left)
        record.finished = self.clock()
        context.commit()
