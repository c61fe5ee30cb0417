"""The API's HTTP server, hardened against clients that hold connections or file descriptors.

The API runs inside the primary's daemon, so a file descriptor it spends on an idle client is one
the daemon's ZooKeeper session, libvirt and controllers may lack. Tornado's `HTTPServer` as is
accepts without limit, waits 3,600 s for a request's headers, and its accept loop spins at 100 %
CPU once the process is out of file descriptors (`accept()` fails with EMFILE, the error escapes
the loop's reader callback, the listening socket stays readable, and the callback runs again at
once, forever). `GuardedHTTPServer` adds:

- timeouts: a client has `header_timeout` seconds to send a request's headers (which is also how
  long a kept-alive connection may stay idle) and `body_timeout` for its body;
- a cap on open connections per client address: the next one is accepted and closed at once;
- a cap on open connections in all (`max_connections`, lowered if need be so that the process's
  open-file limit keeps `DESCRIPTOR_RESERVE` descriptors for the rest of the daemon): at the
  cap, a new connection takes the place of the one that has waited longest for a request (an
  idle client: it sent nothing yet, or nothing since its last answer), so idle connections from
  many addresses cannot keep a client that sends its request at once waiting; only when every
  connection is in the middle of a request does the server stop accepting until one closes
  (further clients wait in the listen backlog);
- an accept loop that backs off when `accept()` fails for lack of resources (EMFILE, ENFILE,
  ENOBUFS, ENOMEM): it stops watching the socket and tries again after a pause that doubles up to
  one second, instead of spinning. Connections freed in the meantime (timeouts, closes) let it
  resume; the pending clients wait in the backlog.

Tornado's private `_handle_connection` (wrap in TLS, make the stream, `handle_stream`) is reused
for each accepted socket; `_sockets` and `_handlers` are filled as `TCPServer.add_sockets` does,
so `stop()` works unchanged.
"""

from __future__ import annotations

import errno
import logging
import resource
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.iostream
from tornado import httputil
from tornado.http1connection import HTTP1ServerConnection
from tornado.ioloop import IOLoop

from pvcd.config.schema import ApiSection

log = logging.getLogger(__name__)

OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BATCH = 128  # accepts per readiness event, as Tornado's loop does
FIRST_PAUSE, LONGEST_PAUSE = 0.05, 1.0
MAX_HEADER_SIZE = 16 * 1024
# file descriptors the API leaves to the rest of the daemon (ZooKeeper, libvirt, netlink,
# dnsmasq, logs): `max_connections` is lowered to fit the process's limit with these spare
DESCRIPTOR_RESERVE = 256


