"""Large response bodies handed to the kernel by a thread, so that the event loop stays free.

`GET /vm` at 1,000 VMs is 3 MB, at 10,000 VMs 30 MB. Tornado writes a body from the event loop:
each `send()` copies what the socket buffer takes (up to a few MB) and the loop comes back for
the rest when the socket is writable again. The copy is kernel time on the loop's thread: at
10,000 VMs about 5 ms per request (most of the API thread's time under concurrent readers),
during which no other request is parsed or answered. Here a small pool of threads does the
sends: `send()` releases the GIL, so the loop goes on serving other clients, on the other
core when there is one. Bodies under `BULK_BODY` are not worth the thread hop.

- Plain TCP only: an SSL object may not be written by one thread while the loop reads it (the
  loop reads a connection whenever it is readable, e.g. when the client closes it). Over TLS
  Tornado sends the body as before.
- The thread writes to a duplicate of the connection's descriptor. If the loop closes the
  connection meanwhile (the client left), its descriptor number may be reused at once by a new
  connection: the duplicate keeps the old socket open, so the thread can only ever write to
  the client it answers, and it sees the client's departure as an error.
- A client that stops reading is dropped after `STALL_TIMEOUT` seconds without progress (it
  would hold a sender thread otherwise).
- Tornado frames the response (Content-Length, keep-alive): the headers go through it; after
  the thread has sent the body, `BulkSender.send` tells the connection the body's bytes were
  written, so it finishes the response and keeps the connection for the next request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import select
import socket
import threading

from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream

BULK_BODY = 1 << 20  # smaller bodies are sent from the loop: less than a thread hop
STALL_TIMEOUT = 60.0  # seconds a client may read nothing of a body before it is dropped
SENDERS = 4  # bodies sent at once; more wait for a thread (the loop does not)


class BulkSender:
    """The API's sender threads, started on first use."""

    def __init__(self, workers: int = SENDERS, stall_timeout: float = STALL_TIMEOUT) -> None:
        self._workers = workers
        self._stall_timeout = stall_timeout
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def takes(self, connection: object, size: int) -> bool:
        """Whether a body of `size` bytes on `connection` is sent by a thread."""
        return size >= BULK_BODY and isinstance(connection, HTTP1Connection) and \
            type(connection.stream) is IOStream and not connection.stream.closed()

    async def send(self, connection: HTTP1Connection, body: bytes) -> None:
        """Send `body` on `connection`, whose headers (and nothing more) are out; OSError
        when the client left or stalled. Run on the loop."""
        stream = connection.stream
        assert isinstance(stream, IOStream) and stream.socket is not None
        duplicate = stream.socket.dup()  # (non-blocking like the original: one description)
        try:
            await asyncio.wrap_future(self._executor().submit(
                send_all, duplicate, body, self._stall_timeout))
        finally:
            duplicate.close()
        # Tornado counts the body's bytes against Content-Length as they pass through it; these
        # did not (tornado is pinned: pyproject.toml)
        remaining = connection._expected_content_remaining
        if remaining is not None:
            connection._expected_content_remaining = remaining - len(body)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._workers, thread_name_prefix="api-send")
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


def send_all(sock: socket.socket, body: bytes, stall_timeout: float) -> None:
    """Write all of `body` to the non-blocking `sock`, waiting while its buffer is full;
    TimeoutError after `stall_timeout` seconds without progress. Run on a sender thread."""
    view = memoryview(body)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    sent = 0
    while sent < len(view):
        try:
            sent += sock.send(view[sent:])
        except BlockingIOError:
            if not poller.poll(stall_timeout * 1000):
                raise TimeoutError(f"the client read nothing for {stall_timeout:g} s "
                                   f"({sent} of {len(view)} bytes sent)") from None
