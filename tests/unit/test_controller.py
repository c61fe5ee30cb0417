"""The controller framework's queue semantics, with real threads."""

from __future__ import annotations

import itertools
import threading
import time

from pvcd.controllers.base import Controller, Result, TemporaryError


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def test_a_key_is_never_reconciled_twice_at_once_and_no_event_is_lost() -> None:
    active: set[str] = set()
    overlaps = []
    calls: list[str] = []
    lock = threading.Lock()
    a_started = threading.Event()

    def reconcile(key: str) -> None:
        with lock:
            if key in active:
                overlaps.append(key)
            active.add(key)
        if key == "a":
            a_started.set()
        time.sleep(0.01)
        with lock:
            active.discard(key)
            calls.append(key)

    ctl = Controller("t", reconcile, workers=4)
    ctl.start()
    try:
        ctl.enqueue("a")
        assert a_started.wait(5)
        ctl.enqueue("a")  # while "a" runs: must run once more afterwards
        ctl.enqueue("b")
        assert wait_for(lambda: calls.count("a") == 2 and calls.count("b") == 1)
        assert wait_for(ctl.idle)  # nothing queued or running: no third run is coming
        assert calls.count("a") == 2
        assert overlaps == []
    finally:
        ctl.stop()


def test_duplicate_enqueues_are_coalesced() -> None:
    gate = threading.Event()
    calls: list[str] = []

    x_started = threading.Event()

    def reconcile(key: str) -> None:
        if key == "x":
            x_started.set()
        gate.wait(2)
        calls.append(key)

    ctl = Controller("t", reconcile, workers=1)
    ctl.start()
    try:
        ctl.enqueue("x")
        assert x_started.wait(5)  # x is active and blocked
        for _ in range(10):
            ctl.enqueue("y")
        gate.set()
        assert wait_for(lambda: calls.count("y") == 1)
        assert wait_for(ctl.idle)
        assert calls == ["x", "y"]
    finally:
        ctl.stop()


def test_errors_back_off_exponentially_and_success_resets() -> None:
    times: list[float] = []

    def reconcile(key: str) -> None:
        times.append(time.monotonic())
        if len(times) < 4:
            raise TemporaryError("not yet")

    ctl = Controller("t", reconcile, backoff_base=0.02)
    ctl.start()
    try:
        ctl.enqueue("k")
        assert wait_for(lambda: len(times) == 4)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps[0] >= 0.018 and gaps[1] >= 0.038 and gaps[2] >= 0.078
        time.sleep(0.2)
        assert len(times) == 4  # done after success
    finally:
        ctl.stop()


def test_requeue_after_and_periodic_resync() -> None:
    calls: list[str] = []

    def reconcile(key: str) -> Result:
        calls.append(key)
        return Result(requeue_after=0.05) if key == "again" and calls.count(key) < 3 else Result()

    ctl = Controller("t", reconcile, list_keys=lambda: ["r"], resync_interval=0.1)
    ctl.start()
    try:
        ctl.enqueue("again")
        assert wait_for(lambda: calls.count("again") == 3)
        assert wait_for(lambda: calls.count("r") >= 3)  # resync re-enqueues known keys
    finally:
        ctl.stop()


def test_an_unexpected_exception_is_counted_and_retried() -> None:
    calls: list[int] = []

    def reconcile(key: str) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    ctl = Controller("t", reconcile, backoff_base=0.01)
    ctl.start()
    try:
        ctl.enqueue("k")
        assert wait_for(lambda: len(calls) == 2)
        assert ctl.errors == 1
    finally:
        ctl.stop()


def test_a_key_that_requeues_itself_and_sees_events_is_not_reconciled_ever_more_often() -> None:
    """One delayed entry per key: each event's reconcile asks for a requeue, and before, each
    such request stayed (a fencing primary's keys, seeing a keepalive a second and requeueing
    for the dead-after time, were reconciled ever more often)."""
    calls: list[float] = []

    def reconcile(key: str) -> Result:
        calls.append(time.monotonic())
        return Result(requeue_after=0.2)

    ctl = Controller("t", reconcile)
    ctl.start()
    try:
        for _ in range(40):  # an event every 20 ms for 0.8 s
            ctl.enqueue("k")
            time.sleep(0.02)
        during = len(calls)
        time.sleep(0.5)  # no events: the requeue alone, every 0.2 s
        assert len(calls) - during <= 3, calls[during:]
        assert len(ctl._delayed) <= 2
    finally:
        ctl.stop()


def test_the_earliest_requeue_wins() -> None:
    calls: list[float] = []
    ctl = Controller("t", lambda key: calls.append(time.monotonic()) or None)
    ctl.start()
    try:
        started = time.monotonic()
        ctl.enqueue_after("k", 5.0)
        ctl.enqueue_after("k", 0.05)  # sooner: replaces the later one
        ctl.enqueue_after("k", 3.0)   # later than one pending: nothing more
        assert wait_for(lambda: len(calls) == 1)
        assert calls[0] - started < 1.0
        time.sleep(0.2)
        assert len(calls) == 1 and ctl._due == {}
    finally:
        ctl.stop()
