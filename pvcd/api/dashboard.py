"""The web dashboard, served by the API's own Tornado application next to `/api/v1`.

- `/` is the dashboard (one page; its views are `#/nodes`, `#/vms`, ...). Without a session it
  redirects to `/login` (the page itself holds no data: it reads everything from the API).
- `/login` is the login page; its script posts the token to `/api/v1/auth/login`, which sets
  the session cookie (`pvcd.api.sessions`) and answers the session's CSRF token.
- `/static/...` is the script, the style and the vendored libraries (public: nothing secret).
- `/events` is the live stream of changes (`pvcd.api.change_feed`), server-sent events,
  authenticated like any API endpoint (session cookie or `X-Api-Key`): 401 otherwise. Node logs
  and VM consoles come only to a stream that follows them (`?follow=log:<node>`,
  `?follow=console:<vm uuid>`, repeated); a bad `follow` is a 510 before the stream opens.

Every page answers with a Content Security Policy that allows only this origin's scripts, plus
the one inline import map by its hash (it maps `preact` to the vendored file, for the hooks
module's import); no inline script, no framing, no sniffing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import tornado.iostream
import tornado.web

from pvcd.api.base import API_SECURITY_HEADERS, ApiContext, BaseHandler
from pvcd.api.change_feed import ChangeFeed, Subscriber, parse_follows
from pvcd.web import PAGES_DIR, STATIC_DIR

HEARTBEAT = 15.0  # seconds between comments on an idle stream (proxies, dead clients)
RECONNECT_MS = 1000  # what EventSource waits before it reconnects (a primary handover)
_IMPORT_MAP = re.compile(rb'<script type="importmap">(.*?)</script>', re.S)


def page_policy(page: bytes) -> str:
    """The Content Security Policy of `page`: this origin only, and its import map by hash."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(m).digest()).decode()}'"
                      for m in _IMPORT_MAP.findall(page))
    return ("default-src 'none'; script-src 'self' " + hashes + "; style-src 'self'; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


@dataclass(frozen=True)
class Page:
    body: bytes
    policy: str

    @classmethod
    def read(cls, name: str) -> Page:
        body = (PAGES_DIR / name).read_bytes()
        return cls(body, page_policy(body))


class PageHandler(BaseHandler):
    """One HTML page of the dashboard (read once per application)."""

    public = True

    def initialize(self, ctx: ApiContext, route: str = "unmatched",  # type: ignore[override]
                   page: Page | None = None) -> None:
        super().initialize(ctx, route)
        assert page is not None
        self.page = page

    def send_page(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", self.page.policy)
        self.set_header("Cache-Control", "no-store")
        self.finish(self.page.body)

    def logged_in(self) -> bool:
        return not self.ctx.auth_enabled or self.identity is not None


class DashboardHandler(PageHandler):
    def get(self) -> None:
        if not self.logged_in():
            return self.redirect("/login")
        self.send_page()


class LoginPageHandler(PageHandler):
    def get(self) -> None:
        if self.ctx.auth_enabled and self.identity is not None:
            return self.redirect("/")
        self.send_page()


class StaticHandler(tornado.web.StaticFileHandler):
    def set_default_headers(self) -> None:
        for name, value in API_SECURITY_HEADERS.items():
            self.set_header(name, value)

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")  # revalidated by ETag: never stale


class EventsHandler(BaseHandler):
    """Server-sent events: `change` events (`pvcd.api.change_feed`) until the client leaves,
    is too slow (dropped), its session ends (checked before each event and heartbeat), or the
    API stops (a handover: the browser reconnects by itself)."""

    subscriber: Subscriber | None = None

    def initialize(self, ctx: ApiContext, route: str = "unmatched",  # type: ignore[override]
                   feed: ChangeFeed | None = None) -> None:
        super().initialize(ctx, route)
        assert feed is not None
        self.feed = feed

    async def get(self) -> None:
        feed = self.feed
        follows = parse_follows(self.get_query_arguments("follow"))
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")
        subscriber = self.subscriber = feed.attach(self._drop, follows)
        self._uncount()  # a stream is not a request in flight: a handover need not wait for it
        try:
            self.write(f"retry: {RECONNECT_MS}\nevent: hello\ndata: {{}}\n\n")
            await self.flush()
            await self._pump(subscriber)
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            feed.detach(subscriber)

    async def _pump(self, subscriber: Subscriber) -> None:
        while not subscriber.dropped:
            try:
                await asyncio.wait_for(subscriber.ready.wait(), HEARTBEAT)
            except TimeoutError:
                self.write(": idle\n\n")
            subscriber.ready.clear()
            if not self._session_open():
                return  # logged out or expired: the stream ends, nothing more is sent
            while subscriber.queue:
                self.write(subscriber.queue.popleft())
            await self.flush()

    def _session_open(self) -> bool:
        """Whether a stream opened with a session may go on: its session is still open (a
        logout, its expiry or its token's removal ends it). A token's stream: always."""
        identity = self.identity
        if identity is None or identity.via != "session":
            return True
        sid = self.session_id()
        return sid is not None and self.ctx.sessions.token_name(sid) is not None

    def _drop(self) -> None:
        if self.request.connection is not None and not self._finished:
            self.request.connection.close()  # type: ignore[attr-defined]

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self.subscriber is not None:  # the client left: end the pump
            self.subscriber.dropped = True
            self.subscriber.ready.set()


Handler = tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]


def web_handlers(ctx: ApiContext) -> list[Handler]:
    """The dashboard's routes, for `pvcd.api.app.make_app`: one change feed per application
    (the API's run on one event loop)."""
    feed = ChangeFeed(ctx.view, ctx.vm_list, ctx.node_list)
    return [
        (r"/", DashboardHandler, {"ctx": ctx, "route": "/", "page": Page.read("index.html")}),
        (r"/login", LoginPageHandler,
         {"ctx": ctx, "route": "/login", "page": Page.read("login.html")}),
        (r"/events", EventsHandler, {"ctx": ctx, "route": "/events", "feed": feed}),
        (r"/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}),
    ]
