"""The OpenAPI document: valid, generated from the server's own routes, complete, served.

The document is built from `pvcd.api.app.ROUTES` (the table the server is made from), the values
each handler method declares (`pvcd.api.values.accepts`, the same declarations requests are
checked with) and the metadata in `pvcd.api.openapi.ENDPOINTS`; these tests fail when the route
table and the metadata disagree in either direction, when the document does not give a method's
values as declared, or when the server's router would send a documented path elsewhere.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from unittest import mock

import pytest
import tornado.httputil
import tornado.testing
import tornado.web
from openapi_spec_validator import validate

from pvcd.api import openapi
from pvcd.api.app import ROUTES, make_app, make_context
from pvcd.api.auth import Tokens
from pvcd.api.base import ApiContext, BaseHandler
from pvcd.api.dashboard import web_handlers
from pvcd.api.networks import parse_vni
from pvcd.api.routing import Route, route
from pvcd.api.values import declared
from pvcd.domain.errors import InvalidValue
from pvcd.domain.states import VM_STATE_REQUESTS
from pvcd.state.schema import Paths
from pvcd.state.view import ClusterView

METHODS = set(openapi.HTTP_METHODS)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.openapi_document(ROUTES)


def make_ctx(auth: bool = True) -> ApiContext:
    return make_context(mock.MagicMock(), mock.MagicMock(), "node1", auth,
                        Tokens.from_config(["secret"]))


def implemented(handler: type) -> set[str]:
    """Methods a handler class defines itself (Tornado's defaults answer 405)."""
    return {m for m in METHODS
            if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)}


