"""The node's own log in the cluster: `logs/<node>` (extensions.md §7, `GET /node/<node>/log`).

Two halves, so that logging never waits for ZooKeeper:
- `NodeLogHandler`, a `logging.Handler` at INFO, only formats a record into one line and puts
  it in a bounded in-memory queue. It never touches ZooKeeper and never blocks beyond its lock.
  While the queue is full (ZooKeeper away for long, or a burst) the oldest queued line is
  dropped and counted: those are exactly the lines the buffer would have pushed out anyway
  (it keeps `logging.zookeeper_lines` at most), and the counted lines still advance
  `last_line`, so a follower learns that it missed some (`truncated`).
- `NodeLogWriter`, one background thread, appends what was queued at most once a second
  (`pvcd.state.log_buffer`), skipping rounds while the connection is down. Records logged by
  that thread itself (a failed write, kazoo's warnings on it) are left to the other handlers:
  a write that logs can never feed itself.

Which records: the handler is attached to the root logger by the process that runs one node
daemon (`pvcd.main.run_node`; the lab too runs each node daemon as a process of its own), so it
holds that node's records only. Several daemons in one process (tests) attach none.

On shutdown the daemon stops the writer, which writes what is queued one last time when the
connection is up, within the time the shutdown budget leaves; the buffer stays in ZooKeeper
after the node stops.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading
from collections.abc import Callable

from pvcd.domain.errors import BackendError, Conflict, NotFound
from pvcd.domain.log_tail import MAX_BUFFER_BYTES, cut_line
from pvcd.state.log_buffer import append_to_buffer
from pvcd.state.store import Store

log = logging.getLogger(__name__)

WRITE_INTERVAL = 1.0  # seconds: at most one write a second
# records left to the journal below a level: the API's access log of successful requests (a
# follower's own polls of the primary's log would otherwise add a line every second, and
# scrapes would push the daemon's events out); its warnings and the audit log stay
LEFT_OUT_BELOW = {"tornado.access": logging.WARNING}


def format_line(record: logging.LogRecord) -> str:
    """`YYYY-MM-DD HH:MM:SS.mmm LEVEL logger: message` (UTC), one line whatever the message."""
    moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    message = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        message += f" exception={record.exc_info[1]!r}"
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    return cut_line(f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d} "
                    f"{record.levelname} {record.name}: {message}")


class NodeLogHandler(logging.Handler):
    """Queues this node's records (INFO and above, but for LEFT_OUT_BELOW) as lines for the
    writer; never blocks on ZooKeeper. At most `capacity` lines wait; beyond that the oldest
    are dropped and counted."""

    def __init__(self, capacity: int) -> None:
        super().__init__(logging.INFO)
        self._capacity = capacity
        self._queue: collections.deque[str] = collections.deque()
        self._queue_lock = threading.Lock()
        self._dropped = 0
        self.dropped_total = 0  # for operators: every line that never reached the buffer
        self.ignored_thread: int | None = None  # the writer's thread: its records stay out

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread is not None and record.thread == self.ignored_thread:
            return
        if record.levelno < LEFT_OUT_BELOW.get(record.name, 0):
            return
        try:
            line = format_line(record)
        except Exception:
            self.handleError(record)
            return
        with self._queue_lock:
            self._queue.append(line)
            self._trim_locked()

    def take(self) -> tuple[list[str], int]:
        """Everything queued, and how many lines were dropped before it."""
        with self._queue_lock:
            lines, dropped = list(self._queue), self._dropped
            self._queue.clear()
            self._dropped = 0
        return lines, dropped

    def give_back(self, lines: list[str], dropped: int) -> None:
        """Lines `take` returned that could not be written: queued again before newer ones."""
        with self._queue_lock:
            self._queue.extendleft(reversed(lines))
            self._dropped += dropped
            self._trim_locked()

    def _trim_locked(self) -> None:
        while len(self._queue) > self._capacity:
            self._queue.popleft()
            self._dropped += 1
            self.dropped_total += 1


class NodeLogWriter:
    """Writes the handler's lines to `path` at most once a second, on a thread of its own."""

    def __init__(self, handler: NodeLogHandler, store: Store, path: str, max_lines: int,
                 connected: Callable[[], bool], interval: float = WRITE_INTERVAL,
                 max_bytes: int = MAX_BUFFER_BYTES) -> None:
        self.handler = handler
        self._store = store
        self._path = path
        self._max_lines = max_lines
        self._connected = connected
        self._interval = interval
        self._max_bytes = max_bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="node-log", daemon=True)
        self._thread.start()
        self.handler.ignored_thread = self._thread.ident

    def stop(self, timeout: float) -> bool:
        """Stop after one last write of what is queued (if ZooKeeper is reachable); True when
        the thread ended within `timeout`."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.write_once()
        self.write_once()

    def write_once(self) -> bool:
        """Append what is queued; True when there was nothing to do or it was written."""
        if not self._connected():
            return False
        lines, dropped = self.handler.take()
        if not lines and not dropped:
            return True
        if dropped:
            lines.append(f"{format_line(_dropped_record(dropped))}")
        try:
            append_to_buffer(self._store, self._path, lines, self._max_lines,
                             max_bytes=self._max_bytes, dropped=dropped)
        except (BackendError, Conflict, NotFound) as exc:
            if dropped:
                lines.pop()
            self.handler.give_back(lines, dropped)
            if not self._failing:  # once per outage; on this thread: not in the buffer
                log.warning("event=node-log-write-failed path=%s error=%s", self._path, exc)
            self._failing = True
            return False
        self._failing = False
        return True


def _dropped_record(count: int) -> logging.LogRecord:
    return logging.LogRecord(__name__, logging.WARNING, __file__, 0,
                             "event=node-log-lines-dropped count=%d reason=the log queue was "
                             "full (ZooKeeper unreachable, or a burst)", (count,), None)
