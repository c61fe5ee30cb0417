"""The autobackup schedule (extensions.md §5.5): while this node is primary, start the task
`cluster.autobackup` at each minute the configured cron expression names (local time).

Missed schedules are not caught up: the scheduler fires only for scheduled minutes that pass
while it watches (after `checked`, the last moment it looked, which starts when the primary
service starts), so a primary that was down, or a schedule changed to a minute already past
today, waits for the next one. It looks again at each due time and at least every
`CHECK_EVERY` seconds (and whenever `cluster/autobackup` changes).

A scheduled minute while a run is still going is skipped (one run at a time), with a log line.
The task is created together with `scheduled_for` in `cluster/autobackup`, a compare-and-set:
after a handover at that minute the new primary sees `scheduled_for` and does not start it
again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pvcd.controllers.base import DONE, Controller, PrimaryService, Result, Watch, Wiring
from pvcd.domain.autobackup import CronSchedule
from pvcd.domain.errors import InvalidValue, PvcError
from pvcd.state.autobackup import read_autobackup, run_in_progress, scheduled_run_ops
from pvcd.state.store import Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

KEY = "autobackup"
CHECK_EVERY = 30.0  # seconds between two looks at most


class AutobackupScheduler:
    def __init__(self, node: str, view: ClusterView, store: Store,
                 clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.view = view
        self.store = store
        self.clock = clock
        self.checked: float | None = None  # None: not primary
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        return [KEY]

    def key_of_path(self, path: str) -> str | None:
        return KEY if path == self.view.paths.autobackup else None

    def start(self) -> None:
        with self._lock:
            self.checked = self.clock()

    def stop(self) -> None:
        with self._lock:
            self.checked = None

    def reconcile(self, key: str) -> Result:
        with self._lock:
            if self.checked is None:
                return DONE
            now = self.clock()
            since, self.checked = self.checked, now
            wait = self._tick(since, now)
        return Result(requeue_after=max(1.0, min(wait, CHECK_EVERY)))

    def _tick(self, since: float, now: float) -> float:
        """Start the run if a scheduled minute passed in (`since`, `now`]; seconds until the
        next one."""
        config, doc, version = read_autobackup(self.view)
        if not config.enabled or version is None:
            return CHECK_EVERY
        try:
            schedule = CronSchedule.parse(config.schedule)
        except InvalidValue as exc:
            log.warning("event=autobackup-schedule-invalid error=%s", exc)
            return CHECK_EVERY
        scheduled = doc.get("scheduled_for")
        after = max(since, float(scheduled)) if isinstance(scheduled, (int, float)) else since
        due = schedule.next_run(after)
        if due is None or due > now:
            return (due - now) if due is not None else CHECK_EVERY
        busy = run_in_progress(self.view)
        if busy is not None:
            log.warning("event=autobackup-skipped due=%s reason=run %s still %s", due, busy.id,
                        busy.state)
        else:
            try:
                self.store.commit(scheduled_run_ops(self.view, config, doc, version, self.node,
                                                    now, due))
                log.info("event=autobackup-scheduled due=%s", due)
            except PvcError as exc:  # a PUT or another primary came first: looked at again
                log.info("event=autobackup-schedule-not-written error=%s", exc)
        following = schedule.next_run(now)
        return (following - now) if following is not None else CHECK_EVERY


def build_autobackup_schedule(node: str, view: ClusterView, store: Store, coordinator: bool,
                              clock: Callable[[], float] = time.time) -> Wiring:
    """On coordinators: the `autobackup` controller and the primary service `autobackup`."""
    wiring = Wiring()
    if not coordinator:
        return wiring
    scheduler = AutobackupScheduler(node, view, store, clock)
    controller = wiring.add(Controller("autobackup", scheduler.reconcile, scheduler.keys,
                                       resync_interval=CHECK_EVERY),
                            Watch(view.paths.autobackup, scheduler.key_of_path))

    def start() -> None:
        scheduler.start()
        controller.enqueue(KEY)

    wiring.services.append(PrimaryService("autobackup", start, scheduler.stop))
    return wiring
