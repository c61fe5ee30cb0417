"""Log buffers (extensions.md §7): the buffer rules, console bytes into lines, the node log
handler's bounded queue."""

from __future__ import annotations

import json
import logging
import threading

from pvcd.controllers.node_log import NodeLogHandler, format_line
from pvcd.domain.console_lines import ConsoleLines
from pvcd.domain.log_tail import MAX_BUFFER_BYTES, MAX_LINE_CHARS, LogTail, read_tail


def tail_of(count: int, max_lines: int = 1000) -> LogTail:
    tail = LogTail()
    tail.append([f"line {n}" for n in range(1, count + 1)], max_lines)
    return tail


# -- the buffer -----------------------------------------------------------------------------------

def test_append_counts_every_line_and_keeps_the_last_max_lines() -> None:
    tail = tail_of(25, max_lines=10)
    assert tail.last_line == 25
    assert tail.lines == [f"line {n}" for n in range(16, 26)]
    assert tail.first_line == 16


def test_dropped_lines_count_before_the_new_ones_and_older_lines_leave() -> None:
    tail = tail_of(3)
    tail.append(["after the gap"], 1000, dropped=5)  # lines 4..8 never arrived
    assert tail.last_line == 9
    assert tail.lines == ["after the gap"]  # numbered without gaps: 1..3 cannot stay
    assert tail.first_line == 9


def test_lines_are_cut_at_4096_characters() -> None:
    tail = LogTail()
    tail.append(["x" * 10000, "short"], 10)
    assert [len(line) for line in tail.lines] == [MAX_LINE_CHARS, 5]


def test_the_buffer_stays_under_512_kib_of_json() -> None:
    tail = LogTail()
    wide = "é\"\\" * 1365  # 4095 characters that JSON escapes or encodes wide
    tail.append([wide] * 1000, 1000)
    size = len(json.dumps(tail.to_doc()))
    assert size <= MAX_BUFFER_BYTES
    assert 0 < len(tail.lines) < 1000
    assert tail.last_line == 1000  # the lines that did not fit still count
    assert tail.lines[-1] == wide  # the newest are the ones kept


def test_a_malformed_document_reads_as_an_empty_buffer() -> None:
    for doc in (None, "text", {"lines": "x", "last_line": 3}, {"lines": [1], "last_line": 1},
                {"lines": ["a", "b"], "last_line": 1}, {"lines": ["a"], "last_line": True}):
        tail = LogTail.from_doc(doc)
        assert tail.last_line >= len(tail.lines)
        assert all(isinstance(line, str) for line in tail.lines)


def test_extra_keys_are_kept() -> None:
    tail = LogTail.from_doc({"lines": ["a"], "last_line": 7, "follow": {"n1": {"offset": 3}}})
    tail.append(["b"], 10)
    assert tail.to_doc() == {"lines": ["a", "b"], "last_line": 8,
                             "follow": {"n1": {"offset": 3}}}


# -- reading --------------------------------------------------------------------------------------

def test_without_after_the_last_lines() -> None:
    read = read_tail(tail_of(30), 3)
    assert read == read_tail(tail_of(30), 3, None)
    assert read.data == "line 28\nline 29\nline 30"
    assert read.last_line == 30 and not read.truncated


def test_an_empty_buffer_reads_empty() -> None:
    assert read_tail(LogTail(), 10) == read_tail(LogTail(), 10, after=0)
    assert read_tail(LogTail(), 10).data == ""
    assert read_tail(LogTail(), 10).last_line == 0


def test_after_gives_the_oldest_new_lines_and_where_they_end() -> None:
    tail = tail_of(30)
    read = read_tail(tail, 5, after=20)
    assert read.data.split("\n") == [f"line {n}" for n in range(21, 26)]
    assert read.last_line == 25 and not read.truncated
    rest = read_tail(tail, 100, after=read.last_line)
    assert rest.data.split("\n") == [f"line {n}" for n in range(26, 31)]
    assert rest.last_line == 30
    assert read_tail(tail, 100, after=30) == read_tail(tail, 1, after=30)
    assert read_tail(tail, 100, after=30).data == ""


def test_a_follower_neither_repeats_nor_misses_across_appends() -> None:
    tail, seen, after = LogTail(), [], 0
    for round_ in range(20):
        tail.append([f"r{round_} l{n}" for n in range(round_ % 4)], 50)
        read = read_tail(tail, 2, after=after)  # fewer than a round may bring: it catches up
        while read.last_line != after:
            seen += read.data.split("\n")
            after = read.last_line
            read = read_tail(tail, 2, after=after)
    assert seen == [f"r{r} l{n}" for r in range(20) for n in range(r % 4)]


def test_truncated_when_line_after_left_the_buffer() -> None:
    tail = tail_of(100, max_lines=10)  # keeps 91..100
    read = read_tail(tail, 3, after=50)
    assert read.truncated
    assert read.data == "line 91\nline 92\nline 93"
    assert read.last_line == 93
    assert not read_tail(tail, 3, after=90).truncated  # line 91 is still there
    assert read_tail(tail, 3, after=89).truncated


