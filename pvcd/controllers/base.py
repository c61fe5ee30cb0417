"""The controller framework: level-triggered reconciliation over a per-key work queue.

The contract is controller-runtime's: watch callbacks only `enqueue(key)`; a worker calls
`reconcile(key)`, which re-reads desired and actual state, acts idempotently and returns a
`Result` (done, or requeue after N seconds). A key is never reconciled by two workers at once;
a key enqueued while it is being reconciled runs once more afterwards (so no event is lost).
An exception backs the key off exponentially; `TemporaryError` says "retry later" without a
stack trace, anything else is logged with one. A periodic resync re-enqueues every known key, so
a missed event delays convergence but never prevents it.

A key waits for at most one delayed reconcile, the earliest asked for: a reconcile re-reads
everything, so the one that runs first decides what comes next. (One delayed entry per request
would add one for every event of a key that also requeues itself, and none would ever go away:
a fencing primary, whose keys see a keepalive every second and requeue for the dead-after time,
reconciled each key ever more often, without bound.)
"""

from __future__ import annotations

import bisect
import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# upper bounds (seconds) of the reconcile-duration histogram each controller keeps
RECONCILE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0, 30.0, 120.0)


class TemporaryError(Exception):
    """The reconcile could not finish now (a backend busy, a peer not ready); retry later."""


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


DONE = Result()


class Controller:
    """Runs `reconcile(key)` for enqueued keys on `workers` threads."""

    def __init__(self, name: str, reconcile: Callable[[str], Result | None],
                 list_keys: Callable[[], Iterable[str]] | None = None,
                 workers: int = 1, resync_interval: float = 60.0,
                 backoff_base: float = 0.05, backoff_max: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._reconcile = reconcile
        self._list_keys = list_keys
        self._workers = workers
        self._resync_interval = resync_interval
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[str] = []          # ready keys, FIFO
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()        # enqueued while active
        self._delayed: list[tuple[float, str]] = []  # heap of (due, key)
        self._due: dict[str, float] = {}  # each key's one live entry in `_delayed`
        self._failures: dict[str, int] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._next_resync = 0.0
        self.reconciles = 0
        self.errors = 0
        # reconcile durations: a count per RECONCILE_BUCKETS bound (+Inf last) and their sum
        self._duration_counts = [0] * (len(RECONCILE_BUCKETS) + 1)
        self._duration_sum = 0.0

    # public
    def start(self) -> None:
        self._stopping = False
        self._next_resync = self._clock()
        for i in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the workers, waiting up to `timeout` s for each; True when all have ended (a
        worker still inside a reconcile ends after it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        ended = not any(thread.is_alive() for thread in self._threads)
        self._threads.clear()
        return ended

    def enqueue(self, key: str) -> None:
        with self._cond:
            self._enqueue_locked(key)

    def enqueue_after(self, key: str, delay: float) -> None:
        due = self._clock() + delay
        with self._cond:
            if self._due.get(key, due + 1.0) <= due:
                return  # an earlier reconcile comes first and decides again
            self._due[key] = due  # a later entry of the key, if any, is now stale
            heapq.heappush(self._delayed, (due, key))
            self._cond.notify()

    def resync(self) -> None:
        with self._cond:
            self._next_resync = self._clock()
            self._cond.notify()

    def idle(self) -> bool:
        with self._cond:
            return not (self._queue or self._active)

    # internals
    def _enqueue_locked(self, key: str) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._cond.notify()

    def _next_key(self) -> str | None:
        with self._cond:
            while not self._stopping:
                now = self._clock()
                if self._list_keys is not None and now >= self._next_resync:
                    self._next_resync = now + self._resync_interval
                    self._cond.release()
                    try:
                        keys = list(self._list_keys())
                    except Exception:
                        log.exception("event=resync-failed controller=%s", self.name)
                        keys = []
                    finally:
                        self._cond.acquire()
                    for key in keys:
                        self._enqueue_locked(key)
                while self._delayed and self._delayed[0][0] <= now:
                    due, key = heapq.heappop(self._delayed)
                    if self._due.get(key) == due:
                        del self._due[key]
                        self._enqueue_locked(key)
                for index, key in enumerate(self._queue):
                    if key not in self._active:
                        del self._queue[index]
                        self._queued.discard(key)
                        self._active.add(key)
                        return key
                waits = [1.0]
                if self._delayed:
                    waits.append(self._delayed[0][0] - now)
                if self._list_keys is not None:
                    waits.append(self._next_resync - now)
                self._cond.wait(max(0.001, min(waits)))
            return None

    def _work(self) -> None:
        while True:
            key = self._next_key()
            if key is None:
                return
            delay: float | None = None
            started = time.perf_counter()
            try:
                result = self._reconcile(key) or DONE
                self._failures.pop(key, None)
                delay = result.requeue_after
            except TemporaryError as exc:
                delay = self._backoff(key)
                log.info("event=reconcile-retry controller=%s key=%s reason=%s delay=%.2f",
                         self.name, key, exc, delay)
            except Exception:
                delay = self._backoff(key)
                self.errors += 1
                log.exception("event=reconcile-error controller=%s key=%s delay=%.2f",
                              self.name, key, delay)
            finally:
                self.reconciles += 1
                self._report(time.perf_counter() - started)
                with self._cond:
                    self._active.discard(key)
                    if key in self._dirty:
                        self._dirty.discard(key)
                        self._enqueue_locked(key)
                    self._cond.notify_all()
            if delay is not None:
                self.enqueue_after(key, delay)

    def _report(self, seconds: float) -> None:
        with self._cond:
            self._duration_counts[bisect.bisect_left(RECONCILE_BUCKETS, seconds)] += 1
            self._duration_sum += seconds

    def durations(self) -> tuple[list[tuple[float, int]], float]:
        """The reconcile-duration histogram: (upper bound, cumulative count) per bucket, the
        last bound infinite, and the sum of all durations (read by the metrics at a scrape)."""
        with self._cond:
            counts, total = list(self._duration_counts), self._duration_sum
        cumulative, buckets = 0, []
        for bound, count in zip([*RECONCILE_BUCKETS, float("inf")], counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return buckets, total

    def _backoff(self, key: str) -> float:
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        return float(min(self._backoff_max, self._backoff_base * (2 ** (count - 1))))


@dataclass(frozen=True)
class Watch:
    """Which cache changes feed a controller: `key_of(path)` is enqueued for every changed
    path below `prefix` (None: nothing to do for that path)."""

    prefix: str
    key_of: Callable[[str], str | None]


@dataclass(frozen=True)
class PrimaryService:
    """Something only the primary runs: `start` may raise to be retried; `stop` must not fail."""

    name: str
    start: Callable[[], None]
    stop: Callable[[], None]


@dataclass
class Wiring:
    """What one subsystem (VMs, networks, storage, ...) adds to a node daemon.

    Built by the subsystem's `build_*` function from explicit dependencies and handed to the
    composition root (`pvcd.daemon`), which starts and stops the controllers, feeds them the
    cache changes their watches name, and runs the services only while this node is primary.
    """

    controllers: list[tuple[Controller, list[Watch]]] = field(default_factory=list)
    services: list[PrimaryService] = field(default_factory=list)

    def add(self, controller: Controller, *watches: Watch) -> Controller:
        self.controllers.append((controller, list(watches)))
        return controller

    def extend(self, other: Wiring) -> None:
        self.controllers.extend(other.controllers)
        self.services.extend(other.services)
