"""The metadata service's HTTP server: small, bounded, and indifferent to hostile guests.

Guests are untrusted and this server faces every one of them, so it does the least HTTP that
cloud-init needs and bounds everything else (`Limits`): the request head (size, header count)
must arrive whole within `request_seconds` of the accept (slowloris), a body is read only up to
`body_bytes` (else the connection is closed), every reply closes the connection (no keep-alive
to hold), and connections are capped per source address, per listener (one client network)
and in all. A guest that exceeds a bound loses its own connection; the others go on. Nothing a
request carries can raise out of a connection's handler: an unexpected error answers 500 and
is logged. Refusals are logged at most `log_burst` times per `log_interval` (then one line
counting the rest), so a flood cannot flood the journal either.

One asyncio loop on a thread of its own serves every listener. The answer itself (`Answer`:
listener key, source address, method, target → `Reply`) runs on a small thread pool, since
identifying a guest asks the kernel's neighbour table (blocking netlink) and must never stall
the loop; it is bounded by `answer_seconds`. `listen`/`close` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pvcd.domain.metadata import Reply

log = logging.getLogger(__name__)

Answer = Callable[[int, str, str, str], Reply]
REASONS = {200: "OK", 209: "Content Returned", 400: "Bad Request", 404: "Not Found",
           413: "Content Too Large", 500: "Internal Server Error"}
CALL_TIMEOUT = 10.0  # seconds a caller waits for the loop to take a listener


@dataclass(frozen=True)
class Limits:
    head_bytes: int = 8192  # request line and headers
    headers: int = 32
    body_bytes: int = 4096  # a larger body closes the connection unanswered
    request_seconds: float = 5.0  # from accept to the end of the head (and of a small body)
    answer_seconds: float = 5.0
    per_source: int = 8  # open connections per (listener, source address)
    per_listener: int = 64
    total: int = 256
    log_burst: int = 10
    log_interval: float = 60.0


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    content_length: int


def parse_head(head: bytes, max_headers: int) -> Request | None:
    """The request line and the body length of an HTTP/1.x head (ending with a blank line);
    None when it is not one this server takes (chunked bodies included)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or \
            not parts[1].startswith("/") or not parts[0].isalpha():
        return None
    headers = [line for line in lines[1:] if line]
    if len(headers) > max_headers:
        return None
    length = 0
    for line in headers:
        name, sep, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not sep:
            return None
        if name == "transfer-encoding":
            return None
        if name == "content-length":
            if not value.isascii() or not value.isdigit() or len(value) > 12:
                return None
            length = int(value)
    return Request(parts[0], parts[1], length)