def test_truncated_when_the_buffer_started_again_below_after() -> None:
    read = read_tail(tail_of(5), 10, after=50)
    assert read.truncated and read.data.split("\n")[0] == "line 1" and read.last_line == 5


def test_dropped_lines_make_a_follower_truncated() -> None:
    tail = tail_of(3)
    tail.append(["late"], 1000, dropped=5)
    read = read_tail(tail, 10, after=3)
    assert read.truncated and read.data == "late" and read.last_line == 9
    assert not read_tail(tail, 10, after=8).truncated


# -- console bytes into lines ---------------------------------------------------------------------

def test_lines_end_at_newlines_and_unfinished_ones_wait() -> None:
    lines = ConsoleLines()
    assert lines.feed(b"one\ntw") == ["one"]
    assert lines.pending
    assert lines.feed(b"o\nthree") == ["two"]
    assert lines.flush_partial() == ["three"]
    assert not lines.pending and lines.flush_partial() == []


def test_non_utf8_is_replaced_and_a_split_character_is_decoded_whole() -> None:
    lines = ConsoleLines()
    e_acute = "é".encode()
    assert lines.feed(b"caf" + e_acute[:1]) == []
    assert lines.feed(e_acute[1:] + b" \xff\xfe ok\n") == ["café \ufffd\ufffd ok"]


def test_escape_sequences_and_carriage_returns_are_kept() -> None:
    assert ConsoleLines().feed(b"\x1b[1;32mOK\x1b[0m\r\n") == ["\x1b[1;32mOK\x1b[0m\r"]


def test_a_long_line_is_cut_and_its_rest_dropped() -> None:
    lines = ConsoleLines()
    out = lines.feed(b"a" * 3000)
    out += lines.feed(b"b" * 3000)
    out += lines.feed(b"c" * 9000 + b"\nnext\n")
    assert out == ["a" * 3000 + "b" * 1096, "next"]


def test_a_guest_writing_no_newline_costs_one_line_of_memory() -> None:
    lines = ConsoleLines()
    out: list[str] = []
    for _ in range(1000):
        out += lines.feed(b"z" * 4096)
    assert out == ["z" * MAX_LINE_CHARS]
    assert lines.flush_partial() == []  # the rest of that line is being dropped


def test_skip_drops_the_line_under_way_up_to_the_next_newline() -> None:
    lines = ConsoleLines()
    assert lines.feed(b"whole\npart") == ["whole"]
    lines.skip()
    assert lines.feed(b"tail of some line\nfresh\n") == ["fresh"]


# -- the node log handler -------------------------------------------------------------------------

def record(message: str, level: int = logging.INFO, name: str = "pvcd.test") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, (), None)


def test_a_line_has_the_documented_form() -> None:
    rec = record("event=x a=%s")
    rec.args = ("b\nc",)
    rec.created = 1765000000.123
    assert format_line(rec) == "2025-12-06 05:46:40.123 INFO pvcd.test: event=x a=b\\nc"


def test_the_handler_keeps_info_and_above() -> None:
    handler = NodeLogHandler(capacity=10)
    logger = logging.getLogger("pvcd.test.levels")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        logger.debug("hidden")
        logger.info("shown")
        logger.error("also")
    finally:
        logger.removeHandler(handler)
    lines, dropped = handler.take()
    assert [line.split(": ", 1)[1] for line in lines] == ["shown", "also"] and dropped == 0


def test_a_full_queue_drops_the_oldest_and_counts_them() -> None:
    handler = NodeLogHandler(capacity=3)
    for n in range(10):
        handler.handle(record(f"m{n}"))
    lines, dropped = handler.take()
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["m7", "m8", "m9"]
    assert dropped == 7 and handler.dropped_total == 7
    handler.give_back(lines, dropped)  # a failed write: queued again, still bounded
    handler.handle(record("m10"))
    lines, dropped = handler.take()
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["m8", "m9", "m10"]
    assert dropped == 8


def test_records_of_the_writer_thread_stay_out() -> None:
    handler = NodeLogHandler(capacity=10)
    go = threading.Event()

    def writer() -> None:
        go.wait(5)
        handler.handle(record("from the writer"))

    thread = threading.Thread(target=writer)
    thread.start()
    handler.ignored_thread = thread.ident
    go.set()
    thread.join()
    handler.handle(record("from elsewhere"))
    lines, _ = handler.take()
    assert [line.split(": ", 1)[1] for line in lines] == ["from elsewhere"]


def test_successful_api_requests_stay_out_but_failures_and_the_audit_log_stay() -> None:
    handler = NodeLogHandler(capacity=10)
    handler.handle(record("200 GET /api/v1/node/n1/log", name="tornado.access"))
    handler.handle(record("510 GET /api/v1/vm/x", logging.WARNING, name="tornado.access"))
    handler.handle(record("POST /api/v1/vm by lab", name="pvcd.audit"))
    lines, _ = handler.take()
    assert [line.split(": ", 1)[1] for line in lines] == ["510 GET /api/v1/vm/x",
                                                          "POST /api/v1/vm by lab"]
