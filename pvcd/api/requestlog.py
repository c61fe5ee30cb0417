"""What the API writes to the logs about requests: the access log and the audit log.

Neither ever holds a secret. A token given as the `token` value in the query string is replaced
by `<redacted>` in every URI logged (`redact_uri`); headers (`X-Api-Key`, the session cookie) and
bodies are never logged. Tornado's own reports of a failed request (`log_exception`, which would
print the whole request with its headers) go through `log_failure` instead.

The audit log (logger `pvcd.audit`) has one line per request that may change state (POST, PUT,
PATCH, DELETE), whatever its outcome: who (the token's name, `pvcd.api.auth`), how it proved it,
the client address, the method, the path (without the query string) and the status. An operator
can send it elsewhere by configuring that logger.
"""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import unquote_plus

import tornado.httputil
import tornado.web
from tornado.log import access_log, app_log, gen_log

from pvcd.api.auth import Identity

audit_log = logging.getLogger("pvcd.audit")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECRET_VALUES = frozenset({"token"})  # values of the query string never logged
REDACTED = "<redacted>"
_PLAIN = re.compile(r"[^\s\"'=\\]+")


def redact_uri(uri: str) -> str:
    """`uri` with the value of every secret query value replaced (names are matched as Tornado
    decodes them, so `%74oken=` is redacted too)."""
    path, sep, query = uri.partition("?")
    if not sep:
        return uri
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        if unquote_plus(name, errors="replace") in SECRET_VALUES:
            part = f"{name}={REDACTED}" if eq else name
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


def request_summary(request: tornado.httputil.HTTPServerRequest) -> str:
    return f"{request.method} {redact_uri(request.uri or '')} ({request.remote_ip})"


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The access log: 510 is the API's answer to a request it refuses (bad input, a backend
    saying no), not a server fault, so it is a warning; 500 (a bug) stays an error."""
    status = handler.get_status()
    if status < 400:
        level = logging.INFO
    elif status < 500 or status == 510:
        level = logging.WARNING
    else:
        level = logging.ERROR
    request = handler.request
    access_log.log(level, "%d %s %.1fms", status, request_summary(request),
                   1000.0 * request.request_time())


def log_failure(request: tornado.httputil.HTTPServerRequest, error: BaseException) -> None:
    """Tornado's report of an uncaught exception or a logged HTTPError, without the request's
    headers and with its URI redacted."""
    if isinstance(error, tornado.web.HTTPError):
        message = error.get_message()
        if message:
            gen_log.warning("%d %s: %s", error.status_code, request_summary(request), message)
    else:
        app_log.error("Uncaught exception %s", request_summary(request),
                      exc_info=(type(error), error, error.__traceback__))


def audit(identity: Identity | None, request: tornado.httputil.HTTPServerRequest,
          status: int) -> None:
    """One audit line for a request that may change state; nothing for a read."""
    if request.method not in WRITE_METHODS:
        return
    who, via = (identity.who, identity.via) if identity else ("unauthenticated", "none")
    audit_log.info("event=api-write who=%s via=%s client=%s method=%s path=%s status=%d",
                   _quote(who), via, _quote(request.remote_ip or ""), request.method,
                   _quote(request.path), status)


def _quote(text: str) -> str:
    """A key=value log value: as is when plain, else a JSON string (spaces, quotes, `=`)."""
    return text if _PLAIN.fullmatch(text) else json.dumps(text)
