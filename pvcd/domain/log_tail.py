"""The rules of a log buffer: a node's log (`logs/<node>`), a VM's console
(`vms/<uuid>/console`).

A buffer is the tail of a stream of lines, `{lines: [...], last_line}` (extensions.md §7):
`last_line` counts every line ever appended, so line numbers stay meaningful while old lines
leave the buffer, and a follower that asks for the lines after line `n` neither repeats nor
misses one. Lines that a writer had to drop before they reached the buffer (ZooKeeper away, a
flooding guest) are counted too: a follower whose line left before it could read it is told
(`truncated`), whichever way it left.

Both limits are applied when lines are appended: at most `max_lines` lines, and at most
`max_bytes` of JSON (512 KiB by default: far below ZooKeeper's 1 MiB request limit, and every
node's cache holds every buffer). One line is at most `MAX_LINE_CHARS` characters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_LINE_CHARS = 4096
MAX_BUFFER_BYTES = 512 * 1024
# what `{"lines": [], "last_line": <20 digits>}` and a writer's extra keys may take besides
# the lines themselves (the extra keys are small: a console's follow positions)
_OVERHEAD = 4096


def cut_line(text: str) -> str:
    """`text` as one buffer line: at most MAX_LINE_CHARS characters."""
    return text[:MAX_LINE_CHARS]


def _size(line: str) -> int:
    return len(json.dumps(line)) + 2  # quoted and escaped, then ", "


@dataclass
class LogTail:
    """A buffer's document: the lines kept and the number of the last line ever appended (the
    first kept line is number `last_line - len(lines) + 1`). `extra`: the writer's own keys,
    kept as they are (a console's follow positions)."""

    lines: list[str] = field(default_factory=list)
    last_line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: object) -> LogTail:
        """The buffer in `doc`; anything malformed (written past pvcd) counts as empty."""
        if not isinstance(doc, Mapping):
            return cls()
        lines = doc.get("lines")
        last = doc.get("last_line")
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            lines = []
        if not isinstance(last, int) or isinstance(last, bool) or last < len(lines):
            last = len(lines)
        extra = {k: v for k, v in doc.items() if k not in ("lines", "last_line")}
        return cls(list(lines), last, extra)

    def to_doc(self) -> dict[str, Any]:
        return {**self.extra, "lines": self.lines, "last_line": self.last_line}

    @property
    def first_line(self) -> int:
        """The number of the oldest line kept (last_line + 1 when none is)."""
        return self.last_line - len(self.lines) + 1

    def append(self, lines: Iterable[str], max_lines: int, dropped: int = 0,
               max_bytes: int = MAX_BUFFER_BYTES) -> None:
        """Append `lines` (each cut to MAX_LINE_CHARS) after `dropped` lines that never
        arrived, then drop the oldest lines beyond `max_lines` and `max_bytes`. Kept lines are
        numbered without gaps, so lines older than dropped ones leave too (a writer drops only
        when more than `max_lines` came at once: they would have left anyway)."""
        new = [cut_line(line) for line in lines]
        self.last_line += dropped + len(new)
        older = self.lines if not dropped else []
        kept = (older + new)[-max_lines:] if max_lines > 0 else []
        budget = max_bytes - _OVERHEAD - len(json.dumps(self.extra))
        total, start = 0, len(kept)
        while start > 0:
            size = _size(kept[start - 1])
            if total + size > budget:
                break
            total += size
            start -= 1
        self.lines = kept[start:]


@dataclass(frozen=True)
class TailRead:
    """What `GET /vm/<vm>/console` and `GET /node/<node>/log` answer: `data` (the lines joined
    by newlines), `last_line` (the number of the last line in `data`, or the buffer's last
    line when there is none to give) and `truncated` (lines after `after` had already left the
    buffer, or the buffer started again below `after`)."""

    data: str
    last_line: int
    truncated: bool = False


def read_tail(tail: LogTail, lines: int, after: int | None = None) -> TailRead:
    """Without `after`: the last `lines` lines. With it: the oldest `lines` lines after line
    `after`, so asking again with `after=<last_line answered>` continues exactly there."""
    if after is None:
        chosen = tail.lines[-lines:] if lines > 0 else []
        return TailRead("\n".join(chosen), tail.last_line)
    if after == tail.last_line:
        return TailRead("", tail.last_line)
    first = tail.first_line
    truncated = after > tail.last_line or after + 1 < first
    start = first if truncated else after + 1
    chosen = tail.lines[start - first:start - first + lines]
    return TailRead("\n".join(chosen), start + len(chosen) - 1 if chosen else tail.last_line,
                    truncated)
