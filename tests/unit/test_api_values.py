"""Request values (declared per handler method, parsed and checked) and token matching."""

from __future__ import annotations

import json
import re
from typing import Any
from unittest import mock

import pytest
import tornado.testing
import tornado.web

from pvcd.api.app import make_context
from pvcd.api.auth import Tokens
from pvcd.api.base import BaseHandler
from pvcd.api.values import (
    RawValues,
    UndeclaredValue,
    Value,
    Values,
    accepts,
    boolean,
    choice,
    declared,
    flag,
    integer,
    limit,
    text,
    texts,
    value,
)
from pvcd.domain.errors import InvalidValue

XML = text("xml", "The XML.", required=True)
NODE = text("node", "A node.")
RESTART = flag("restart", "Restart.")
DOMAIN_STATE = choice("domain-state", ("flush", "ready"), "The wanted state.", required=True)
SELECTOR = choice("selector", ("mem", "load"), "How to choose.")
ORDER = integer("order", "A position.", minimum=0, maximum=9, default=3)
LIMIT = limit("names")


def raw(query: dict[str, str] | None = None, form: dict[str, str] | None = None,
        json_body: bytes = b"") -> RawValues:
    enc = {k: [v.encode()] for k, v in (query or {}).items()}
    form_enc = {k: [v.encode()] for k, v in (form or {}).items()}
    return RawValues.from_request(enc, form_enc, "application/json" if json_body else "",
                                  json_body)


def parsed(*declarations: Value[Any], **given: str) -> Values:
    return raw(given).parse(declarations)


def test_values_come_from_query_form_and_json() -> None:
    a, b, c, d, e = (text(name, name) for name in "abcde")
    v = raw({"a": "1"}, {"b": "2"}, b'{"c": 3, "d": true, "e": null}').parse([a, b, c, d, e])
    assert (v[a], v[b], v[c], v[d]) == ("1", "2", "3", "true")
    assert v[e] is None and not v.given(e)  # JSON null: as if not given


@pytest.mark.parametrize("given,expected", [("", True), ("yes", True), ("1", True),
                                            ("false", False), ("0", False), ("No", False),
                                            ("off", False)])
def test_flags_are_set_by_presence_unless_explicitly_false(given: str, expected: bool) -> None:
    assert parsed(RESTART, restart=given)[RESTART] is expected
    assert parsed(RESTART)[RESTART] is False


def test_a_missing_or_blank_mandatory_value_is_named() -> None:
    for given in ({}, {"xml": ""}, {"xml": "  "}):
        with pytest.raises(InvalidValue, match="missing mandatory value 'xml'"):
            parsed(XML, **given)


def test_optional_values_default_when_not_given_or_blank() -> None:
    assert parsed(NODE, ORDER, SELECTOR)[NODE] is None
    v = parsed(NODE, ORDER, SELECTOR, node="", order=" ", selector="")
    assert (v[NODE], v[ORDER], v[SELECTOR]) == (None, 3, None)


def test_given_tells_an_empty_value_from_a_missing_one() -> None:
    v = parsed(NODE, XML, xml="<domain/>", node="")
    assert v.given(NODE) and v[NODE] is None  # PUT: an empty value clears a setting
    assert not parsed(NODE).given(NODE)


def test_choice_lists_the_allowed_values() -> None:
    with pytest.raises(InvalidValue, match="invalid domain-state 'drain'; valid values are: "
                                           "flush, ready"):
        parsed(DOMAIN_STATE, **{"domain-state": "drain"})
    assert parsed(DOMAIN_STATE, **{"domain-state": "flush"})[DOMAIN_STATE] == "flush"


@pytest.mark.parametrize("given", ["-1", "10", "1.5", "²", "+1", "1_0", "x"])
def test_integers_are_ascii_digits_within_their_limits(given: str) -> None:
    with pytest.raises(InvalidValue, match=f"order '{re.escape(given)}' is invalid: an "
                                           "integer from 0 up to 9"):
        parsed(ORDER, order=given)
    assert parsed(ORDER, order="7")[ORDER] == 7


def test_values_are_checked_in_the_order_declared_and_parsed_by_their_own_rule() -> None:
    weight = value("weight", "A weight.", float, required=True, schema={"type": "number"})
    with pytest.raises(InvalidValue, match="'xml'"):
        parsed(XML, DOMAIN_STATE)
    with pytest.raises(InvalidValue, match="domain-state"):
        parsed(DOMAIN_STATE, XML)
    assert parsed(weight, weight="1.5")[weight] == 1.5


def test_bad_json_body_is_an_invalid_value() -> None:
    with pytest.raises(InvalidValue, match="not valid JSON"):
        raw(json_body=b"{nope")
    with pytest.raises(InvalidValue, match="must be an object"):
        raw(json_body=b"[1, 2]")
    with pytest.raises(InvalidValue, match="string, number or boolean"):
        raw(json_body=b'{"a": {"b": 1}}')


def test_limit_is_searched_anywhere_and_anchors_work() -> None:
    assert parsed(LIMIT, limit="de2")[LIMIT].search("node2")  # type: ignore[union-attr]
    assert not parsed(LIMIT, limit="^de2")[LIMIT].search("node2")  # type: ignore[union-attr]
    assert parsed(LIMIT, limit="")[LIMIT] is None
    with pytest.raises(InvalidValue, match="not a valid regular expression"):
        parsed(LIMIT, limit="[a")


