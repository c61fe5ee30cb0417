"""The request pipeline shared by every handler.

Handlers stream their bodies (`stream_request_body`), so Tornado calls `prepare()` as soon as a
request's headers are in, before it reads a byte of the body. The order of work:

1. `prepare()`, from the headers alone: who the client is (a session cookie; a token in
   `X-Api-Key` or the query string). A client over its budget of failed credentials gets 429
   (`pvcd.api.ratelimit`), a bad token 401, and a request that needs authentication and cannot
   carry its token in a small body (`UNAUTHENTICATED_BODY_SIZE`) 401, all before its body is
   read. Then the CSRF check of cookie sessions (`pvcd.api.sessions`), 405 for a method the
   endpoint lacks, and the body limit: the endpoint's `max_body_size` for an authenticated
   client, 64 KiB for another; a larger `Content-Length` is 413 at once, and Tornado enforces
   the limit on the bytes as they come.
2. The body arrives (`data_received`).
3. `_after_body`, which `prepare()` puts in front of the handler method: the body is parsed and
   a client not yet authenticated presents the `token` value it sent in the body.
4. The handler method; `values` parses the values it declares on first use.

Errors are mapped to HTTP in exactly one place (`_handle_request_exception`): `Refused` → its
status and message, `PvcError` → 510 with its message, anything else → 500 (logged without the
request's headers, `pvcd.api.requestlog`). Every request that may change state leaves one line
in the audit log, naming the token it acted with.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Protocol

import tornado.httputil
import tornado.web
from tornado.http1connection import HTTP1Connection

from pvcd.api.auth import ANONYMOUS, SESSION_COOKIE, Identity, Tokens
from pvcd.api.bulk_send import BulkSender
from pvcd.api.connections import BODY_READ_CHUNK, HEADER_READ_CHUNK
from pvcd.api.ratelimit import FailureLimiter, retry_after_header
from pvcd.api.ready_list import Answer, Keep, ReadyList, accepts_gzip
from pvcd.api.render import FragmentRenderer
from pvcd.api.requestlog import WRITE_METHODS, audit, log_failure
from pvcd.api.sessions import CSRF_HEADER, Sessions, csrf_token, csrf_valid, same_origin
from pvcd.api.upload_port import Uploads
from pvcd.api.values import RawValues, Values, declared
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, PvcError
from pvcd.domain.pool_space import PoolSpace
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.upload_pipe import UploadPipes

log = logging.getLogger(__name__)

# on every answer of the API: never framed, never sniffed into another type, and no content of
# its own (a JSON answer opened in a browser runs nothing); the dashboard's pages have their own
API_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "same-origin",
}

# what a client not authenticated by its headers may send: a login form, or a small request
# with its token among the values
UNAUTHENTICATED_BODY_SIZE = 64 * 1024
UNLIMITED = 1 << 62


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
    vm_list: FragmentRenderer  # cached JSON fragments of the VMs (GET /vm, the dashboard)
    vm_answers: ReadyList[Any]  # GET /vm: the list as ready-made bytes
    node_list: FragmentRenderer  # GET /node
    sessions: Sessions
    failures: FailureLimiter  # failed credentials per client address
    max_body_size: int  # of a request to an endpoint that declares no limit of its own
    task_wait: float = 120.0  # the longest a `wait` on a task waits (api.task_wait)
    # how long a storage request is waited for; None: this node does not manage Ceph
    storage_request_timeout: float | None = None
    upload_service: Uploads | None = None  # the process's upload service; None: no Ceph here
    clock: Callable[[], float] = time.time
    in_flight: int = 0
    metrics: RequestObserver | None = None
    # uploads in flight: their bodies, by task id, for the tasks that consume them on this node
    uploads: UploadPipes = field(default_factory=UploadPipes)
    # a pool's usage from Ceph (`CephDriver.pool_space`, blocking); None without Ceph
    pool_space: Callable[[str], PoolSpace] | None = None
    # the upstream floating address (`networks.upstream.floating_ip`), for `GET /status`
    upstream_ip: str | None = None
    # backup.allowed_paths: where a cluster restore saves the state it replaces
    backup_paths: tuple[str, ...] = ()
    # the threads that send large bodies (a 3-30 MB `GET /vm`) off the event loop
    bulk: BulkSender = field(default_factory=BulkSender)


class Refused(Exception):
    """A request the pipeline refuses: the status, the message, extra response headers."""

    def __init__(self, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Unauthorized(Refused):
    def __init__(self) -> None:
        super().__init__(401, "Authentication required")


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """Authentication, body limits, values and error rendering for every API endpoint."""

    ctx: ApiContext
    public = False  # True for /api/v1 and the auth endpoints
    # the largest body this endpoint reads; None: the API's `api.max_body_size`. An upload
    # endpoint raises it for itself
    max_body_size: int | None = None
    _allowed: ClassVar[tuple[str, ...] | None] = None  # allowed_methods(), once per class

    def initialize(self, ctx: ApiContext,  # type: ignore[override]
                   route: str = "unmatched") -> None:
        self.ctx = ctx
        self.route_path = route  # the route's OpenAPI path: the metrics label
        self.identity: Identity | None = None  # who the request acts as, once known
        self._chunks: list[bytes] = []
        self._raw_values: RawValues | None = None
        self._values: Values | None = None
        self._counted = False
        self._body_read = False

    def prepare(self) -> None:
        self.ctx.in_flight += 1
        self._counted = True
        req = self.request
        protected = not self.public and self.ctx.auth_enabled
        self.identity = self._identity_from_headers(protected)
        token_in_body = False
        if protected and self.identity is None:
            if not self._small_body():
                raise Unauthorized()
            token_in_body = True  # checked once the (small) body is in
        self._refuse_cross_site()
        # a method the endpoint does not have is 405 before any handler-specific check runs
        allowed = self.allowed_methods()
        if allowed and req.method not in allowed:
            raise tornado.web.HTTPError(405)
        self._limit_body(UNAUTHENTICATED_BODY_SIZE if (self.identity is None and self.public)
                         or token_in_body else self.max_body_size or self.ctx.max_body_size)
        self._run_after_body(token_in_body)
        if not token_in_body and (self.identity is not None or not protected):
            self.authenticated()

    def _refuse_cross_site(self) -> None:
        """CSRF: a request that may change state and comes from a browser page (it has an
        `Origin`), or rests on a session cookie, must come from this API's own origin."""
        req = self.request
        if req.method not in WRITE_METHODS:
            return
        origin = req.headers.get("Origin")
        by_session = self.identity is not None and self.identity.via == "session"
        if (by_session or origin is not None) and not same_origin(
                origin, req.headers.get("Referer"), req.host):
            raise Refused(403, "Cross-site request refused: a request that changes state from "
                               "a browser or with a session cookie must come from this API's "
                               "own origin (an Origin or Referer header naming it); scripts "
                               "can send the token in the X-Api-Key header instead")
        if by_session and not csrf_valid(self.cookie_secret, self.session_id() or "",
                                         req.headers.get(CSRF_HEADER)):
            raise Refused(403, f"Cross-site request refused: a request that changes state with "
                               f"a session cookie must carry the session's {CSRF_HEADER} "
                               "header (from the login answer or GET /api/v1/auth/session); "
                               "scripts can send the token in the X-Api-Key header instead")

    @property
    def cookie_secret(self) -> str:
        return str(self.application.settings.get("cookie_secret") or "")

    def csrf_token(self) -> str | None:
        """This request's session's CSRF token; None without a session."""
        sid = self.session_id()
        return None if sid is None else csrf_token(self.cookie_secret, sid)

    # the body
    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def _small_body(self) -> bool:
        """Whether the request declares a body small enough to read before authentication."""
        length = self.request.headers.get("Content-Length", "")
        return length.isdigit() and 0 < int(length) <= UNAUTHENTICATED_BODY_SIZE

    def _limit_body(self, limit: int) -> None:
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise Refused(413, f"Request body too large: {int(length)} bytes; this endpoint "
                               f"accepts at most {limit} bytes")
        self._set_max_body_size(limit)

    def _set_max_body_size(self, limit: int) -> None:
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):  # always, but for hand-made requests
            connection.set_max_body_size(limit)
            # a large body is read in large pieces (an upload); anything else in small ones,
            # since each read allocates a buffer of that size
            connection.stream.read_chunk_size = BODY_READ_CHUNK \
                if limit > UNAUTHENTICATED_BODY_SIZE and self.max_body_size is not None \
                else HEADER_READ_CHUNK

    def _run_after_body(self, token_in_body: bool) -> None:
        """Put `_after_body` in front of the handler method, which Tornado looks up and calls
        once the whole body is in."""
        name = (self.request.method or "").lower()
        method = getattr(self, name)

        @functools.wraps(method)
        async def after_body(*args: Any, **kwargs: Any) -> None:
            self._after_body(token_in_body)
            result = method(*args, **kwargs)
            if inspect.isawaitable(result):
                await result

        setattr(self, name, after_body)

    def _after_body(self, token_in_body: bool) -> None:
        self._body_read = True
        req = self.request
        req.body = b"".join(self._chunks)
        self._chunks = []
        if req.body:
            try:
                tornado.httputil.parse_body_arguments(
                    req.headers.get("Content-Type", ""), req.body, req.body_arguments,
                    req.files, req.headers)
            except tornado.httputil.HTTPInputError as exc:
                if token_in_body:
                    raise Unauthorized() from None
                raise InvalidValue(f"the request body cannot be read: {exc}") from None
        if token_in_body:
            try:
                token = self.raw_values.get("token")
            except InvalidValue:
                raise Unauthorized() from None
            self.identity = self._token_identity(token)
            if self.identity is None:
                raise Unauthorized()
            self.authenticated()

    def authenticated(self) -> None:
        """Checks a handler makes only for a known client (a stranger learns nothing from
        them): run in `prepare` once the headers say who it is, else once the token in the
        body has been checked. Overridden where needed."""

    @property
    def raw_values(self) -> RawValues:
        """The request's values as texts (query string and body), read once the body is in."""
        if self._raw_values is None:
            req = self.request
            self._raw_values = RawValues.from_request(
                req.query_arguments, req.body_arguments, req.headers.get("Content-Type", ""),
                req.body)
        return self._raw_values

    @property
    def values(self) -> Values:
        """The values this method declares (`pvcd.api.values.accepts`), all parsed and checked
        on first use: a handler's own checks that come first (the object exists, the endpoint
        is configured) keep their answer."""
        if self._values is None:
            method = getattr(self, (self.request.method or "").lower(), None)
            self._values = self.raw_values.parse(declared(method))
        return self._values

    def on_finish(self) -> None:
        self._uncount()
        audit(self.identity, self.request, self.get_status())
        if self.ctx.metrics is not None:
            method = self.request.method or ""
            self.ctx.metrics.observe_request(
                self.route_path, method if method in self.SUPPORTED_METHODS else "other",
                self.get_status(), self.request.request_time())

    def on_connection_close(self) -> None:
        # the client left, perhaps in the middle of its body: no on_finish will come then
        super().on_connection_close()  # ends the wait for the rest of the body
        if not self._finished:
            self._uncount()

    def _uncount(self) -> None:
        if self._counted:
            self.ctx.in_flight -= 1
            self._counted = False

    # authentication
    def _identity_from_headers(self, protected: bool) -> Identity | None:
        """Who the headers (and the query string) say the client is: a session, else a token;
        None if they name nobody. A bad token is 401; a client over its budget of failures
        429, before its token is looked at."""
        if not self.ctx.auth_enabled:
            return ANONYMOUS
        name = self._session_token_name()
        if name is not None:
            return Identity(name, "session")
        if not protected:
            return None  # a public endpoint: a token in it means nothing (login checks its own)
        token = self.request.headers.get("X-Api-Key")
        if token is None:
            query = self.request.query_arguments.get("token")
            token = query[-1].decode(errors="replace") if query else None
        if not token:
            return None
        identity = self._token_identity(token)
        if identity is None:
            raise Unauthorized()
        return identity

    def _token_identity(self, token: str | None) -> Identity | None:
        """The identity of `token`, or None (a failure, counted when a token was given)."""
        self.refuse_if_over_failures()
        name = self.ctx.tokens.match(token)
        if name is None:
            if token:
                self.ctx.failures.record_failure(self.request.remote_ip or "")
            return None
        return Identity(name, "token")

    def refuse_if_over_failures(self) -> None:
        """429 with `Retry-After` if this client has failed too often (`pvcd.api.ratelimit`)."""
        wait = self.ctx.failures.retry_after(self.request.remote_ip or "")
        if wait is not None:
            raise Refused(429, "Too many failed authentication attempts from this address; "
                               f"try again in {retry_after_header(wait)} s",
                          {"Retry-After": retry_after_header(wait)})

    def session_id(self) -> str | None:
        """The session id named by a correctly signed, unexpired cookie, or None."""
        days = self.ctx.sessions.lifetime / 86400
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=days)
        return raw.decode(errors="replace") if raw else None

    def set_default_headers(self) -> None:
        for name, value in API_SECURITY_HEADERS.items():
            self.set_header(name, value)

    def _session_token_name(self) -> str | None:
        sid = self.session_id()
        return None if sid is None else self.ctx.sessions.token_name(sid)

    # responses
    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    async def reply_ready(self, answer: Answer[Any], variant: Hashable = None,
                          keep: Keep[Any] | None = None) -> None:
        """Send a ready-made list (`pvcd.api.ready_list`): 304 when the client's
        `If-None-Match` names it, gzipped when the client accepts that."""
        gzipped = accepts_gzip(self.request.headers.get("Accept-Encoding", ""))
        self.set_header("Vary", "Accept-Encoding")
        self.set_header("Cache-Control", "no-cache")  # a cache may keep it, but must ask first
        self.set_header("Etag", answer.etag(variant, gzipped))
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        body = answer.body(variant, keep)
        if gzipped:
            body = await answer.gzipped(variant, body)
            self.set_header("Content-Encoding", "gzip")
        if self.ctx.bulk.takes(self.request.connection, len(body)):
            await self.reply_bulk(body)
        else:
            self.reply_bytes(body)

    def reply_bytes(self, body: bytes, content_type: str = "application/json") -> None:
        """Send `body` as it is: the headers go first, on their own, so the body is handed to
        the socket without being copied behind them (Tornado joins the two otherwise)."""
        self.set_status(200)
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Length", len(body))
        self.flush()
        self.write(body)
        self.finish()

    async def reply_bulk(self, body: bytes, content_type: str = "application/json") -> None:
        """`reply_bytes` for a large body: a sender thread hands it to the kernel while the
        event loop serves others (`pvcd.api.bulk_send`). A client that leaves meanwhile, or
        stops reading, loses its connection (nothing to log: the answer was right)."""
        connection = self.request.connection
        assert isinstance(connection, HTTP1Connection)
        self.set_status(200)
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Length", len(body))
        try:
            await self.flush()  # the headers: the connection's buffer is empty once they left
            await self.ctx.bulk.send(connection, body)
        except OSError:  # (tornado's StreamClosedError included)
            connection.stream.close()
        self.finish()

    def message(self, text: str, status: int = 200) -> None:
        self.reply({"message": text}, status)

    async def commit(self, ops: Sequence[Op]) -> list[Any]:
        """One compare-and-set transaction, awaited without blocking the loop."""
        return await asyncio.wrap_future(self.ctx.store.commit_async(ops))

    # errors
    def _handle_request_exception(self, e: BaseException) -> None:
        if self._finished:
            return
        if not self._body_read:
            # answered before the body: Tornado discards what arrives of it until the answer
            # is sent, then closes the connection (and adds no 400 for a body over the limit)
            self.set_header("Connection", "close")
            self._set_max_body_size(UNLIMITED)
        if isinstance(e, Refused):
            for name, value in e.headers.items():
                self.set_header(name, value)
            self.message(e.message, e.status)
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

    def log_exception(self, typ: type[BaseException] | None, value: BaseException | None,
                      tb: TracebackType | None) -> None:
        if value is not None:
            log_failure(self.request, value)

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The HTTP methods this handler implements (not Tornado's 405 defaults)."""
        allowed = cls.__dict__.get("_allowed")  # asked on every request: worked out once
        if allowed is None:
            allowed = tuple(m for m in cls.SUPPORTED_METHODS if getattr(cls, m.lower())
                            is not getattr(tornado.web.RequestHandler, m.lower()))
            cls._allowed = allowed  # on this class, not inherited by subclasses
        return list(allowed)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": _http_message(status_code)}))


class NotFoundHandler(BaseHandler):
    """Unknown paths: JSON 404 (after authentication, so it reveals nothing to strangers)."""

    def prepare(self) -> None:
        super().prepare()
        if self.identity is None and self.ctx.auth_enabled:
            raise Unauthorized()  # not even a token in the body: the path is no one's business
        raise tornado.web.HTTPError(404)


def _http_message(status: int) -> str:
    return {404: "Not found", 405: "Method not allowed"}.get(status, f"HTTP error {status}")
