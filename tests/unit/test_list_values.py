"""The value kinds of extensions.md §0.2 in `pvcd.api.values`: lists (`texts`) and strict bools
(`boolean`)."""

from __future__ import annotations

import pytest

from pvcd.api.values import RawValues, boolean, text, texts
from pvcd.domain.errors import InvalidValue

ARG = texts("arg", "An argument.")
NAME = text("name", "A name.")
SERIAL = boolean("serial", "A console.", True)


def raw(query: dict[str, list[str]] | None = None, form: dict[str, list[str]] | None = None,
        json_body: bytes = b"") -> RawValues:
    def encode(d: dict[str, list[str]] | None) -> dict[str, list[bytes]]:
        return {k: [v.encode() for v in items] for k, items in (d or {}).items()}
    return RawValues.from_request(encode(query), encode(form),
                                  "application/json" if json_body else "", json_body)


def test_a_list_takes_every_occurrence_in_order() -> None:
    values = raw({"arg": ["a=1", "b=2"]}, {"arg": ["c=3"]}).parse([ARG, NAME])
    assert values[ARG] == ["a=1", "b=2", "c=3"]
    assert not values.given(NAME) and values.given(ARG)


def test_a_list_from_a_json_array_and_empty_lists() -> None:
    assert raw(json_body=b'{"arg": ["x=1", "y=2"]}').parse([ARG])[ARG] == ["x=1", "y=2"]
    empty = raw(json_body=b'{"arg": []}').parse([ARG])
    assert empty[ARG] == [] and empty.given(ARG)
    cleared = raw({"arg": [""]}).parse([ARG])  # `arg=`: given, and empty
    assert cleared[ARG] == [] and cleared.given(ARG)
    absent = raw().parse([ARG])
    assert absent[ARG] == [] and not absent.given(ARG)


def test_only_list_values_take_arrays() -> None:
    with pytest.raises(InvalidValue, match="'name' must be a string, number or boolean"):
        raw(json_body=b'{"name": ["a", "b"]}').parse([NAME])
    with pytest.raises(InvalidValue, match="must be a string"):
        raw(json_body=b'{"arg": [["nested"]]}').parse([ARG])
    assert raw(json_body=b'{"token": ["a"]}').get("token") is None


def test_list_items_are_checked_one_by_one() -> None:
    def no_spaces(item: str) -> str:
        if " " in item:
            raise InvalidValue(f"bad item {item!r}")
        return item
    checked = texts("filesystem_arg", "An argument.", no_spaces)
    assert raw({"filesystem_arg": ["-L=x"]}).parse([checked])[checked] == ["-L=x"]
    with pytest.raises(InvalidValue, match="bad item '-L x'"):
        raw({"filesystem_arg": ["-f", "-L x"]}).parse([checked])


@pytest.mark.parametrize("given,expected", [
    (None, True), ("", True), ("yes", True), ("ON", True), ("1", True), ("false", False),
    ("0", False), ("no", False), ("off", False),
])
def test_booleans(given: str | None, expected: bool) -> None:
    query = {} if given is None else {"serial": [given]}
    assert raw(query).parse([SERIAL])[SERIAL] is expected


def test_a_boolean_refuses_other_words() -> None:
    with pytest.raises(InvalidValue, match="serial 'maybe' is invalid: true, 1, yes, on"):
        raw({"serial": ["maybe"]}).parse([SERIAL])
