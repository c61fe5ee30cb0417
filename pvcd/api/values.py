"""Request values: query string, form body or JSON body, on any method (the manual's rule).

Flags are set by their presence; an explicit false/0/no/off unsets them. `limit` is a regular
expression searched anywhere in a name (anchors `^`/`$` work as usual).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pvcd.domain.errors import InvalidValue

_FALSE = {"false", "0", "no", "off"}


class Values:
    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    @classmethod
    def from_request(cls, query: Mapping[str, list[bytes]],
                     body_arguments: Mapping[str, list[bytes]],
                     content_type: str, body: bytes) -> Values:
        merged: dict[str, str] = {}
        for source in (query, body_arguments):
            for name, items in source.items():
                if items:
                    merged[name] = items[-1].decode("utf-8", errors="replace")
        if content_type.split(";")[0].strip().lower() == "application/json" and body.strip():
            try:
                doc = json.loads(body)
            except ValueError as exc:
                raise InvalidValue(f"request body is not valid JSON: {exc}") from exc
            if not isinstance(doc, dict):
                raise InvalidValue("a JSON request body must be an object of values")
            for name, value in doc.items():
                if value is not None:  # JSON null: as if the value were not given
                    merged[str(name)] = _scalar(name, value)
        return cls(merged)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._values.get(name, default)

    def require(self, name: str) -> str:
        value = self._values.get(name)
        if value is None or value == "":
            raise InvalidValue(f"missing mandatory value '{name}'")
        return value

    def flag(self, name: str) -> bool:
        if name not in self._values:
            return False
        return self._values[name].strip().lower() not in _FALSE

    def choice(self, name: str, allowed: Iterable[str], required: bool = True) -> str | None:
        allowed = tuple(allowed)
        value = self.require(name) if required else self.get(name)
        if value is None:
            return None
        if value not in allowed:
            raise InvalidValue(f"invalid {name} '{value}'; valid values are: {', '.join(allowed)}")
        return value

    def limit(self, name: str = "limit") -> re.Pattern[str] | None:
        value = self.get(name)
        if value is None or value == "":
            return None
        return compile_limit(value, name)

    def __contains__(self, name: str) -> bool:
        return name in self._values


def compile_limit(value: str, name: str = "limit") -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise InvalidValue(f"{name} '{value}' is not a valid regular expression: {exc}") from exc


def _scalar(name: Any, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise InvalidValue(f"value '{name}' must be a string, number or boolean")
