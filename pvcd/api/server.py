"""Runs the API on its own thread and event loop, started and stopped as the primary moves.

`start()` binds the listening socket synchronously (so a busy address is an immediate, retryable
error for the coordinator) and then serves on a fresh event loop thread, with the connection
limits of `pvcd.api.connections`. `stop()` stops accepting, lets requests in flight finish
(bounded), closes every connection — including idle keep-alive ones, so no client keeps talking
to an old primary — and ends the thread. While it runs, the server removes expired login
sessions every `session_sweep_interval` seconds (`pvcd.api.sessions`).

An API without authentication listens on loopback only: the server refuses to be built for any
other address unless `api.auth.allow_unauthenticated` says so, and then logs a warning (when the
daemon starts).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence

import tornado.ioloop
import tornado.netutil

from pvcd.api.app import make_app
from pvcd.api.base import ApiContext
from pvcd.api.connections import ConnectionLimits, GuardedHTTPServer
from pvcd.config.schema import ApiSection
from pvcd.domain.errors import ConfigError
from pvcd.drivers.netns import run_in_netns

log = logging.getLogger(__name__)

SESSION_SWEEP_INTERVAL = 60.0


class ApiServer:
    def __init__(self, ctx: ApiContext, address: str, port: int, cookie_secret: str,
                 ssl_context: ssl.SSLContext | None = None, drain_timeout: float = 2.0,
                 extra_listen: list[tuple[str, str | None]] | None = None,
                 limits: ConnectionLimits | None = None, allow_unauthenticated: bool = False,
                 session_sweep_interval: float = SESSION_SWEEP_INTERVAL) -> None:
        addresses = [address, *(a for a, _ in extra_listen or [])]
        self.exposed = [] if ctx.auth_enabled else not_loopback(addresses)
        if self.exposed and not allow_unauthenticated:
            raise ConfigError(
                f"api.auth.enabled is false and the API would listen on "
                f"{', '.join(self.exposed)}, not only on loopback: enable authentication, "
                "listen on 127.0.0.1, or set api.auth.allow_unauthenticated: true to serve "
                "anyone who can reach it")
        if self.exposed:
            log.warning("event=api-unauthenticated addresses=%s: authentication is off "
                        "(api.auth.allow_unauthenticated): anyone who reaches these addresses "
                        "controls the cluster", ",".join(self.exposed))
        self.limits = limits or ConnectionLimits.from_config(ApiSection())
        self.session_sweep_interval = session_sweep_interval
        self.ctx = ctx
        self.address = address
        self.port = port
        self.cookie_secret = cookie_secret
        self.ssl_context = ssl_context
        self.drain_timeout = drain_timeout
        # more (address, network namespace) to listen on, e.g. the floating IP in the lab's
        # node namespace: the socket is made inside the namespace and served from here
        self.extra_listen = extra_listen or []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: GuardedHTTPServer | None = None
        self._sweeper: tornado.ioloop.PeriodicCallback | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def http_server(self) -> GuardedHTTPServer | None:
        """The HTTP server while running (its connection counts)."""
        return self._server

    @property
    def thread(self) -> threading.Thread | None:
        """The thread the API's event loop runs on, while running."""
        return self._thread

    def start(self) -> None:
        if self._thread is not None:
            return
        sockets = tornado.netutil.bind_sockets(self.port, self.address, family=_family(
            self.address), reuse_port=False)
        try:
            for address, netns in self.extra_listen:
                sockets += run_in_netns(netns, self._binder(address))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sockets, ready),
                                        name="api", daemon=True)
        self._thread.start()
        ready.wait(10)
        log.info("event=api-listening address=%s port=%d tls=%s", self.address, self.port,
                 self.ssl_context is not None)

    def _binder(self, address: str) -> Callable[[], list[socket.socket]]:
        def bind() -> list[socket.socket]:
            return tornado.netutil.bind_sockets(self.port, address, family=_family(address),
                                                reuse_port=False)

        return bind

    def _run(self, sockets: list[socket.socket], ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop

        async def serve() -> None:
            app = make_app(self.ctx, self.cookie_secret)
            self._server = GuardedHTTPServer(app, limits=self.limits,
                                             ssl_options=self.ssl_context, xheaders=False)
            self._server.add_sockets(sockets)
            sweeper = tornado.ioloop.PeriodicCallback(self.ctx.sessions.sweep,
                                                      self.session_sweep_interval * 1000)
            sweeper.start()
            self._sweeper = sweeper
            ready.set()

        loop.run_until_complete(serve())
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(self.drain_timeout + 5)
        except Exception:
            log.exception("event=api-stop-error")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self.ctx.bulk.close()  # (its threads start again with the next request that needs them)
        self._thread = None
        self._loop = None
        self._server = None
        log.info("event=api-stopped address=%s port=%d", self.address, self.port)

    async def _shutdown(self) -> None:
        server = self._server
        if server is None:
            return
        server.stop()  # no new connections
        if self._sweeper is not None:
            self._sweeper.stop()
        deadline = time.monotonic() + self.drain_timeout
        while self.ctx.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)  # let the last responses leave the socket buffers
        await server.close_all_connections()


def not_loopback(addresses: Sequence[str]) -> list[str]:
    """The addresses (IP literals; wildcards included) that are not loopback."""
    return [a for a in addresses if not ipaddress.ip_address(a).is_loopback]


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def make_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context
