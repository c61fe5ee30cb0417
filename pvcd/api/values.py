"""Request values: declared once per handler method, checked all together before the method
uses any, documented from the same declaration.

Where values come from (the manual's rule): the query string, a form body or a JSON object body,
on any method (`RawValues.from_request`). A handler method names what it reads with `accepts`;
`BaseHandler.values` parses exactly those, all at once on first use (`RawValues.parse`), so a
missing mandatory value or a bad one answers 510 naming the value and what is allowed before the
method acts on any of them, and the method reads typed values:

    STATE = choice("state", VM_STATE_REQUESTS, "The wanted state.", required=True)

    class VmStateHandler(BaseHandler):
        @accepts(STATE)
        async def post(self, vm: str) -> None:
            wanted = self.values[STATE]  # a str from VM_STATE_REQUESTS

The OpenAPI document (`pvcd.api.openapi`) is built from the same declarations, so the two cannot
drift; reading a value the method did not declare is a bug (`UndeclaredValue`, a 500), found by
the first test that runs the method.

Rules every value follows: a text that is empty or only whitespace counts as not given (a
mandatory value is then missing; an optional one has its default, usually None); a flag is set by
its presence, with any text or none, and an explicit false/0/no/off unsets it; `limit` is a
regular expression searched anywhere in a name (anchors `^`/`$` work as usual), matched by RE2
with bounded work (`pvcd.api.name_filter`). Two kinds follow extensions.md §0.2: a `boolean`
has a stated default and refuses anything but the true and false words; a list (`texts`, e.g.
`arg`) takes every occurrence in the query string and form, or a JSON array, which any other
value refuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, cast, overload

from pvcd.api.name_filter import MAX_PATTERN_LENGTH, NameFilter
from pvcd.domain.errors import InvalidValue

T = TypeVar("T")
Method = TypeVar("Method", bound=Callable[..., Any])

_FALSE = {"false", "0", "no", "off"}
# ASCII digits only ('²'.isdigit() is true), and few of them: int() refuses more than 4,300
# digits with a ValueError (a 500 once), and no value of ours needs more than 18
_INTEGER = re.compile(r"-?[0-9]{1,18}")
_DECLARED = "_pvc_values"  # the attribute `accepts` sets on a handler method


class UndeclaredValue(Exception):
    """A handler read a value its method does not declare: a bug (500), not a bad request."""


@dataclass(frozen=True, eq=False)
class Value(Generic[T]):
    """One request value: its name, its help and JSON schema (for the OpenAPI document), and
    how its text becomes the typed value the handler reads (`parse` raises InvalidValue with a
    message naming the value and what is allowed)."""

    name: str
    help: str
    schema: Mapping[str, Any]
    parse: Callable[[str], T]
    required: bool = False
    default: T | None = None
    flag: bool = False  # set by presence: an empty text counts as given
    many: bool = False  # a list: every occurrence counts, or a JSON array (extensions.md §0.2)

    def read(self, raw: str | None) -> T:
        if raw is None or (not self.flag and raw.strip() == ""):
            if self.required:
                raise InvalidValue(f"missing mandatory value '{self.name}'")
            return cast(T, self.default)
        return self.parse(raw)

    def document(self) -> dict[str, Any]:
        """The value's JSON schema with its help, as the OpenAPI document gives it."""
        schema = dict(self.schema)
        if self.default is not None and not self.flag:
            schema["default"] = self.default
        return {**schema, "description": self.help}


# --- declaring values ------------------------------------------------------------------------

@overload
def value(name: str, help: str, parse: Callable[[str], T], *, required: Literal[True],
          schema: Mapping[str, Any] | None = None) -> Value[T]: ...


@overload
def value(name: str, help: str, parse: Callable[[str], T], *, required: Literal[False] = False,
          schema: Mapping[str, Any] | None = None, default: T | None = None
          ) -> Value[T | None]: ...


def value(name: str, help: str, parse: Callable[[str], Any], *, required: bool = False,
          schema: Mapping[str, Any] | None = None, default: Any = None) -> Value[Any]:
    """A value with its own parser, e.g. `value("size", "...", parse_size, required=True)`;
    the schema (default: a string) says in the document what the parser accepts."""
    return Value(name, help, schema or {"type": "string"}, parse, required, default)


@overload
def text(name: str, help: str, *, required: Literal[True], **schema: Any) -> Value[str]: ...


@overload
def text(name: str, help: str, *, required: Literal[False] = False, **schema: Any
         ) -> Value[str | None]: ...