def test_reading_a_value_the_method_did_not_declare_is_a_bug() -> None:
    v = parsed(XML, xml="<domain/>", node="node1")
    with pytest.raises(UndeclaredValue, match="'node' is read but not declared"):
        v[NODE]
    with pytest.raises(UndeclaredValue):  # another declaration of the same name
        v[text("xml", "Another.")]


def test_a_method_declares_each_name_once() -> None:
    with pytest.raises(ValueError, match="declared twice: node"):
        accepts(NODE, text("node", "Again."))

    @accepts(XML, NODE)
    def post() -> None: ...

    assert declared(post) == (XML, NODE) and declared(lambda: None) == ()


def test_the_document_gives_the_schema_the_default_and_the_help() -> None:
    assert ORDER.document() == {"type": "integer", "minimum": 0, "maximum": 9, "default": 3,
                                "description": "A position."}
    assert RESTART.document()["type"] == "boolean"
    assert "set by its presence" in RESTART.document()["description"]


# --- served: declarations drive what a handler gets ---------------------------------------------

class Thing(BaseHandler):
    @accepts(DOMAIN_STATE, RESTART, ORDER)
    def post(self) -> None:
        self.reply({"state": self.values[DOMAIN_STATE], "restart": self.values[RESTART],
                    "order": self.values[ORDER]})

    def get(self) -> None:
        self.reply({"node": self.values[NODE]})  # not declared: a bug


class TestServed(tornado.testing.AsyncHTTPTestCase):
    def get_app(self) -> tornado.web.Application:
        ctx = make_context(view=mock.MagicMock(), store=mock.MagicMock(), node_name="node1",
                           auth_enabled=False, tokens=Tokens.from_config([]))
        return tornado.web.Application([("/thing", Thing, {"ctx": ctx})])

    def test_declared_values_arrive_parsed_from_a_form_or_json(self) -> None:
        form = self.fetch("/thing?order=5", method="POST", body="domain-state=flush&restart")
        assert form.code == 200
        assert json.loads(form.body) == {"state": "flush", "restart": True, "order": 5}
        body = self.fetch("/thing", method="POST", body='{"domain-state": "ready"}',
                          headers={"Content-Type": "application/json"})
        assert json.loads(body.body) == {"state": "ready", "restart": False, "order": 3}

    def test_a_bad_value_is_510_naming_it_and_what_is_allowed(self) -> None:
        response = self.fetch("/thing", method="POST", body="domain-state=drain")
        assert response.code == 510
        assert json.loads(response.body) == {
            "message": "invalid domain-state 'drain'; valid values are: flush, ready"}
        response = self.fetch("/thing", method="POST", body="")
        assert response.code == 510
        assert json.loads(response.body) == {"message": "missing mandatory value 'domain-state'"}

    def test_reading_an_undeclared_value_is_a_server_error(self) -> None:
        with self.assertLogs("tornado.application", level="ERROR"):
            assert self.fetch("/thing?node=node1").code == 500


def test_tokens_match_exactly() -> None:
    tokens = Tokens.from_config(["3f1c8a5e-aaaa-bbbb-cccc-0123456789ab", "second-token-xyz"])
    assert tokens.valid("3f1c8a5e-aaaa-bbbb-cccc-0123456789ab")
    assert tokens.valid("second-token-xyz")
    for wrong in ("3f1c8a5e", "second-token-xy", "second-token-xyzz", "", None,
                  "SECOND-TOKEN-XYZ"):
        assert not tokens.valid(wrong)


def test_a_boolean_is_strict_and_tells_whether_it_was_given() -> None:
    auto = boolean("autostart", "Start it.")
    for text_, expected in (("", True), ("yes", True), ("ON", True), ("1", True),
                            ("false", False), ("0", False), ("off", False)):
        v = parsed(auto, autostart=text_)
        assert v[auto] is expected and v.given(auto), text_
    v = parsed(auto)
    assert v[auto] is False and not v.given(auto)
    with pytest.raises(InvalidValue, match="autostart 'maybe' is invalid"):
        parsed(auto, autostart="maybe")


def test_list_values_take_every_occurrence_or_a_json_array() -> None:
    tags = texts("user_tags", "Tags.")
    query = {"user_tags": [b"a", b"b"]}
    form = {"user_tags": [b"c"]}
    assert RawValues.from_request(query, form, "", b"").parse([tags])[tags] == ["a", "b", "c"]
    body = json.dumps({"user_tags": ["x", "y"]}).encode()
    assert RawValues.from_request({}, {}, "application/json", body).parse([tags])[tags] == \
        ["x", "y"]
    assert raw().parse([tags])[tags] == []
    # an array where one value is expected, or an array of non-scalars: refused
    body = json.dumps({"node": ["a"]}).encode()
    with pytest.raises(InvalidValue, match="not a list"):
        RawValues.from_request({}, {}, "application/json", body).parse([NODE])
    with pytest.raises(InvalidValue, match="must be a string, number or boolean"):
        RawValues.from_request({}, {}, "application/json", b'{"user_tags": [{"a": 1}]}')
