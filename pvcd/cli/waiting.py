"""`--wait`: one request that the API answers once the change has settled, with progress shown.

The API decides when a change has settled (the `wait` value; `pvcd.domain.settled` holds the
rules), so the client sends the change with `wait` and keeps that one request open, showing on
stderr that it waits (stdout stays clean for `--format json`): one line rewritten in place on a
terminal, otherwise a line when the wait starts and one when it ends.

The API moves with the primary, so a handover (or `pvc node primary` itself) can cut the
request: the API answers 503 (`wait.outcome` = moved) or the connection drops. The change was
accepted by then, so the client re-attaches: it asks whichever node serves the API next for
the object's state with `wait` (a GET, which changes nothing), retrying while the API is
unreachable, until the timeout. A timeout longer than the API's bound for one wait is waited
out the same way.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from pvcd.cli.errors import ApiConnectionLost, ApiFailure, ApiUnreachable, WaitTimedOut

DEFAULT_TIMEOUT = 300.0
MAX_WAIT = 3600.0  # the API's bound for one wait (`wait_timeout`)
HTTP_SLACK = 30.0  # how much longer than the wait the HTTP request may take
RETRY = 0.25  # between attempts to reach the API again
TICK = 0.2  # progress line updates on a terminal
SPINNER = "|/-\\"

# `request(seconds)`: send with `wait` and `wait_timeout` = seconds; the answer's document
Request = Callable[[float], dict[str, Any]]


@dataclass
class Waiter:
    stream: TextIO
    interactive: bool  # a terminal: rewrite one line instead of printing many
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    tick: float = TICK

    def wait(self, what: str, change: Request, reattach: Request,
             timeout: float) -> dict[str, Any]:
        """Send `change` and wait for its answer; re-attach with `reattach` after a handover.
        Returns the last answer (the change's, or the re-attached state's). `what` names the
        goal, e.g. "VM web1 to run"."""
        start = self.clock()
        deadline = start + timeout
        request, note = change, ""
        accepted: str | None = None  # the change's message, when a handover cut its answer
        while True:
            # to a tenth: the API's messages name it ("timed out after 30 s")
            seconds = round(min(max(0.0, deadline - self.clock()), MAX_WAIT), 1)
            try:
                doc = self._open(what, request, seconds, start, note)
            except ApiFailure as exc:
                outcome = (exc.detail.get("wait") or {}).get("outcome")
                accepted = accepted or (exc.detail.get("wait") or {}).get("accepted")
                if outcome == "moved" or (outcome == "timeout" and self.clock() < deadline):
                    request, note = reattach, "the API moved, asking again" \
                        if outcome == "moved" else "still waiting"
                    continue
                if outcome is not None:  # a failure or the timeout: the API's message says it
                    self._end(what, start, str((exc.detail.get("wait") or {}).get("seen")))
                if outcome == "timeout":
                    raise WaitTimedOut(str(exc)) from None
                raise
            except ApiUnreachable as exc:
                if request is change and not isinstance(exc, ApiConnectionLost):
                    raise  # the change never reached the API
                if self.clock() >= deadline:
                    self._end(what, start, "API unreachable")
                    raise WaitTimedOut(f"timed out after {timeout:g} s waiting for {what}: the "
                                       f"API could not be reached (moving to a new primary?); "
                                       f"last error: {exc}") from None
                request, note = reattach, "API unreachable (moving to a new primary?)"
                self.sleep(RETRY)
                continue
            report = doc.get("wait") or {}
            self._end(what, start, str(report.get("seen") or "done"))
            return {**doc, "message": accepted} if accepted and request is reattach else doc

    def _open(self, what: str, request: Request, seconds: float, start: float,
              note: str) -> dict[str, Any]:
        """Run `request(seconds)`, showing that it waits once it has not answered within a tick
        (a refusal shows no progress at all); its answer, or its exception."""
        answers: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

        def run() -> None:
            try:
                answers.put((True, request(seconds)))
            except BaseException as exc:  # handed to the waiting thread
                answers.put((False, exc))

        # a daemon thread: Ctrl-C ends the command without waiting for the HTTP timeout
        threading.Thread(target=run, name="pvc-wait", daemon=True).start()
        turn = 0
        while True:
            try:
                ok, value = answers.get(timeout=self.tick)
                break
            except queue.Empty:
                turn += 1
                if self.interactive:
                    self._line(f"\r\x1b[KWaiting for {what} {SPINNER[turn % len(SPINNER)]} "
                               f"{self.clock() - start:.0f} s" + (f" ({note})" if note else ""))
                elif turn == 1:
                    self._line(f"Waiting for {what}" + (f" ({note})" if note else "") + " ...\n")
        if not ok:
            raise value
        return dict(value)

    def _end(self, what: str, start: float, seen: str) -> None:
        line = f"Waiting for {what}: {seen} ({self.clock() - start:.1f} s)\n"
        self._line("\r\x1b[K" + line if self.interactive else line)

    def _line(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