def text(name: str, help: str, *, required: bool = False, **schema: Any) -> Value[Any]:
    """A text taken as given (e.g. `format="regex"` adds to its schema)."""
    return Value(name, help, {"type": "string", **schema}, str, required)


@overload
def choice(name: str, allowed: Iterable[str], help: str, *, required: Literal[True]
           ) -> Value[str]: ...


@overload
def choice(name: str, allowed: Iterable[str], help: str, *, required: Literal[False] = False
           ) -> Value[str | None]: ...


def choice(name: str, allowed: Iterable[str], help: str, *, required: bool = False
           ) -> Value[Any]:
    """One of `allowed`; anything else is refused with the list of valid values."""
    options = tuple(allowed)

    def parse(raw: str) -> str:
        if raw not in options:
            raise InvalidValue(f"invalid {name} '{raw}'; valid values are: {', '.join(options)}")
        return raw

    return Value(name, help, {"type": "string", "enum": list(options)}, parse, required)


@overload
def integer(name: str, help: str, *, required: Literal[True], minimum: int | None = None,
            maximum: int | None = None) -> Value[int]: ...


@overload
def integer(name: str, help: str, *, required: Literal[False] = False,
            minimum: int | None = None, maximum: int | None = None,
            default: int | None = None) -> Value[int | None]: ...


def integer(name: str, help: str, *, required: bool = False, minimum: int | None = None,
            maximum: int | None = None, default: int | None = None) -> Value[Any]:
    """A whole number (ASCII digits, optionally a leading minus) within the limits given."""
    limits = {"minimum": minimum, "maximum": maximum}
    schema = {"type": "integer", **{k: v for k, v in limits.items() if v is not None}}
    allowed = "an integer" + (f" from {minimum}" if minimum is not None else "") + \
        (f" up to {maximum}" if maximum is not None else "")

    def parse(raw: str) -> int:
        number = int(raw) if _INTEGER.fullmatch(raw) else None
        if number is None or (minimum is not None and number < minimum) or \
                (maximum is not None and number > maximum):
            shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
            raise InvalidValue(f"{name} '{shown}' is invalid: {allowed}")
        return number

    return Value(name, help, schema, parse, required, default)


def texts(name: str, help: str, parse: Callable[[str], str] = str) -> Value[list[str]]:
    """A list of texts (extensions.md §0.2): repeated in the query string or form (every
    occurrence counts, in order) or a JSON array of strings; absent is the empty list, and
    empty texts are dropped (so `name=` alone gives an empty list that was given, which
    clears a list in PUT). `parse` checks each item."""
    return Value(name, help + " A list: repeat the value, or give a JSON array of strings.",
                 {"type": "array", "items": {"type": "string"}}, cast(Any, parse), False, None,
                 many=True)


def flag(name: str, help: str) -> Value[bool]:
    """Set by its presence (any text, or none); an explicit false, 0, no or off unsets it."""
    return Value(name, help + " A flag: set by its presence (any value, or none); an explicit "
                 "false, 0, no or off unsets it.", {"type": "boolean"}, _flag, False, False,
                 flag=True)


def boolean(name: str, help: str, default: bool | None = False) -> Value[Any]:
    """A bool (extensions.md §0.2): absent is `default`; present and empty, true, 1, yes or on
    is true; false, 0, no or off is false; anything else is refused."""
    def parse(raw: str) -> bool:
        word = raw.strip().lower()
        if word in ("", "true", "1", "yes", "on"):
            return True
        if word in _FALSE:
            return False
        shown = raw if len(raw) <= 40 else f"{raw[:40]}..."
        raise InvalidValue(f"{name} '{shown}' is invalid: true, 1, yes, on (or empty) or false, "
                           "0, no, off")

    return Value(name, f"{help} A bool: true, 1, yes, on (or empty) or false, 0, no, off.",
                 {"type": "boolean"}, parse, False, default, flag=True)


def limit(what: str = "names") -> Value[NameFilter | None]:
    """`limit`: a regular expression searched anywhere in the `what`, with bounded work
    (`pvcd.api.name_filter`)."""
    return Value("limit", f"A regular expression (RE2 syntax: no backreferences or lookaround; "
                 f"at most {MAX_PATTERN_LENGTH} characters) searched anywhere in the {what} "
                 "(anchor it with ^ or $); an invalid or too complex expression is a failure "
                 "(510).", {"type": "string", "format": "regex", "maxLength": MAX_PATTERN_LENGTH},
                 NameFilter)


