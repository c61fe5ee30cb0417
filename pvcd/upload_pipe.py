"""A bounded pipe that carries an upload's body from the API's event loop to the task that
consumes it, in the same process (spec extensions.md §0.2 "uploads", §1.2).

An upload task runs on the node whose API received the request (`run_on` = this node), so its
body never leaves the process: the request handler writes each chunk as Tornado reads it
(`write`), the task's thread reads them as a file (`read`, what `tarfile` or an RBD writer
wants). The pipe holds at most `capacity` bytes: when it is full `write` returns a future the
handler hands back to Tornado from `data_received`, which then stops reading the socket until
the task has taken bytes out (backpressure: a body is never held whole in memory or on disk).

`UploadPipes` is the registry both sides share, keyed by task id: the handler opens the pipe
before it creates the task, the task takes it when it runs. Either side can break it: a client
that disconnects (`abort`: the task's next `read` raises `UploadBroken`), or a task that failed
(`close_reader`: later writes are dropped, so the handler drains the rest of the body and then
answers with the task's failure).

Races named. (1) The task is claimed before the handler has written a byte: `read` waits. (2)
The task never runs (its node restarted): the pipe stays in the registry until the handler ends
(`discard` in the request's end). (3) The producer's future is resolved from the reader's
thread: `loop.call_soon_threadsafe`, never a cross-thread set_result.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable

DEFAULT_CAPACITY = 8 << 20  # bytes buffered between the socket and the task
READ_POLL = 1.0  # seconds between checks of `stopped` while a reader waits


class UploadBroken(Exception):
    """The body will not come whole: the client went away or the pipe was aborted."""


class UploadPipe:
    """One upload's body in flight (module docstring)."""

    def __init__(self, expected: int | None = None, capacity: int = DEFAULT_CAPACITY) -> None:
        self.expected = expected  # bytes announced (Content-Length), if any
        self.capacity = capacity
        self.received = 0  # bytes written by the producer
        self.consumed = 0  # bytes read by the task
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._cond = threading.Condition()
        self._eof = False
        self._broken: str | None = None
        self._reader_closed: str | None = None
        self._room: list[Callable[[], None]] = []

    # the producer (the request handler, on the event loop)
    def write(self, chunk: bytes) -> asyncio.Future[None] | None:
        """Add a chunk; a future to await when the pipe is full (None: go on at once). Dropped
        once the reader has closed its end."""
        with self._cond:
            self.received += len(chunk)
            if self._reader_closed is not None or self._broken is not None:
                return None
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            self._cond.notify_all()
            if self._buffered < self.capacity:
                return None
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()

            def settle() -> None:
                if not future.done():
                    future.set_result(None)

            def resolve() -> None:
                loop.call_soon_threadsafe(settle)

            self._room.append(resolve)
            return future

    def finish(self) -> None:
        """The whole body is in."""
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def abort(self, reason: str) -> None:
        """The body will not be complete (the client left): the reader fails with `reason`."""
        with self._cond:
            if (self._eof and not self._chunks) or self._broken is not None:
                return  # complete already, or broken for a first reason
            self._broken = reason
            self._chunks.clear()
            self._buffered = 0
            self._wake_producer()
            self._cond.notify_all()

    @property
    def complete(self) -> bool:
        return self._eof

    # the consumer (the task's thread)
    def read(self, size: int = -1, stopped: Callable[[], bool] = lambda: False) -> bytes:
        """Up to `size` bytes (all buffered ones for -1), b"" at the end of the body. Blocks
        while the pipe is empty; raises `UploadBroken` once it is aborted, or when `stopped`
        says the reader must give up."""
        with self._cond:
            while not self._chunks:
                if self._broken is not None:
                    raise UploadBroken(self._broken)
                if self._eof:
                    return b""
                if stopped():
                    raise UploadBroken("the task was stopped while it waited for the body")
                self._cond.wait(READ_POLL)
            if self._broken is not None:
                raise UploadBroken(self._broken)
            data = self._take(size)
            self.consumed += len(data)
            if self._buffered <= self.capacity // 2:
                self._wake_producer()
            return data

    def close_reader(self, reason: str) -> None:
        """The task gave up (it failed): the rest of the body is dropped as it arrives."""
        with self._cond:
            self._reader_closed = reason
            self._chunks.clear()
            self._buffered = 0
            self._wake_producer()

    def _take(self, size: int) -> bytes:
        if size < 0 or size >= self._buffered:
            data = b"".join(self._chunks)
            self._chunks.clear()
        else:
            parts, need = [], size
            while need > 0:
                chunk = self._chunks.popleft()
                if len(chunk) > need:
                    parts.append(chunk[:need])
                    self._chunks.appendleft(chunk[need:])
                    need = 0
                else:
                    parts.append(chunk)
                    need -= len(chunk)
            data = b"".join(parts)
        self._buffered -= len(data)
        return data

    def _wake_producer(self) -> None:
        waiting, self._room = self._room, []
        for resolve in waiting:
            resolve()


class PipeReader:
    """A pipe as the read-only file object `tarfile.open(fileobj=..., mode="r|")` wants; it
    gives up when `stopped` says so (the task was stopped)."""

    def __init__(self, pipe: UploadPipe, stopped: Callable[[], bool]) -> None:
        self.pipe = pipe
        self.stopped = stopped

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return self.pipe.read(-1, self.stopped)
        parts, need = [], size
        while need > 0:  # tarfile expects full blocks until the end
            data = self.pipe.read(need, self.stopped)
            if not data:
                break
            parts.append(data)
            need -= len(data)
        return b"".join(parts)


class UploadPipes:
    """The pipes of uploads in flight on this node, by task id (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipes: dict[str, UploadPipe] = {}

    def open(self, task_id: str, pipe: UploadPipe) -> None:
        with self._lock:
            self._pipes[task_id] = pipe

    def take(self, task_id: str) -> UploadPipe | None:
        """The pipe of task `task_id` (it stays registered until `discard`)."""
        with self._lock:
            return self._pipes.get(task_id)

    def discard(self, task_id: str) -> None:
        with self._lock:
            self._pipes.pop(task_id, None)
