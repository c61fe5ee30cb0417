"""Rounds of node health checks (extensions.md §8.3): every `health.interval`, all checks at
once, each within its limit, the results written to `nodes/<node>/health`.

A check is a named function that returns a `Finding` (its delta, message and data). The round
runs each on a thread of its own and waits for it until the check's limit (10 s; `lbvt` 5 s);
one that has not answered by then reports its `on_timeout` finding ("timed out", delta 10). Its
thread cannot be killed: it stays the check's one run in flight, and the next rounds report the
check timed out again, without starting another, until it returns. So a hung check (a libvirt
call that never answers, an NFS-stuck `smartctl`) holds one thread, never one per round.

The round is the reconcile of a single key (`health/<node>`) on a controller of its own, which
requeues it after the interval: the daemon starts and stops it with the other controllers.
`HealthWriter` is the document's one writer in this process (compare-and-set on the version it
last wrote; a conflict re-reads it). It writes `health: null` before the first round and on a
clean stop (`clear`), as the spec says health is null while the node is not running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pvcd.controllers.base import Result
from pvcd.domain.errors import Conflict
from pvcd.domain.health import HealthCheck, NodeHealth
from pvcd.domain.health_checks import CHECK_LIMIT, TIMED_OUT, TIMED_OUT_DELTA
from pvcd.state.store import Op, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """What one run of a check found."""

    delta: int
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """A named check: `run` answers within `limit` seconds, or `on_timeout` is reported."""

    name: str
    run: Callable[[], Finding]
    limit: float = CHECK_LIMIT
    on_timeout: Finding = Finding(TIMED_OUT_DELTA, TIMED_OUT)


class _Run:
    """One run of a check on a thread of its own."""

    def __init__(self, check: Check) -> None:
        self.check = check
        self.finding: Finding | None = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"health-{check.name}",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.finding = self.check.run()
        except Exception as exc:  # a check's own bug: said, not counted against the node
            log.exception("event=health-check-error check=%s", self.check.name)
            self.finding = Finding(0, f"check failed: {exc!r}")


class HealthWriter:
    """The one writer of `nodes/<node>/health` in this process (compare-and-set)."""

    def __init__(self, store: Store, path: str) -> None:
        self._store = store
        self._path = path
        self._lock = threading.Lock()
        self._version: int | None = None  # None: not written (or lost track): read it first

    def write(self, health: NodeHealth) -> None:
        doc = health.to_doc()
        with self._lock:
            for _ in range(3):
                if self._version is None:
                    current = self._store.read_optional(self._path)
                    if current is None:
                        self._store.commit([Op.create(self._path, doc)])
                        self._version = 0
                        return
                    self._version = current[1].version
                try:
                    result = self._store.commit([Op.set(self._path, doc, self._version)])
                    self._version = result[0].version
                    return
                except Conflict:
                    self._version = None
            raise Conflict(f"{self._path}: could not write the node's health")

    def clear(self) -> None:
        """Health null: before the first round, and when the daemon stops."""
        self.write(NodeHealth(None))


class HealthRounds:
    """Runs the checks every `interval` and writes each round's `NodeHealth`."""

    def __init__(self, node: str, checks: list[Check], writer: HealthWriter, interval: float,
                 can_write: Callable[[], bool], clock: Callable[[], float] = time.time) -> None:
        """`can_write`: the node is registered and connected (else a round would only queue
        its write in kazoo); `clock`: the `last_run` times."""
        self.node = node
        self.checks = checks
        self.writer = writer
        self.interval = interval
        self.can_write = can_write
        self.clock = clock
        self._in_flight: dict[str, _Run] = {}
        self._cleared = False
        self._failing = ""  # the failing checks the log last named

    def key(self) -> str:
        return f"health/{self.node}"

    def keys(self) -> list[str]:
        return [self.key()]

    def reconcile(self, key: str) -> Result:
        if key != self.key():
            return Result()
        if not self.can_write():
            return Result(requeue_after=min(1.0, self.interval))
        started = time.monotonic()
        if not self._cleared:  # what a previous run of this daemon left is not this one's
            self.writer.clear()
            self._cleared = True
        health = NodeHealth.of(self.run_round())
        self.writer.write(health)
        failing = ",".join(f"{c.name}={c.health_delta}" for c in health.checks
                           if c.health_delta)
        if failing != self._failing:  # a line when it changes, not one every round
            log.info("event=health-changed node=%s health=%s failing=%s", self.node,
                     health.health, failing or "-")
            self._failing = failing
        return Result(requeue_after=max(0.0, self.interval - (time.monotonic() - started)))

    def run_round(self) -> list[HealthCheck]:
        """Run every check (at once), each within its limit; the results in check order."""
        now = self.clock()
        runs: list[tuple[Check, _Run | None]] = []
        for check in self.checks:
            previous = self._in_flight.get(check.name)
            if previous is not None and previous.thread.is_alive():
                runs.append((check, None))  # still hung in an earlier round: no second run
                continue
            self._in_flight[check.name] = _Run(check)
            runs.append((check, self._in_flight[check.name]))
        results = []
        for check, run in runs:
            finding: Finding | None = None
            if run is not None:
                run.thread.join(max(0.0, run.started + check.limit - time.monotonic()))
                finding = run.finding
            if finding is None:
                finding = check.on_timeout
                log.warning("event=health-check-timeout node=%s check=%s limit=%.1f",
                            self.node, check.name, check.limit)
            else:
                del self._in_flight[check.name]
            results.append(HealthCheck(check.name, now, finding.delta, finding.message,
                                       dict(finding.data)))
        return results
