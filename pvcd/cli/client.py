"""A thin HTTP client of the API contract (the manual and objects.md), on `urllib.request`.

Values go in the query string for GET and DELETE and in a form body for POST and PUT, as the
manual describes; the token goes in the `X-Api-Key` header (never in a URL, where it would end
up in logs). Every failure becomes one of `pvcd.cli.errors`, with the API's `message` when it
sent one.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pvcd.cli.connection import Connection
from pvcd.cli.errors import (
    ApiConnectionLost,
    ApiFailure,
    ApiUnreachable,
    AuthenticationFailed,
    ConfigProblem,
)

# a list is a list value (extensions.md §0.2): sent once per item
Value = str | int | float | bool | list[str] | None
DEFAULT_TIMEOUT = 30.0
# Ceph writes finish before the API answers; the manual warns they can take 30 s or more
STORAGE_TIMEOUT = 300.0


def api_path(*segments: str | int) -> str:
    """`/vm/<name>/state` from its parts, each quoted (names may hold spaces, `:` or `/`)."""
    return "".join("/" + urllib.parse.quote(str(segment), safe="") for segment in segments)


def encode_values(values: Mapping[str, Value] | None) -> str:
    """Form encoding; None leaves a value out, booleans become true/false (flags), a list is
    one pair per item (an empty list one empty value: given, and empty, which clears a list in
    PUT)."""
    pairs: list[tuple[str, str]] = []
    for name, value in (values or {}).items():
        if value is None:
            continue
        if isinstance(value, list):
            pairs.extend((name, item) for item in value or [""])
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        if isinstance(value, list):
            pairs.extend((name, item) for item in value)
            continue
        pairs.append((name, str(value)))
    return urllib.parse.urlencode(pairs)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            snippet = self.body[:200].decode(errors="replace")
            raise ApiFailure(f"the API answered HTTP {self.status} with a body that is not "
                             f"JSON: {snippet!r}", self.status) from None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class ApiClient:
    def __init__(self, connection: Connection, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.connection = connection
        self.timeout = timeout
        self._ssl = _ssl_context(connection) if connection.url.startswith("https:") else None

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS settings of the connection (None for plain HTTP)."""
        return self._ssl

    # the verbs, as the commands use them
    def get(self, path: str, values: Mapping[str, Value] | None = None,
            timeout: float | None = None) -> Any:
        return self.request("GET", path, values, timeout).json()

    def get_text(self, path: str, values: Mapping[str, Value] | None = None) -> str:
        return self.request("GET", path, values).text()

    def post(self, path: str, values: Mapping[str, Value] | None = None,
             timeout: float | None = None) -> str:
        return _message(self.request("POST", path, values, timeout))

    def post_doc(self, path: str, values: Mapping[str, Value] | None = None,
                 timeout: float | None = None) -> Any:
        """POST, answering the whole JSON document (the message and e.g. a `wait` report)."""
        return self.request("POST", path, values, timeout).json()

    def put(self, path: str, values: Mapping[str, Value] | None = None,
            timeout: float | None = None) -> str:
        return _message(self.request("PUT", path, values, timeout))

    def delete(self, path: str, values: Mapping[str, Value] | None = None,
               timeout: float | None = None) -> str:
        return _message(self.request("DELETE", path, values, timeout))

    def request(self, method: str, path: str, values: Mapping[str, Value] | None = None,
                timeout: float | None = None) -> Response:
        url = self.connection.url + path
        encoded = encode_values(values)
        body: bytes | None = None
        headers = {"Accept": "application/json"}
        if self.connection.token:
            headers["X-Api-Key"] = self.connection.token
        if method in ("POST", "PUT"):
            body = encoded.encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif encoded:
            url += "?" + encoded
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout,
                                        context=self._ssl) as reply:
                response = Response(reply.status, reply.read(),
                                    reply.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as exc:
            response = Response(exc.code, exc.read(), exc.headers.get("Content-Type", ""))
        except urllib.error.URLError as exc:
            raise ApiUnreachable(self._unreachable(exc.reason)) from None
        # past this point the request was sent (urllib wraps failures before that in URLError)
        except TimeoutError:
            raise ApiConnectionLost(f"the PVC API at {self.connection.url} did not answer "
                                    f"within {timeout or self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:  # e.g. the connection was reset
            raise ApiConnectionLost(self._unreachable(exc)) from None
        return self.checked(method, path, response)

    def checked(self, method: str, path: str, response: Response) -> Response:
        """`response` if it is a success; else the failure it says, as an exception."""
        if response.status == 401:
            raise AuthenticationFailed(self._auth_message())
        if response.status == 404:  # an unknown path: this API lacks the endpoint
            raise ApiFailure(f"the API at {self.connection.url} has no endpoint {method} "
                             f"{path} ({_failure_message(response)})", 404)
        # 209: GET /api/v1, by the manual; 202: a long job accepted and still running (its
        # message names the task to follow)
        if response.status not in (200, 202, 209):
            raise ApiFailure(_failure_message(response), response.status, _document(response))
        return response

    def _unreachable(self, reason: object) -> str:
        url = self.connection.url
        if isinstance(reason, ssl.SSLCertVerificationError):
            return (f"TLS certificate of {url} not trusted: {reason.verify_message}; set the "
                    "connection's ca_file (or PVC_CA_FILE) to the CA that signed it")
        if isinstance(reason, ssl.SSLError):
            return f"TLS failure talking to {url}: {reason}"
        if isinstance(reason, TimeoutError):
            return f"the PVC API at {url} did not answer within {self.timeout:g} s"
        text = getattr(reason, "strerror", None) or str(reason)
        return f"cannot connect to the PVC API at {url}: {text} (from {self.connection.source})"

    def unreachable(self, reason: object) -> str:
        """Why the API could not be reached, in words (for requests sent without urllib)."""
        return self._unreachable(reason)

    def _auth_message(self) -> str:
        url, connection = self.connection.url, self.connection
        if not connection.token:
            return (f"authentication required: the PVC API at {url} needs a token, and "
                    f"{connection.source} gives none (set PVC_TOKEN or the connection's "
                    "token)")
        return (f"authentication failed: the PVC API at {url} rejected the token from "
                f"{connection.token_origin()}")


def _message(response: Response) -> str:
    doc = response.json()
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return json.dumps(doc)


def _document(response: Response) -> dict[str, Any] | None:
    try:
        doc = json.loads(response.body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _failure_message(response: Response) -> str:
    doc = _document(response)
    if doc is not None and isinstance(doc.get("message"), str):
        return str(doc["message"])
    snippet = response.text().strip()[:200]
    return f"HTTP {response.status}" + (f": {snippet}" if snippet else "")


def _ssl_context(connection: Connection) -> ssl.SSLContext:
    if not connection.verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=connection.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigProblem(f"CA file {connection.ca_file} (from {connection.source}) cannot "
                            f"be used: {exc}") from None
