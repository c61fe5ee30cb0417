"""`pvc vm log --follow` / `pvc node log --follow`: asks after the last line shown, so nothing is
shown twice or skipped, and says so when the buffer moved on before lines could be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pvcd.cli.errors import ApiConnectionLost
from pvcd.cli.logs import follow_log
from pvcd.domain.log_tail import LogTail, read_tail


@dataclass
class BufferApi:
    """Answers GET like the API does, from a buffer that grows between polls."""

    tail: LogTail
    rounds: list[Any]  # per poll: lines to append first, or an exception to raise
    asked: list[dict[str, Any]] = field(default_factory=list)

    def get(self, path: str, values: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(dict(values))
        if "after" in values and self.rounds:
            step = self.rounds.pop(0)
            if isinstance(step, Exception):
                raise step
            lines, max_lines = step
            self.tail.append(lines, max_lines)
        read = read_tail(self.tail, values["lines"], values.get("after"))
        doc = {"name": "web1", "data": read.data, "last_line": read.last_line}
        if read.truncated:
            doc["truncated"] = True
        return doc


@dataclass
class Cli:
    client: BufferApi
    json: bool = False


def run(api: BufferApi, polls: int) -> None:
    count = 0

    def sleep(_: float) -> None:
        nonlocal count
        count += 1
        if count > polls:
            raise KeyboardInterrupt

    follow_log(Cli(api), "/vm/web1/console", 2, True, sleep=sleep)  # type: ignore[arg-type]


def test_follow_shows_every_line_once(capsys: pytest.CaptureFixture[str]) -> None:
    tail = LogTail()
    tail.append(["a", "b", "c"], 100)
    api = BufferApi(tail, [(["d"], 100), ([], 100), (["", "e"], 100),
                           ApiConnectionLost("the API moved"), (["f"], 100)])
    run(api, 5)
    out = capsys.readouterr()
    assert out.out.split("\n") == ["b", "c", "d", "", "e", "f", ""]
    assert "the API moved; trying again" in out.err
    assert [asked.get("after") for asked in api.asked] == [None, 3, 4, 4, 6, 6]


def test_follow_says_when_lines_were_lost(capsys: pytest.CaptureFixture[str]) -> None:
    tail = LogTail()
    tail.append(["a"], 3)
    api = BufferApi(tail, [([f"n{n}" for n in range(10)], 3)])  # 7 new lines left at once
    run(api, 1)
    out = capsys.readouterr()
    assert out.out.split("\n") == ["a", "n7", "n8", "n9", ""]
    assert "lines after line 1 left the buffer" in out.err