def accepts(*values: Value[Any]) -> Callable[[Method], Method]:
    """Declare the values a handler method reads; see the module docstring."""
    names = [v.name for v in values]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"values declared twice: {', '.join(twice)}")

    def declare(method: Method) -> Method:
        setattr(method, _DECLARED, values)
        return method

    return declare


def declared(method: Callable[..., Any] | None) -> tuple[Value[Any], ...]:
    """The values a handler method declares (none when it has no `accepts`)."""
    return cast(tuple[Value[Any], ...], getattr(method, _DECLARED, ()))


def _flag(raw: str) -> bool:
    return raw.strip().lower() not in _FALSE


# --- a request's values ----------------------------------------------------------------------

class Values:
    """The values one handler method declared, parsed and checked: what the handler reads."""

    def __init__(self, parsed: Mapping[str, tuple[Value[Any], Any]],
                 given: Iterable[str] = ()) -> None:
        self._parsed = dict(parsed)
        self._given = frozenset(given)

    def __getitem__(self, value: Value[T]) -> T:
        entry = self._parsed.get(value.name)
        if entry is None or entry[0] is not value:
            raise UndeclaredValue(f"value '{value.name}' is read but not declared for this "
                                  "method (pvcd.api.values.accepts)")
        return cast(T, entry[1])

    def given(self, value: Value[Any]) -> bool:
        """Whether the request named the value at all (an empty text too: it clears a
        setting in PUT)."""
        self[value]  # declared?
        return value.name in self._given


class RawValues:
    """A request's values as texts, from the query string, a form body or a JSON object body
    (the last one given wins; every one for a list value, `texts`)."""

    def __init__(self, values: Mapping[str, str],
                 lists: Mapping[str, list[str]] | None = None,
                 arrays: Iterable[str] = ()) -> None:
        self._values = dict(values)
        # every occurrence of each name, in order: what a list value reads
        self._lists = {name: list(items) for name, items in (lists or {}).items()}
        self._arrays = frozenset(arrays)  # names given as a JSON array: only lists take them

    @classmethod
    def from_request(cls, query: Mapping[str, list[bytes]],
                     body_arguments: Mapping[str, list[bytes]],
                     content_type: str, body: bytes) -> RawValues:
        merged: dict[str, str] = {}
        lists: dict[str, list[str]] = {}
        arrays: set[str] = set()
        for source in (query, body_arguments):
            for name, items in source.items():
                if items:
                    texts = [item.decode("utf-8", errors="replace") for item in items]
                    merged[name] = texts[-1]
                    lists.setdefault(name, []).extend(texts)
        if content_type.split(";")[0].strip().lower() == "application/json" and body.strip():
            try:
                doc = json.loads(body)
            except ValueError as exc:
                raise InvalidValue(f"request body is not valid JSON: {exc}") from exc
            if not isinstance(doc, dict):
                raise InvalidValue("a JSON request body must be an object of values")
            for name, item in doc.items():
                if isinstance(item, list):
                    arrays.add(str(name))
                    lists[str(name)] = [_scalar(name, one) for one in item]
                    merged[str(name)] = lists[str(name)][-1] if item else ""
                elif item is not None:  # JSON null: as if the value were not given
                    merged[str(name)] = _scalar(name, item)
                    lists[str(name)] = [merged[str(name)]]
        return cls(merged, lists, arrays)

    def get(self, name: str) -> str | None:
        """One value's text, for what is not a handler's value (the API token); None for a
        JSON array."""
        return None if name in self._arrays else self._values.get(name)

    def parse(self, declarations: Iterable[Value[Any]]) -> Values:
        """The declared values, checked in the order declared; InvalidValue on the first that
        is missing or bad. Values not declared are ignored."""
        parsed = {v.name: (v, self._read(v)) for v in declarations}
        return Values(parsed, (name for name in parsed if name in self._values))

    def _read(self, value: Value[Any]) -> Any:
        if value.many:
            return [value.parse(item) for item in self._lists.get(value.name, [])
                    if item.strip() != ""]
        if value.name in self._arrays:
            raise InvalidValue(f"value '{value.name}' must be a string, number or boolean, "
                               "not a list")
        return value.read(self._values.get(value.name))


def _scalar(name: Any, item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (str, int, float)):
        return str(item)
    raise InvalidValue(f"value '{name}' must be a string, number or boolean")
