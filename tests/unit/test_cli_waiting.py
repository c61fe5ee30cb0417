"""`--wait`: one request the API answers once settled, progress while it is open, the timeout,
and re-attaching after a primary handover cut the request."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest

from pvcd.cli.errors import ApiConnectionLost, ApiFailure, ApiUnreachable, WaitTimedOut
from pvcd.cli.waiting import MAX_WAIT, Waiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def waiter(stream: io.StringIO, clock: FakeClock, interactive: bool = False) -> Waiter:
    return Waiter(stream, interactive=interactive, clock=clock, sleep=clock.sleep, tick=0.01)


def settled(seen: str, **doc: Any) -> dict[str, Any]:
    return {**doc, "wait": {"outcome": "settled", "seen": seen}}


def wait_failure(outcome: str, message: str, status: int = 510,
                 accepted: str = "Setting it") -> ApiFailure:
    return ApiFailure(message, status, {"message": message, "wait": {
        "outcome": outcome, "seen": "last words", "accepted": accepted}})


class Calls:
    """A scripted request: each call takes the next answer (a document, or an exception)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> dict[str, Any]:
        self.seconds.append(seconds)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)


def test_one_request_answers_when_settled_and_the_end_is_shown() -> None:
    stream, clock = io.StringIO(), FakeClock()
    change = Calls(settled("running on node2", message="Setting VM 'web1' to state start"))
    doc = waiter(stream, clock).wait("VM web1 to run", change, Calls(), timeout=30)
    assert doc["message"] == "Setting VM 'web1' to state start"
    assert change.seconds == [30]
    assert stream.getvalue() == "Waiting for VM web1 to run: running on node2 (0.0 s)\n"


def test_the_apis_timeout_is_exit_5_with_its_message() -> None:
    stream, clock = io.StringIO(), FakeClock()
    message = "Timed out after 3 s waiting for node node1 to be flushed; last seen: ..."

    def change(seconds: float) -> dict[str, Any]:
        clock.now += seconds  # the API waited that long
        raise wait_failure("timeout", message)

    with pytest.raises(WaitTimedOut) as caught:
        waiter(stream, clock).wait("node node1 to be flushed", change, Calls(), timeout=3)
    assert str(caught.value) == message and caught.value.exit_code == 5
    assert "last words (3.0 s)" in stream.getvalue()


def test_a_failure_while_waiting_is_the_apis_failure() -> None:
    stream, clock = io.StringIO(), FakeClock()
    failed = wait_failure("failed", "VM 'web1' failed on node2: no disk")
    with pytest.raises(ApiFailure, match="no disk") as caught:
        waiter(stream, clock).wait("VM web1 to run", Calls(failed), Calls(), timeout=30)
    assert caught.value.exit_code == 1


def test_a_refusal_shows_no_progress() -> None:
    stream, clock = io.StringIO(), FakeClock()
    with pytest.raises(ApiFailure, match="Node 'node9' not found"):
        waiter(stream, clock).wait("node node9 to be flushed",
                                   Calls(ApiFailure("Node 'node9' not found", 510)), Calls(), 30)
    assert stream.getvalue() == ""


def test_an_unreachable_api_before_the_change_is_not_waited_out() -> None:
    stream, clock = io.StringIO(), FakeClock()
    reattach = Calls()
    with pytest.raises(ApiUnreachable) as caught:
        waiter(stream, clock).wait("x", Calls(ApiUnreachable("refused")), reattach, 30)
    assert caught.value.exit_code == 3 and reattach.seconds == []


def test_a_handover_is_survived_by_asking_again_at_the_state() -> None:
    """The API moves: a 503 `moved`, then the new primary is not up yet, then it answers."""
    stream, clock = io.StringIO(), FakeClock()
    change = Calls(wait_failure("moved", "The API is moving to another node", 503,
                                accepted="Setting node 'node2' to primary"))
    reattach = Calls(ApiUnreachable("refused"), ApiConnectionLost("reset"),
                     settled("coordinator state primary, primary node2", name="node2",
                             message="Done"))
    doc = waiter(stream, clock).wait("node node2 to be primary", change, reattach, timeout=30)
    assert doc["name"] == "node2"
    assert doc["message"] == "Setting node 'node2' to primary"  # the change's own answer
    assert reattach.seconds == [30, 29.8, 29.5]  # the time left (to a tenth), after retries
    assert stream.getvalue().endswith(
        "Waiting for node node2 to be primary: coordinator state primary, primary node2 "
        "(0.5 s)\n")


def test_a_lost_connection_is_asked_again_until_the_timeout() -> None:
    stream, clock = io.StringIO(), FakeClock()
    lost = ApiConnectionLost("connection reset")
    reattach = Calls(*[ApiUnreachable("refused")] * 10)
    with pytest.raises(WaitTimedOut, match=r"after 1 s waiting for x: the API could not be "
                                           r"reached .*refused"):
        waiter(stream, clock).wait("x", Calls(lost), reattach, timeout=1)
    assert len(reattach.seconds) == 4  # at 0.25, 0.5, 0.75 and 1.0 s


def test_a_timeout_beyond_the_apis_bound_is_waited_out_in_turns() -> None:
    stream, clock = io.StringIO(), FakeClock()

    def change(seconds: float) -> dict[str, Any]:
        clock.now += seconds
        raise wait_failure("timeout", "Timed out after 3600 s")

    reattach = Calls(settled("ready"))
    waiter(stream, clock).wait("node node1 to be ready", change, reattach, timeout=5000)
    assert reattach.seconds == [5000 - MAX_WAIT]


class Screen(io.StringIO):
    """Lets the request answer once the progress line was drawn twice."""

    def __init__(self) -> None:
        super().__init__()
        self.drawn = threading.Event()

    def write(self, text: str) -> int:
        if self.getvalue().count("Waiting for") >= 1 and "Waiting for" in text:
            self.drawn.set()
        return super().write(text)


def test_on_a_terminal_a_spinner_line_is_rewritten_while_the_request_is_open() -> None:
    screen, clock = Screen(), FakeClock()

    def change(seconds: float) -> dict[str, Any]:
        assert screen.drawn.wait(10)
        return settled("running on node2")

    Waiter(screen, interactive=True, clock=clock, tick=0.01).wait("VM web1 to run", change,
                                                                  Calls(), 30)
    text = screen.getvalue()
    assert text.startswith("\r\x1b[KWaiting for VM web1 to run / 0 s\r")
    assert text.endswith("\r\x1b[KWaiting for VM web1 to run: running on node2 (0.0 s)\n")
    assert text.count("\n") == 1


def test_without_a_terminal_a_slow_wait_says_so_once_when_it_starts() -> None:
    stream, clock = io.StringIO(), FakeClock()
    release = threading.Event()

    def change(seconds: float) -> dict[str, Any]:
        assert release.wait(10)
        return settled("flushed")

    thread = threading.Timer(0.1, release.set)
    thread.start()
    waiter(stream, clock).wait("node node1 to be flushed", change, Calls(), 30)
    assert stream.getvalue().splitlines() == [
        "Waiting for node node1 to be flushed ...",
        "Waiting for node node1 to be flushed: flushed (0.0 s)"]
