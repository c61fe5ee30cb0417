"""The OpenAPI 3 document of the API, generated from the route table the server is built from.

Three sources, one document: the route table (`pvcd.api.app.ROUTES`: paths and the methods each
handler implements), the values each handler method declares (`pvcd.api.values.accepts`: the
same declarations the server checks requests with), and `ENDPOINTS`
(`pvcd.api.openapi_endpoints`), which holds what neither can say: per route path (the manual's
form, as in `Route.path`) and method, a summary and the shape of its answer
(`pvcd.api.openapi_schemas`, the objects of objects.md).
`openapi_document(routes)` refuses (`MetadataError`) a route or a handler method without an
`ENDPOINTS` entry, and an entry for a route or method the server does not have, so the document
cannot drift from the server: `tests/unit/test_openapi.py` builds it from `pvcd.api.app.ROUTES`.

How values are described: GET and DELETE take them as query parameters; POST and PUT as a
request body, either a form (`application/x-www-form-urlencoded`) or a JSON object. Every value
may also be given in the query string on any method (the manual's rule), which OpenAPI cannot
say without listing each value twice; the descriptions say it instead.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pvcd.api.base import BaseHandler
from pvcd.api.openapi_endpoints import (
    API_VERSION,
    BODY_METHODS,
    ENDPOINTS,
    FORM,
    HTTP_METHODS,
    JSON,
    OPENAPI_VERSION,
    MetadataError,
    Operation,
)
from pvcd.api.openapi_schemas import PATH_VALUES, SCHEMAS, ref
from pvcd.api.routing import PREFIX, Route, route
from pvcd.api.values import Value, declared

# --- the generator -------------------------------------------------------------------------

def openapi_path(r: Route) -> str:
    """The route's path in OpenAPI form: /api/v1/node/{node}; routes outside the API prefix
    (/metrics) keep their own path."""
    path = re.sub(r"<([^>]+)>", r"{\1}", r.path)
    return PREFIX + path if r.pattern.startswith(PREFIX) else path


def handler_methods(handler: type[BaseHandler]) -> list[str]:
    """The HTTP methods a handler class implements, as OpenAPI names them (lower case)."""
    allowed = handler.allowed_methods()
    return [m for m in HTTP_METHODS if m.upper() in allowed]


def check_metadata(routes: Sequence[Route],
                   endpoints: Mapping[str, Mapping[str, Operation]] = ENDPOINTS) -> None:
    """MetadataError listing every route or method without metadata, and every metadata entry
    the routes do not have."""
    problems = []
    paths = {r.path for r in routes}
    for r in routes:
        described = endpoints.get(r.path)
        if described is None:
            problems.append(f"route {r.path or '/'} ({r.handler.__name__}) has no metadata")
            continue
        served = handler_methods(r.handler)
        for method in served:
            if method not in described:
                problems.append(f"{method.upper()} {r.path} has no metadata")
        for method in described:
            if method not in served:
                problems.append(f"metadata for {method.upper()} {r.path}, which "
                                f"{r.handler.__name__} does not implement")
        for name in re.findall(r"<([^>]+)>", r.path):
            if name not in PATH_VALUES:
                problems.append(f"path value <{name}> of {r.path} is not described")
    for path in endpoints:
        if path not in paths:
            problems.append(f"metadata for {path or '/'}, which is not a route")
    if problems:
        raise MetadataError("; ".join(problems))


def openapi_document(routes: Sequence[Route],
                     endpoints: Mapping[str, Mapping[str, Operation]] = ENDPOINTS
                     ) -> dict[str, Any]:
    check_metadata(routes, endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        item = paths.setdefault(openapi_path(r), {})
        names = re.findall(r"<([^>]+)>", r.path)
        if names:
            item["parameters"] = [
                {"name": name, "in": "path", "required": True, "description": PATH_VALUES[name],
                 "schema": {"type": "string", "minLength": 1}} for name in names]
        for method in handler_methods(r.handler):
            item[method] = _operation(r, method, endpoints[r.path][method])
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "PVC API (pvcd)",
            "version": API_VERSION,
            "description": (
                "The HTTP API of the pvcd cluster manager, served by the primary node. "
                "Values come from the query string, a form body or a JSON object body, on any "
                "method. Success is 200; a failure (bad value, unknown object, wrong state, "
                "backend error) is 510 with a message; without valid authentication, 401."),
        },
        "tags": [{"name": t} for t in ("general", "node", "vm", "network", "cluster",
                                       "storage", "provisioner", "tasks", "monitoring")],
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "apiKeyValue": {"type": "apiKey", "in": "query", "name": "token",
                                "description": "The token as a value (query, form or JSON)."},
                "session": {"type": "apiKey", "in": "cookie", "name": "pvc_session",
                            "description": "The signed cookie set by POST /api/v1/auth/login."},
            },
        },
        "security": [{"apiKeyHeader": []}, {"apiKeyValue": []}, {"session": []}],
    }


def _operation(r: Route, method: str, op: Operation) -> dict[str, Any]:
    failure = {"description": "Failure: a bad or missing value, an unknown object, a wrong "
               "state, or a backend error; `message` says what and what is allowed.",
               "content": {JSON: {"schema": ref("Message")}}}
    content = {op.media_type: {"schema": dict(op.answer)}}
    for media_type, alternative in op.alternatives.items():
        content[media_type] = {"schema": dict(alternative)}
    responses: dict[str, Any] = {
        str(op.status): {"description": "Success.", "content": content},
        "510": failure,
    }
    if op.no_content:
        responses["204"] = {"description": op.no_content}
    failures = dict(op.failures)
    if not op.public:
        failures[401] = "Authentication required: no valid session, token value or X-Api-Key."
        failures[429] = ("Too many failed authentication attempts from this address: try again "
                         "after the Retry-After header's seconds.")
    if method in BODY_METHODS or method == "delete":
        failures[403] = ("Cross-site request refused: with a session cookie, or from a browser "
                         "page, a change must come from the API's own origin.")
    if method in BODY_METHODS:
        failures[413] = "Request body too large for this endpoint; `message` gives the limit."
    for status, description in sorted(failures.items()):
        responses[str(status)] = {"description": description,
                                  "content": {JSON: {"schema": ref("Message")}}}
    result: dict[str, Any] = {
        "operationId": method + re.sub(r"[^A-Za-z0-9]+", "_", openapi_path(r)).rstrip("_"),
        "summary": op.summary,
        "tags": [_tag(r)],
        "responses": responses,
    }
    if op.description:
        result["description"] = op.description
    if op.public:
        result["security"] = []
    values = declared(getattr(r.handler, method))
    if op.upload:
        result["parameters"] = [_query_parameter(v) for v in values]
        result["requestBody"] = {
            "required": True, "description": "The file itself, streamed; the values are "
            "checked before any of it is read.",
            "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                 "format": "binary"}}}}
    elif values and method in BODY_METHODS:
        result["requestBody"] = _request_body(values)
    elif values:
        result["parameters"] = [_query_parameter(v) for v in values]
    return result


def _request_body(values: Sequence[Value[Any]]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object",
                              "properties": {v.name: v.document() for v in values}}
    required = [v.name for v in values if v.required]
    if required:
        schema["required"] = required
    return {
        "required": bool(required),
        "description": "The values, as a form or a JSON object; each may also be given in the "
                       "query string.",
        "content": {FORM: {"schema": schema}, JSON: {"schema": copy.deepcopy(schema)}},
    }


def _query_parameter(value: Value[Any]) -> dict[str, Any]:
    schema = value.document()
    description = schema.pop("description")
    return {"name": value.name, "in": "query", "required": value.required,
            "description": description, "schema": schema}


def _tag(r: Route) -> str:
    first = r.path.split("/")[1] if r.path.count("/") else ""
    return {"": "general", "auth": "general", "openapi.json": "general", "node": "node",
            "vm": "vm", "network": "network", "maintenance": "cluster", "status": "cluster",
            "faults": "cluster", "backup": "cluster", "restore": "cluster", "storage": "storage",
            "tasks": "tasks", "provisioner": "provisioner", "metrics": "monitoring"}[first]


class OpenApiHandler(BaseHandler):
    """GET /api/v1/openapi.json: generated once per application from its own route table."""

    public = True

    def get(self) -> None:
        settings = self.application.settings
        document = settings.get("pvc_openapi")
        if document is None:
            document = settings["pvc_openapi"] = openapi_document(settings["pvc_routes"])
        self.reply(document)


ROUTES = [route("/openapi.json", OpenApiHandler)]
