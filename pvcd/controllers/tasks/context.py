"""What a running task's handler gets: its values, and the way to report progress, artifacts
and log lines (`TaskContext`).

Every report goes into the task's znode with a compare-and-set from the executor's thread.
Progress and log lines are written at most once a second (`PROGRESS_INTERVAL`; one held back
is written when the second is over, or with the next artifact or the result); an artifact is
written at once, before the handler goes on, so a crash right after it still leaves it listed
for the primary's cleanup.

Races named. The primary may have declared the task interrupted meanwhile (this node's session
expired, its `alive` went away): the next write finds the task no longer running under this
executor, and the handler is stopped (`TaskStopped`, `taken_over`): the primary removes the
artifacts, not this node. After a primary handover the old primary's running tasks are stopped
when `tasks.handover_wait` is over (`stop()`): the handler's next report raises `TaskStopped`
and its runner removes the artifacts itself. A handler checks `stopped` (or calls `check()`)
in long loops that report nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pvcd.domain.errors import PvcError
from pvcd.domain.tasks import Artifact, TaskRecord
from pvcd.state.store import Op, Store

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 1.0  # seconds between two progress writes at most


class TaskStopped(Exception):
    """The task must stop now: its handover wait is over, or the primary took it over."""


class TaskContext:
    """A running task as its handler sees it (see the module docstring)."""

    def __init__(self, record: TaskRecord, path: str, version: int, store: Store,
                 executor: str, clock: Callable[[], float],
                 monotonic: Callable[[], float]) -> None:
        self.record = record
        self.path = path
        self.version = version
        self.store = store
        self.executor = executor
        self.clock = clock
        self.monotonic = monotonic
        self.stopped = threading.Event()
        self.taken_over = False  # the primary declared it interrupted: cleanup is its job
        self.stop_reason = ""
        self._lock = threading.Lock()
        self._written = monotonic()
        self._dirty = False
        self._flusher: threading.Timer | None = None

    @property
    def task_id(self) -> str:
        return self.record.id

    @property
    def args(self) -> dict[str, Any]:
        return self.record.args

    # what the handler calls
    def progress(self, current: int, total: int, message: str) -> None:
        """Steps done of steps planned, and what it does now (an upload counts bytes)."""
        self.check()
        with self._lock:
            progress = self.record.progress
            progress.current, progress.total, progress.message = int(current), int(total), \
                message
            self._write(force=False)

    def artifact(self, kind: str, ref: str) -> None:
        """Something this task has just created: removed again (by its kind's `undo`, in
        reverse order) if the task fails. Written at once."""
        with self._lock:
            self.record.artifacts.append(Artifact(kind, ref))
            self._write(force=True)
        self.check()

    def log(self, line: str) -> None:
        """A line of the task's log (the last 100 are kept, each cut at 300 characters)."""
        self.check()
        with self._lock:
            self.record.add_log(line)
            self._write(force=False)

    def check(self) -> None:
        """Raise `TaskStopped` once the task has been stopped."""
        if self.stopped.is_set():
            raise TaskStopped(self.stop_reason or "stopped")

    # what the runner calls
    def stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.stopped.set()

    def flush(self) -> None:
        """Write what the throttle held back."""
        with self._lock:
            self._flusher = None
            if self._dirty and self.record.state == "running":
                self._write(force=True)

    def commit(self, extra: list[Op] | None = None) -> bool:
        """Write the record now (with `extra` ops in the same transaction); False when the task
        is no longer this executor's (then nothing is written and it is stopped)."""
        with self._lock:
            return self._commit(extra or [])

    def hand_over(self, ops: list[Op]) -> bool:
        """Write `ops` and the record with its artifact list emptied, in one transaction: what
        the task made belongs from then on to what `ops` record (a crash right after cannot
        make the primary undo it). False when not written (the artifacts are kept)."""
        with self._lock:
            artifacts = list(self.record.artifacts)
            self.record.artifacts = []
            if self._commit(list(ops)):
                return True
            self.record.artifacts = artifacts
            return False

    def _write(self, force: bool) -> None:
        waited = self.monotonic() - self._written
        if not force and waited < PROGRESS_INTERVAL:
            self._dirty = True
            if self._flusher is None:  # the last report is written even if none follows
                self._flusher = threading.Timer(PROGRESS_INTERVAL - waited, self.flush)
                self._flusher.daemon = True
                self._flusher.start()
            return
        self._commit([])

    def _commit(self, extra: list[Op]) -> bool:
        record = self.record
        record.updated = self.clock()
        try:
            self.version = self.store.commit(
                [*extra, Op.set(self.path, record.to_doc(), self.version)])[-1].version
        except PvcError as exc:
            if self._still_ours():
                log.info("event=task-progress-not-written task=%s error=%s", record.id, exc)
                self._dirty = True
                return False
            self.taken_over = True
            self.stop("the task was taken over (declared interrupted) while it ran here")
            return False
        self._written = self.monotonic()
        self._dirty = False
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        return True

    def _still_ours(self) -> bool:
        """After a lost write: whether the task still runs under this executor (re-read from
        ZooKeeper; its version is taken for the next write)."""
        try:
            current = self.store.read_optional(self.path)
        except PvcError:
            return True  # ZooKeeper unreachable: nothing is known, keep going
        if current is None:
            return False
        doc, stat = current
        if not isinstance(doc, dict) or doc.get("state") != "running" or \
                doc.get("executor") != self.executor:
            return False
        self.version = stat.version
        return True