def encode_reply(reply: Reply) -> bytes:
    head = (f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Unknown')}\r\n"
            f"Content-Type: {reply.content_type}\r\nContent-Length: {len(reply.body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + reply.body


class RefusalLog:
    """Warnings about refused requests, at most `burst` per `interval` seconds."""

    def __init__(self, burst: int, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.interval, self.clock = burst, interval, clock
        self._lock = threading.Lock()  # (the loop and the answer threads refuse)
        self._window = -interval
        self._logged = 0
        self._suppressed = 0

    def refused(self, key: int, source: str, reason: str) -> None:
        with self._lock:
            self._refused(key, source, reason)

    def _refused(self, key: int, source: str, reason: str) -> None:
        now = self.clock()
        if now - self._window >= self.interval:
            if self._suppressed:
                log.warning("event=metadata-refusals-suppressed count=%d seconds=%.0f",
                            self._suppressed, self.interval)
            self._window, self._logged, self._suppressed = now, 0, 0
        if self._logged < self.burst:
            self._logged += 1
            log.warning("event=metadata-refused vni=%d source=%s reason=%s", key, source, reason)
        else:
            self._suppressed += 1


class MetadataHttpServer:
    def __init__(self, answer: Answer, limits: Limits | None = None, workers: int = 4) -> None:
        self.answer = answer
        self.limits = limits or Limits()
        self.refusals = RefusalLog(self.limits.log_burst, self.limits.log_interval)
        self._workers = workers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._servers: dict[int, asyncio.Server] = {}
        self._open: dict[int, set[asyncio.StreamWriter]] = {}
        self._per_source: dict[tuple[int, str], int] = {}
        self._total = 0

    # lifecycle (any thread)
    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="metadata-answer")

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="metadata-http", daemon=True)
        self._thread.start()
        ready.wait(CALL_TIMEOUT)

    def stop(self) -> None:
        """Close every listener and connection and end the loop; safe if never started."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
        thread.join(CALL_TIMEOUT)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._loop = self._thread = self._executor = None

    def listen(self, key: int, sock: socket.socket) -> None:
        """Serve listening socket `sock` as listener `key` (a VNI); replaces one of that key."""
        self._call(self._listen(key, sock))

    def close(self, key: int) -> None:
        """Stop listener `key` and close its connections; nothing if there is none."""
        if self._loop is not None:
            self._call(self._close(key))

    def listening(self) -> list[int]:
        return sorted(self._servers)

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the metadata HTTP server is not running")
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT)

    # on the loop
    async def _listen(self, key: int, sock: socket.socket) -> None:
        await self._close(key)
        self._servers[key] = await asyncio.start_server(
            lambda reader, writer: self._serve(key, reader, writer), sock=sock,
            limit=self.limits.head_bytes)
        self._open[key] = set()

    async def _close(self, key: int) -> None:
        server = self._servers.pop(key, None)
        if server is not None:
            server.close()
        for writer in self._open.pop(key, set()):
            writer.transport.abort()

    async def _shutdown(self) -> None:
        for key in list(self._servers):
            await self._close(key)
        current = asyncio.current_task()
        handlers = [task for task in asyncio.all_tasks() if task is not current]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        self._per_source.clear()
        self._total = 0

    def _admit(self, key: int, source: str) -> str | None:
        """Why a new connection is refused, or None (then it is counted)."""
        limits = self.limits
        if self._total >= limits.total:
            return "too many connections"
        if len(self._open.get(key, ())) >= limits.per_listener:
            return "too many connections on this network"
        if self._per_source.get((key, source), 0) >= limits.per_source:
            return "too many connections from this address"
        return None

    async def _serve(self, key: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) else "?"
        refused = self._admit(key, source)
        if refused is not None or key not in self._open:
            self.refusals.refused(key, source, refused or "listener closed")
            writer.transport.abort()
            return
        connections = self._open[key]
        connections.add(writer)
        self._total += 1
        self._per_source[(key, source)] = self._per_source.get((key, source), 0) + 1
        try:
            reply = await self._reply(key, source, reader)
            if reply is not None:
                writer.write(encode_reply(reply))
                await asyncio.wait_for(writer.drain(), self.limits.request_seconds)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            self.refusals.refused(key, source, f"connection ended: {type(exc).__name__}")
        except Exception:  # nothing a guest sends may stop the service
            log.exception("event=metadata-error vni=%d source=%s", key, source)
        finally:
            connections.discard(writer)
            self._total -= 1
            left = self._per_source[(key, source)] - 1
            if left:
                self._per_source[(key, source)] = left
            else:
                del self._per_source[(key, source)]
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # (a reply the guest does not read)
            else:
                writer.close()

    async def _reply(self, key: int, source: str, reader: asyncio.StreamReader) -> Reply | None:
        """The reply to the one request of this connection; None: close without one."""
        limits = self.limits
        deadline = asyncio.get_running_loop().time() + limits.request_seconds
        try:
            async with asyncio.timeout_at(deadline):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            self.refusals.refused(key, source, "request head too slow")
            return None
        except (asyncio.LimitOverrunError, ValueError):
            self.refusals.refused(key, source, f"request head over {limits.head_bytes} bytes")
            return None
        request = parse_head(head, limits.headers)
        if request is None:
            self.refusals.refused(key, source, "malformed request head")
            return Reply(400, b"Bad Request\n")
        if request.content_length > limits.body_bytes:
            self.refusals.refused(key, source, f"body over {limits.body_bytes} bytes")
            return None
        if request.content_length:
            async with asyncio.timeout_at(deadline):
                await reader.readexactly(request.content_length)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limits.answer_seconds):
                return await loop.run_in_executor(self._executor, self.answer, key, source,
                                                  request.method, request.target)
        except TimeoutError:
            log.warning("event=metadata-answer-timeout vni=%d source=%s", key, source)
            return Reply(500, b"Internal Server Error\n")
        except Exception:
            log.exception("event=metadata-answer-failed vni=%d source=%s", key, source)
            return Reply(500, b"Internal Server Error\n")
