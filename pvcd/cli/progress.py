"""A progress bar with rate and ETA for long jobs (`pvc task wait`, uploads later).

On a terminal one line is rewritten in place: `[#####-----]  42%  3/7  12.0 MiB/s  ETA 0:12
copying`; elsewhere (a log, a pipe) a plain line is printed each time the step's message
changes, so a log stays readable. The rate is measured over the last `WINDOW` seconds of
samples, so a stall shows as a falling rate, not as the average since the start. Pure apart
from the stream it writes to and the clock it is given.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from pvcd.cli.output import size_bytes

WIDTH = 24  # characters of the bar itself
WINDOW = 10.0  # seconds of samples the rate is measured over


def bar(current: int, total: int, width: int = WIDTH) -> str:
    """`[####------]  40%`, or a bar without a percentage when the total is unknown."""
    if total <= 0:
        return "[" + "?" * width + "]"
    share = min(1.0, max(0.0, current / total))
    filled = int(share * width)
    return f"[{'#' * filled}{'-' * (width - filled)}] {share * 100:3.0f}%"


def duration(seconds: float) -> str:
    """`1:02:03`, `2:03`."""
    whole = max(0, int(seconds + 0.5))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def amount(value: float, unit: str) -> str:
    if unit == "bytes":
        return size_bytes(int(value))
    return f"{value:.1f}".removesuffix(".0")


@dataclass
class ProgressBar:
    stream: TextIO
    interactive: bool
    unit: str = "steps"  # "bytes": amounts and rates shown as sizes
    clock: Callable[[], float] = time.monotonic
    _samples: deque[tuple[float, int]] = field(default_factory=deque)
    _last_message: str | None = None

    def rate(self) -> float | None:
        """Units per second over the last WINDOW seconds; None until two samples differ."""
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None

    def line(self, current: int, total: int, message: str) -> str:
        parts = [bar(current, total),
                 f"{amount(current, self.unit)}/{amount(total, self.unit)}" if total > 0
                 else amount(current, self.unit)]
        rate = self.rate()
        if rate is not None:
            parts.append(f"{amount(rate, self.unit)}/s")
            if rate > 0 and total > current:
                parts.append(f"ETA {duration((total - current) / rate)}")
        if message:
            parts.append(message)
        return "  ".join(parts)

    def update(self, current: int, total: int, message: str) -> None:
        now = self.clock()
        self._samples.append((now, current))
        while len(self._samples) > 2 and self._samples[0][0] < now - WINDOW:
            self._samples.popleft()
        if self.interactive:
            self._write("\r\x1b[K" + self.line(current, total, message))
        elif message != self._last_message:
            self._write(f"{current}/{total} {message}\n" if total > 0 else f"{message}\n")
        self._last_message = message

    def finish(self, text: str) -> None:
        self._write(("\r\x1b[K" if self.interactive else "") + text + "\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