def test_the_document_is_valid_openapi_3(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.")
    json.dumps(document)  # plain JSON, as served


def test_the_document_lists_exactly_the_servers_routes_and_methods(
        document: dict[str, Any]) -> None:
    """Compared with the Tornado application itself: every rule of its router, each handler's
    methods; and every documented path, filled in, reaches the handler that serves it."""
    app = make_app(make_ctx(), "cookie")
    served: dict[str, set[str]] = {}
    rules = [rule for rule in app.wildcard_router.rules]
    # the API's routes, then the web dashboard's (not the API's: not in the document)
    rules, web = rules[:len(ROUTES)], rules[len(ROUTES):]
    assert [rule.target for rule in web] == [h for _, h, _ in web_handlers(make_ctx())]
    for rule, r in zip(rules, ROUTES, strict=True):
        assert rule.target is r.handler
        assert rule.matcher.regex.pattern == r.pattern  # type: ignore[attr-defined]
        served.setdefault(openapi.openapi_path(r), set()).update(implemented(r.handler))
    documented = {path: {m for m in item if m in METHODS}
                  for path, item in document["paths"].items()}
    assert documented == served
    for path, methods in documented.items():
        uri = re.sub(r"\{[^}]+\}", "x1", path)
        request = tornado.httputil.HTTPServerRequest(
            start_line=tornado.httputil.RequestStartLine("GET", uri, "HTTP/1.1"),
            headers=tornado.httputil.HTTPHeaders({"Host": "localhost"}))
        delegate = app.find_handler(request)
        handler = delegate.handler_class
        assert handler is not app.settings["default_handler_class"], path
        assert implemented(handler) == methods, path


def test_every_route_has_metadata_and_no_metadata_is_left_over() -> None:
    openapi.check_metadata(ROUTES)  # the real table: complete

    class Extra(BaseHandler):
        def get(self) -> None: ...

    with pytest.raises(openapi.MetadataError, match=r"route /extra \(Extra\) has no metadata"):
        openapi.openapi_document([*ROUTES, route("/extra", Extra)])
    endpoints = dict(openapi.ENDPOINTS)
    endpoints["/gone"] = {"get": openapi.Operation("Gone")}
    with pytest.raises(openapi.MetadataError, match="metadata for /gone, which is not a route"):
        openapi.openapi_document(ROUTES, endpoints)


def test_every_method_has_metadata_and_metadata_names_only_served_methods() -> None:
    class NodeWithPut(BaseHandler):
        def get(self, name: str) -> None: ...

        def put(self, name: str) -> None: ...

    routes = [r if r.path != "/node/<node>" else route("/node/<node>", NodeWithPut)
              for r in ROUTES]
    with pytest.raises(openapi.MetadataError, match="PUT /node/<node> has no metadata"):
        openapi.openapi_document(routes)
    endpoints = dict(openapi.ENDPOINTS)
    endpoints["/node"] = {**endpoints["/node"], "delete": openapi.Operation("Nope")}
    with pytest.raises(openapi.MetadataError, match="metadata for DELETE /node, which "
                                                    "NodeListHandler does not implement"):
        openapi.openapi_document(ROUTES, endpoints)


def test_path_values_must_be_described() -> None:
    class Thing(BaseHandler):
        def get(self, thing: str) -> None: ...

    endpoints = {**openapi.ENDPOINTS, "/thing/<thing>": {"get": openapi.Operation("A thing")}}
    with pytest.raises(openapi.MetadataError, match="path value <thing>"):
        openapi.openapi_document([*ROUTES, route("/thing/<thing>", Thing)], endpoints)


@pytest.mark.parametrize("r", ROUTES, ids=lambda r: r.path or "/")
def test_every_declared_value_is_documented_as_declared(
        r: Route, document: dict[str, Any]) -> None:
    """The values of each method are its handler's declarations (`accepts`): the ones the
    server checks requests with; a handler cannot read another (`UndeclaredValue`,
    tests/unit/test_api_values.py)."""
    for method in openapi.handler_methods(r.handler):
        values = declared(getattr(r.handler, method))
        op = document["paths"][openapi.openapi_path(r)][method]
        upload = "application/octet-stream" in op.get("requestBody", {}).get("content", {})
        if method in openapi.BODY_METHODS and values and not upload:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert list(schema["properties"]) == [v.name for v in values]
            assert schema.get("required", []) == [v.name for v in values if v.required]
        else:
            assert [(p["name"], p["required"]) for p in op.get("parameters", [])] == \
                [(v.name, v.required) for v in values]


def test_a_choice_lists_its_values_and_a_flag_is_a_boolean(document: dict[str, Any]) -> None:
    state = document["paths"]["/api/v1/vm/{vm}/state"]["post"]["requestBody"]
    schema = state["content"]["application/json"]["schema"]
    assert schema["properties"]["state"]["enum"] == list(VM_STATE_REQUESTS)
    assert schema["required"] == ["state"]
    order = document["paths"]["/api/v1/network/{network}/acl"]["post"]["requestBody"]
    assert order["content"]["application/json"]["schema"]["properties"]["order"] == {
        "type": "integer", "minimum": 0,
        "description": "Position in the chain, from 0 (default: the end)."}
    listing = document["paths"]["/api/v1/network/{network}/lease"]["get"]["parameters"]
    assert [(p["name"], p["schema"]) for p in listing] == [
        ("limit", {"type": "string", "format": "regex", "maxLength": 256}),
        ("static", {"type": "boolean"})]


def test_statuses_and_security(document: dict[str, Any]) -> None:
    root = document["paths"]["/api/v1"]["get"]
    assert set(root["responses"]) == {"209", "510"} and root["security"] == []
    dump = document["paths"]["/api/v1/vm/{vm}/dump"]["get"]
    assert "application/xml" in dump["responses"]["200"]["content"]
    metrics = document["paths"]["/metrics"]["get"]
    assert metrics["security"] == [] and "text/plain" in metrics["responses"]["200"]["content"]
    for r in ROUTES:
        for method in openapi.handler_methods(r.handler):
            op = document["paths"][openapi.openapi_path(r)][method]
            responses = op["responses"]
            assert responses["510"]["content"]["application/json"]["schema"] == \
                {"$ref": "#/components/schemas/Message"}
            if r.handler.public:
                assert op["security"] == [], (method, r.path)
            else:
                assert "security" not in op and "401" in responses, (method, r.path)


def test_values_are_query_parameters_or_a_form_or_json_body(document: dict[str, Any]) -> None:
    post = document["paths"]["/api/v1/vm"]["post"]
    body = post["requestBody"]["content"]
    assert set(body) == {"application/x-www-form-urlencoded", "application/json"}
    assert body["application/json"]["schema"]["required"] == ["xml"]
    assert body["application/json"]["schema"]["properties"]["selector"]["enum"] == \
        ["mem", "memprov", "vcpus", "load", "vms", "none"]
    assert body["application/json"]["schema"]["properties"]["user_tags"]["type"] == "array"
    delete = document["paths"]["/api/v1/vm/{vm}"]["delete"]
    assert [(p["name"], p["in"], p["schema"]["type"]) for p in delete["parameters"]] == \
        [("delete_disks", "query", "boolean")]
    listing = document["paths"]["/api/v1/node"]["get"]
    assert listing["responses"]["200"]["content"]["application/json"]["schema"] == \
        {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}
    element = document["paths"]["/api/v1/node/{node}"]
    assert element["parameters"][0]["in"] == "path"


class TestServed(tornado.testing.AsyncHTTPTestCase):
    def get_app(self) -> tornado.web.Application:
        return make_app(make_ctx(auth=True), "cookie")

    def test_openapi_json_needs_no_token_and_is_the_generated_document(self) -> None:
        response = self.fetch("/api/v1/openapi.json")
        assert response.code == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert json.loads(response.body) == openapi.openapi_document(ROUTES)

    def test_other_endpoints_still_need_it(self) -> None:
        assert self.fetch("/api/v1/node").code == 401

    def test_a_method_an_endpoint_lacks_is_405_with_allow_before_its_own_checks(self) -> None:
        # found by fuzzing: the storage endpoints' "Ceph is not configured" check ran first
        response = self.fetch("/api/v1/storage/ceph", method="PUT", body="",
                              headers={"X-Api-Key": "secret"})
        assert response.code == 405 and response.headers["Allow"] == "GET"
        assert json.loads(response.body) == {"message": "Method not allowed"}
        response = self.fetch("/api/v1/vm/x", method="PATCH", body="",
                              headers={"X-Api-Key": "secret"})
        assert response.code == 405  # (POST /vm/<vm> creates a VM: extensions.md §3.9)
        assert set(response.headers["Allow"].split(", ")) == {"GET", "PUT", "DELETE", "POST"}

    def test_a_refusal_510_is_logged_as_a_warning_not_an_error(self) -> None:
        with self.assertLogs("tornado.access", level="INFO") as logs:
            response = self.fetch("/api/v1/storage/ceph", headers={"X-Api-Key": "secret"})
        assert response.code == 510
        record = logs.records[-1]
        assert record.levelno == logging.WARNING and "510 GET /api/v1/storage/ceph" in \
            record.getMessage()


def test_vm_meta_and_tags_are_described(document: dict[str, Any]) -> None:
    """extensions.md §6: the routes are in the document (so the fuzzer covers them), with
    their answers and values."""
    paths = document["paths"]
    meta, tags = paths["/api/v1/vm/{vm}/meta"], paths["/api/v1/vm/{vm}/tags"]
    assert set(meta) >= {"get", "post"} and set(tags) >= {"get", "post"}
    answer = meta["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/VmMeta"}
    assert set(document["components"]["schemas"]["VmMeta"]["required"]) == {
        "name", "node_limit", "node_selector", "node_autostart", "migration_method",
        "migration_max_downtime", "profile"}
    values = meta["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"limit", "node_limit", "selector", "node_selector", "autostart", "node_autostart",
            "migration_method", "migration_max_downtime", "profile"} <= set(values)
    assert values["migration_max_downtime"]["maximum"] == 60000
    listing = {p["name"] for p in paths["/api/v1/vm"]["get"]["parameters"]}
    assert {"tag", "negate"} <= listing


def test_non_ascii_digits_name_no_network() -> None:
    """Found by fuzzing: '²'.isdigit() is true but int('²') raises (a 500)."""
    view = ClusterView(mock.MagicMock(get=lambda path: None, exists=lambda path: True),
                       Paths("/pvc"))
    assert view.resolve_network("²") is None
    assert view.resolve_network("7") == 7
    with pytest.raises(InvalidValue, match="is invalid for a managed network"):
        parse_vni("\N{SUPERSCRIPT TWO}", "managed")
