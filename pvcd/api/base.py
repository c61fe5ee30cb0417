"""The request pipeline shared by every handler.

`prepare()` parses the values and authenticates; each handler method is a few lines that call
into the domain; errors are mapped to HTTP in exactly one place (`_handle_request_exception`):
`PvcError` → 510 with its message, `Unauthorized` → 401, anything else → 500 (logged).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import tornado.web

from pvcd.api.auth import SESSION_COOKIE, Tokens, session_expired
from pvcd.api.render import FragmentRenderer
from pvcd.api.values import RawValues, Values, declared
from pvcd.domain.errors import BackendError, Conflict, PvcError
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)


class RequestObserver(Protocol):
    """Where finished requests are reported (`pvcd.api.metrics.Metrics`)."""

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None: ...


@dataclass
class ApiContext:
    """What handlers may use: the cache view, the store, this node's name, the auth setup, and
    the API's own long-lived helpers. Built once per daemon by `pvcd.api.app.make_context`."""

    view: ClusterView
    store: Store
    node_name: str
    auth_enabled: bool
    tokens: Tokens
    vm_list: FragmentRenderer  # GET /vm: cached JSON fragments of the VMs
    node_list: FragmentRenderer  # GET /node
    # how long a storage request is waited for; None: this node does not manage Ceph
    storage_request_timeout: float | None = None
    clock: Callable[[], float] = time.time
    in_flight: int = 0
    metrics: RequestObserver | None = None


class Unauthorized(Exception):
    pass


class BaseHandler(tornado.web.RequestHandler):
    """Values, authentication and error rendering for every API endpoint."""

    ctx: ApiContext
    public = False  # True for /api/v1 and the auth endpoints

    def initialize(self, ctx: ApiContext,  # type: ignore[override]
                   route: str = "unmatched") -> None:
        self.ctx = ctx
        self.route_path = route  # the route's OpenAPI path: the metrics label

    def prepare(self) -> None:
        self.ctx.in_flight += 1
        self._counted = True
        req = self.request
        self._raw_values = RawValues.from_request(req.query_arguments, req.body_arguments,
                                                  req.headers.get("Content-Type", ""), req.body)
        self._values: Values | None = None
        if not self.public and self.ctx.auth_enabled and not self.authenticated():
            raise Unauthorized()
        # a method the endpoint does not have is 405 before any handler-specific check runs
        # (Tornado would only say so after the subclasses' prepare())
        allowed = self.allowed_methods()
        if allowed and req.method not in allowed:
            raise tornado.web.HTTPError(405)

    @property
    def values(self) -> Values:
        """The values this method declares (`pvcd.api.values.accepts`), all parsed and checked
        on first use: a handler's own checks that come first (the object exists, the endpoint
        is configured) keep their answer."""
        if self._values is None:
            method = getattr(self, (self.request.method or "").lower(), None)
            self._values = self._raw_values.parse(declared(method))
        return self._values

    def on_finish(self) -> None:
        if getattr(self, "_counted", False):
            self.ctx.in_flight -= 1
            self._counted = False
        if self.ctx.metrics is not None:
            method = self.request.method or ""
            self.ctx.metrics.observe_request(
                self.route_path, method if method in self.SUPPORTED_METHODS else "other",
                self.get_status(), self.request.request_time())

    # authentication
    def authenticated(self) -> bool:
        if self.session_id() is not None:
            return True
        token = self.request.headers.get("X-Api-Key") or self._raw_values.get("token")
        return self.ctx.tokens.valid(token)

    def session_id(self) -> str | None:
        """The id of a valid session named by the signed cookie, or None."""
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=1)
        if not raw:
            return None
        sid = raw.decode(errors="replace")
        doc = self.ctx.view.cache.get(self.ctx.view.paths.session(sid))
        if not isinstance(doc, dict):
            return None
        if session_expired(float(doc.get("expires", 0)), self.ctx.clock()):
            return None
        if not self.ctx.tokens.knows_digest(str(doc.get("token_sha256", ""))):
            return None
        return sid

    # responses
    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def reply_json(self, text: str, status: int = 200) -> None:
        """Send an already encoded JSON document."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(text)

    def message(self, text: str, status: int = 200) -> None:
        self.reply({"message": text}, status)

    async def commit(self, ops: Sequence[Op]) -> list[Any]:
        """One compare-and-set transaction, awaited without blocking the loop."""
        return await asyncio.wrap_future(self.ctx.store.commit_async(ops))

    # errors
    def _handle_request_exception(self, e: BaseException) -> None:
        if self._finished:
            return
        if isinstance(e, Unauthorized):
            self.message("Authentication required", 401)
        elif isinstance(e, PvcError):
            if isinstance(e, (BackendError, Conflict)):
                log.warning("event=api-failure path=%s error=%s", self.request.path, e)
            self.message(str(e), 510)
        elif isinstance(e, tornado.web.HTTPError) and e.status_code in (404, 405):
            if e.status_code == 405:  # RFC 9110: a 405 lists the methods the resource has
                self.set_header("Allow", ", ".join(self.allowed_methods()))
            self.message(_http_message(e.status_code), e.status_code)
        else:
            super()._handle_request_exception(e)  # type: ignore[misc]

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The HTTP methods this handler implements (not Tornado's 405 defaults)."""
        return [m for m in cls.SUPPORTED_METHODS
                if getattr(cls, m.lower()) is not getattr(tornado.web.RequestHandler, m.lower())]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": _http_message(status_code)}))


class NotFoundHandler(BaseHandler):
    """Unknown paths: JSON 404 (after authentication, so it reveals nothing to strangers)."""

    def prepare(self) -> None:
        super().prepare()
        raise tornado.web.HTTPError(404)


def _http_message(status: int) -> str:
    return {404: "Not found", 405: "Method not allowed"}.get(status, f"HTTP error {status}")