def connection_budget() -> int:
    """How many connections the process's open-file limit leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft - DESCRIPTOR_RESERVE) if soft != resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_connections: int
    max_connections_per_client: int
    max_body_size: int  # until a handler sets its own limit for the request (`BaseHandler`)

    @classmethod
    def from_config(cls, api: ApiSection) -> ConnectionLimits:
        return cls(api.header_timeout, api.body_timeout, api.max_connections,
                   api.max_connections_per_client, api.max_body_size)


# bytes read from a socket at once and handed to a streaming handler: 1 MiB chunks cost an
# upload (pvcd.api.uploads) 16 x fewer trips through the event loop than Tornado's 64 KiB.
# Each read allocates a buffer of its size (1 MiB: ~40 us), so a connection reads its requests'
# headers (and small bodies) 64 KiB at a time; an endpoint that takes large bodies switches
# (`BaseHandler._set_max_body_size`)
BODY_READ_CHUNK = 1 << 20
HEADER_READ_CHUNK = 64 * 1024


class GuardedHTTPServer(tornado.httpserver.HTTPServer):
    # `HTTPServer` is a Tornado `Configurable`: construction calls `initialize`
    def initialize(self, request_callback: Any,  # type: ignore[override]
                   limits: ConnectionLimits, **kwargs: Any) -> None:
        super().initialize(request_callback, idle_connection_timeout=limits.header_timeout,
                           body_timeout=limits.body_timeout,
                           max_body_size=limits.max_body_size,
                           max_header_size=MAX_HEADER_SIZE, chunk_size=BODY_READ_CHUNK,
                           **kwargs)
        self.read_chunk_size = HEADER_READ_CHUNK  # of each new connection's stream
        self.limits = limits
        self.max_connections = min(limits.max_connections, connection_budget())
        if self.max_connections < limits.max_connections:
            log.warning("event=api-connections-capped max_connections=%d limit=%d: the "
                        "process may open few files (raise LimitNOFILE); %d descriptors are "
                        "kept for the rest of the daemon", limits.max_connections,
                        self.max_connections, DESCRIPTOR_RESERVE)
        self._per_client: Counter[str] = Counter()
        self._client_of: dict[tornado.iostream.IOStream, str] = {}  # per open connection
        # connections waiting for a request's headers, oldest first (dict order)
        self._idle: dict[tornado.iostream.IOStream, None] = {}
        self._accepting: dict[int, bool] = {}  # listening fd: watched by the loop
        self._pause = FIRST_PAUSE
        self.refused_per_client = 0  # connections closed at once for the per-client cap
        self.accept_pauses = 0  # times accepting paused for lack of file descriptors
        self.evicted_idle = 0  # idle connections closed to make room for a new one

    @property
    def open_connections(self) -> int:
        return len(self._client_of)

    def add_sockets(self, sockets: Any) -> None:
        for sock in sockets:
            fd = sock.fileno()
            self._sockets[fd] = sock
            self._handlers[fd] = self._remover(fd)
            self._watch(fd)

    def _remover(self, fd: int) -> Any:
        def remove() -> None:
            if self._accepting.pop(fd, False):
                IOLoop.current().remove_handler(fd)

        return remove

    def _watch(self, fd: int) -> None:
        if not self._accepting.get(fd, False) and fd in self._sockets and not self._stopped:
            IOLoop.current().add_handler(fd, self._on_readable, IOLoop.READ)
            self._accepting[fd] = True

    def _unwatch(self, fd: int) -> None:
        if self._accepting.get(fd, False):
            IOLoop.current().remove_handler(fd)
            self._accepting[fd] = False

    def _on_readable(self, fd: int, events: int) -> None:
        sock = self._sockets.get(fd)
        if sock is None:
            return
        for _ in range(ACCEPT_BATCH):
            if self.open_connections >= self.max_connections and not self._idle:
                self._unwatch(fd)  # every connection is busy: resumed by the next close
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                self._pause = FIRST_PAUSE
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise
                self._back_off(fd, exc)
                return
            if self.open_connections >= self.max_connections:
                self._evict_idle()
            self._handle_connection(connection, address)  # type: ignore[attr-defined]

    def _back_off(self, fd: int, exc: OSError) -> None:
        self._unwatch(fd)
        self.accept_pauses += 1
        log.warning("event=api-accept-paused error=%s pause=%.2fs open=%d",
                    errno.errorcode.get(exc.errno or 0, exc.errno), self._pause,
                    self.open_connections)
        IOLoop.current().call_later(self._pause, self._watch, fd)
        self._pause = min(self._pause * 2, LONGEST_PAUSE)

    def _evict_idle(self) -> None:
        """Close the connection that has waited longest for a request."""
        stream = next(iter(self._idle))
        self._forget(stream)
        stream.close()
        self.evicted_idle += 1

    def handle_stream(self, stream: tornado.iostream.IOStream, address: Any) -> None:
        client = address[0] if isinstance(address, tuple) and address else str(address)
        if self._per_client[client] >= self.limits.max_connections_per_client:
            self.refused_per_client += 1
            stream.close()
            return
        self._client_of[stream] = client
        self._per_client[client] += 1
        super().handle_stream(stream, address)

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        # called when a connection starts waiting for its next request (the first one too)
        assert isinstance(server_conn, HTTP1ServerConnection)
        stream = server_conn.stream
        if stream in self._client_of:
            self._idle.pop(stream, None)
            self._idle[stream] = None  # the newest idle one
        return _Busy(super().start_request(server_conn, request_conn),
                     lambda: self._idle.pop(stream, None))

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        assert isinstance(server_conn, HTTP1ServerConnection)
        self._forget(server_conn.stream)
        for fd in list(self._accepting):
            if self.open_connections < self.max_connections:
                self._watch(fd)

    def _forget(self, stream: tornado.iostream.IOStream) -> None:
        self._idle.pop(stream, None)
        client = self._client_of.pop(stream, None)  # None: forgotten already (evicted)
        if client is not None:
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]


class _Busy(httputil.HTTPMessageDelegate):
    """A request's delegate that reports when its headers are in: the connection is no longer
    idle (and may not be evicted) until it waits for its next request."""

    def __init__(self, inner: httputil.HTTPMessageDelegate, busy: Callable[[], object]) -> None:
        self.inner = inner
        self.busy = busy

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        self.busy()
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()
