"""`--wait`: polling until done, progress lines, the timeout, and API outages in between."""

from __future__ import annotations

import io

import pytest

from pvcd.cli.errors import ApiUnreachable, WaitTimedOut
from pvcd.cli.waiting import Observation, Waiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def waiter(stream: io.StringIO, clock: FakeClock, interactive: bool = False) -> Waiter:
    return Waiter(stream, interactive=interactive, clock=clock, sleep=clock.sleep, interval=1.0)


def test_polls_until_done_and_prints_each_new_state_once() -> None:
    states = iter(["flush", "flush", "flush", "flushed"])
    stream, clock = io.StringIO(), FakeClock()

    def probe() -> Observation:
        state = next(states)
        return Observation(state == "flushed", f"domain state {state}", state)

    assert waiter(stream, clock).wait("node1 to be flushed", probe, timeout=10) == "flushed"
    assert stream.getvalue().splitlines() == [
        "Waiting for node1 to be flushed: domain state flush",
        "Waiting for node1 to be flushed: domain state flushed (3.0 s)",
    ]


def test_times_out_with_the_last_state() -> None:
    stream, clock = io.StringIO(), FakeClock()
    with pytest.raises(WaitTimedOut, match=r"after 3 s.*last seen: state migrate") as caught:
        waiter(stream, clock).wait("VM web1", lambda: Observation(False, "state migrate"), 3)
    assert caught.value.exit_code == 5
    assert clock.now == 3.0


def test_an_unreachable_api_is_not_yet_not_an_error() -> None:
    calls = iter([ApiUnreachable("refused"), ApiUnreachable("refused"), None])
    stream, clock = io.StringIO(), FakeClock()

    def probe() -> Observation:
        failure = next(calls)
        if failure is not None:
            raise failure
        return Observation(True, "coordinator state primary", "node2")

    assert waiter(stream, clock).wait("node2 to be primary", probe, timeout=10) == "node2"
    assert "API unreachable" in stream.getvalue()


def test_on_a_terminal_one_line_is_rewritten() -> None:
    stream, clock = io.StringIO(), FakeClock()
    results = iter([False, False, True])
    waiter(stream, clock, interactive=True).wait(
        "x", lambda: Observation(next(results), "s"), timeout=10)
    text = stream.getvalue()
    assert text.count("\r\x1b[K") == 3 and text.count("\n") == 1 and text.endswith("\n")
