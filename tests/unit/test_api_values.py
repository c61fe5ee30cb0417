"""Value parsing and token matching rules of the API (pure logic)."""

from __future__ import annotations

import pytest

from pvcd.api.auth import Tokens
from pvcd.api.values import Values
from pvcd.domain.errors import InvalidValue


def values(query: dict[str, str] | None = None, form: dict[str, str] | None = None,
           json_body: bytes = b"") -> Values:
    enc = {k: [v.encode()] for k, v in (query or {}).items()}
    form_enc = {k: [v.encode()] for k, v in (form or {}).items()}
    return Values.from_request(enc, form_enc, "application/json" if json_body else "", json_body)


def test_values_come_from_query_form_and_json() -> None:
    v = values({"a": "1"}, {"b": "2"}, b'{"c": 3, "d": true, "e": null}')
    assert (v.get("a"), v.get("b"), v.get("c"), v.get("d")) == ("1", "2", "3", "true")
    assert "e" not in v  # JSON null: as if not given


@pytest.mark.parametrize("raw,expected", [("", True), ("yes", True), ("1", True),
                                          ("false", False), ("0", False), ("No", False),
                                          ("off", False)])
def test_flags_are_set_by_presence_unless_explicitly_false(raw: str, expected: bool) -> None:
    assert values({"restart": raw}).flag("restart") is expected
    assert values({}).flag("restart") is False


def test_missing_mandatory_value_is_named() -> None:
    with pytest.raises(InvalidValue, match="missing mandatory value 'xml'"):
        values({}).require("xml")


def test_choice_lists_the_allowed_values() -> None:
    with pytest.raises(InvalidValue, match="valid values are: flush, ready"):
        values({"domain-state": "drain"}).choice("domain-state", ("flush", "ready"))


def test_bad_json_body_is_an_invalid_value() -> None:
    with pytest.raises(InvalidValue, match="not valid JSON"):
        values(json_body=b"{nope")
    with pytest.raises(InvalidValue, match="must be an object"):
        values(json_body=b"[1, 2]")
    with pytest.raises(InvalidValue, match="string, number or boolean"):
        values(json_body=b'{"a": {"b": 1}}')


def test_limit_is_searched_anywhere_and_anchors_work() -> None:
    assert values({"limit": "de2"}).limit().search("node2")  # type: ignore[union-attr]
    assert not values({"limit": "^de2"}).limit().search("node2")  # type: ignore[union-attr]
    with pytest.raises(InvalidValue, match="not a valid regular expression"):
        values({"limit": "[a"}).limit()


def test_tokens_match_exactly() -> None:
    tokens = Tokens.from_config(["3f1c8a5e-aaaa-bbbb-cccc-0123456789ab", "second-token-xyz"])
    assert tokens.valid("3f1c8a5e-aaaa-bbbb-cccc-0123456789ab")
    assert tokens.valid("second-token-xyz")
    for wrong in ("3f1c8a5e", "second-token-xy", "second-token-xyzz", "", None,
                  "SECOND-TOKEN-XYZ"):
        assert not tokens.valid(wrong)
