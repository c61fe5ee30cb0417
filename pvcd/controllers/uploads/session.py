"""The link between an upload's HTTP request and its job: the body in, "you may answer" out.

The request's handler runs on the API's event loop and receives the body in chunks; the job
runs in a thread of its own and writes them into Ceph. `UploadSession` passes the chunks through
a queue bounded in bytes (`capacity`): `put` answers an awaitable while the queue is full, and
the handler awaits it before it takes the next chunk from the socket (Tornado reads no further
meanwhile), so the body is never read faster than it is written, and the API process holds at
most `capacity` bytes of it whatever its length. The job `take`s chunks; the end of the body
(`end(complete=True)`) or a connection cut short (`end(complete=False)`) reaches it after the
last chunk. A job that fails early `drop`s the rest: `put` discards from then on, so the
handler reads the body to its end quickly and can answer with the failure (HTTP clients
seldom read an answer sent before their body is out).

`settled` resolves (on the loop) once the job has finished, or has received the body and goes
on to convert it: the moment the handler may answer.

Races named: every state change happens under one lock, and the loop's futures are completed
through `call_soon_threadsafe`, never from the job's thread directly.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable

from pvcd.domain.errors import InvalidValue

CAPACITY = 16 << 20  # bytes of body waiting for the job at most
TAKE_WAIT = 1.0  # seconds `take` waits before it lets the job look around (b"")


class BodyCut(Exception):
    """The client closed the connection before the whole body was in."""


class UploadSession:
    """See the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = CAPACITY) -> None:
        self.loop = loop
        self.capacity = capacity
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._ended: bool | None = None  # None: more to come; True: complete; False: cut
        self._refusal: str | None = None  # why the body was refused (a malformed one)
        self._dropped = False
        self._room: asyncio.Future[None] | None = None
        self.settled: asyncio.Future[None] = loop.create_future()

    # the handler's side (on the loop)
    def put(self, chunk: bytes) -> Awaitable[None] | None:
        """Queue a chunk; an awaitable to wait on before the next one while the queue is
        full."""
        with self._cond:
            if self._dropped or self._ended is not None:
                return None
            self._chunks.append(chunk)
            self._queued += len(chunk)
            self._cond.notify()
            if self._queued < self.capacity:
                return None
            self._room = self.loop.create_future()
            return self._room

    def end(self, complete: bool) -> None:
        """The body is in (`complete`), or the connection was closed before."""
        with self._cond:
            if self._ended is None:
                self._ended = complete
            self._cond.notify()

    def refuse(self, reason: str) -> None:
        """The body cannot be used (e.g. a malformed multipart body): the job fails with
        `reason` once it has taken what came before."""
        with self._cond:
            if self._ended is None:
                self._ended, self._refusal = False, reason
            self._cond.notify()

    # the job's side (its thread)
    def take(self, wait: float = TAKE_WAIT) -> bytes | None:
        """The next chunk; b"" when none came within `wait` s; None at the end of the body;
        BodyCut when the connection was closed before its end; InvalidValue when the body was
        refused."""
        with self._cond:
            if not self._chunks and self._ended is None:
                self._cond.wait(wait)
            if self._chunks:
                chunk = self._chunks.popleft()
                self._queued -= len(chunk)
                if self._queued < self.capacity // 2:
                    self._release_room()
                return chunk
            if self._ended is None:
                return b""
            if self._ended:
                return None
            if self._refusal is not None:
                raise InvalidValue(self._refusal)
            raise BodyCut()

    def drop(self) -> None:
        """The job reads no more: forget what is queued, discard what comes."""
        with self._cond:
            self._dropped = True
            self._chunks.clear()
            self._queued = 0
            self._release_room()

    def settle(self) -> None:
        """The handler may answer now."""
        self._complete(self.settled)

    def _release_room(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            self._complete(room)

    def _complete(self, future: asyncio.Future[None]) -> None:
        def done() -> None:
            if not future.done():
                future.set_result(None)

        try:
            self.loop.call_soon_threadsafe(done)
        except RuntimeError:  # the loop is closed (the API stopped): nobody waits any more
            pass
