"""`--wait`: poll the API until an object reaches a state, showing progress, within a timeout.

The API records desired state and answers at once; the nodes carry it out. Waiting is
therefore polling: `probe()` reads the object and says whether it is there yet and what it looks
like now. Progress goes to stderr (stdout stays clean for `--format json`): one line rewritten
in place on a terminal, otherwise a line each time the observed state changes.

The API may be briefly unreachable while it moves to another node (a primary handover), so
while waiting a connection failure counts as "not yet", not as an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from pvcd.cli.errors import ApiUnreachable, WaitTimedOut

DEFAULT_TIMEOUT = 300.0
POLL_INTERVAL = 0.25


@dataclass(frozen=True)
class Observation:
    done: bool
    status: str  # what the object looks like now, in words, for the progress line
    value: Any = None  # the object as last read


@dataclass
class Waiter:
    stream: TextIO
    interactive: bool  # a terminal: rewrite one line instead of printing many
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    interval: float = POLL_INTERVAL

    def wait(self, what: str, probe: Callable[[], Observation], timeout: float) -> Any:
        """Poll `probe` until it is done; return its last value. `what` names the goal, e.g.
        "VM web1 to be running"."""
        start = self.clock()
        last_status: str | None = None
        while True:
            try:
                observation = probe()
            except ApiUnreachable:
                observation = Observation(False, "API unreachable (moving to a new primary?)")
            elapsed = self.clock() - start
            if observation.done:
                self._show(f"Waiting for {what}: {observation.status} ({elapsed:.1f} s)",
                           final=True)
                return observation.value
            if elapsed >= timeout:
                self._show(f"Waiting for {what}: {observation.status} ({elapsed:.1f} s)",
                           final=True)
                raise WaitTimedOut(f"timed out after {timeout:g} s waiting for {what}; last "
                                   f"seen: {observation.status}")
            if self.interactive:
                self._show(f"Waiting for {what}: {observation.status} ({elapsed:.0f} s)")
            elif observation.status != last_status:
                self.stream.write(f"Waiting for {what}: {observation.status}\n")
                self.stream.flush()
            last_status = observation.status
            self.sleep(self.interval)

    def _show(self, line: str, final: bool = False) -> None:
        if self.interactive:
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        elif final:
            self.stream.write(line + "\n")
        self.stream.flush()
