"""Human output: aligned tables, `key: value` blocks and readable values.

Pure functions from data to text, so they are unit-tested without a cluster. The JSON format
(`--format json`) bypasses all of this and prints what the API returned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Row], Any]
    right: bool = False  # numbers read best right-aligned


def field(*keys: str) -> Callable[[Row], Any]:
    """A getter for a (nested) field: field("memory", "total")."""

    def get(row: Row) -> Any:
        value: Any = row
        for key in keys:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value

    return get


def show(value: Any) -> str:
    """One value as a table cell or a `key: value` line."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(show(item) for item in value) if value else "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={show(v)}" for k, v in value.items()) if value else "-"
    return str(value)


def render_table(rows: Sequence[Row], columns: Sequence[Column], empty: str = "") -> str:
    """An aligned table with a header line; `empty` when there are no rows."""
    if not rows:
        return empty
    cells = [[show(column.value(row)) for column in columns] for row in rows]
    headers = [column.header for column in columns]
    widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(columns))]
    lines = []
    for line in [headers, *cells]:
        parts = [text.rjust(width) if column.right and line is not headers else text.ljust(width)
                 for text, width, column in zip(line, widths, columns, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def table_of(columns: Sequence[Column], empty: str = "") -> Callable[[Any], str]:
    """A renderer for a list of rows (or one row, as some element endpoints return)."""
    return lambda rows: render_table(rows if isinstance(rows, list) else [rows], columns, empty)


def render_fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """`Label:  value` lines with the values aligned."""
    if not pairs:
        return ""
    width = max(len(label) for label, _ in pairs) + 1
    return "\n".join(f"{label + ':':<{width}}  {show(value)}".rstrip() for label, value in pairs)


def size_mib(mib: Any) -> str:
    """A size given in MiB (node and VM memory), in the largest unit that keeps it readable."""
    if not isinstance(mib, (int, float)) or isinstance(mib, bool):
        return show(mib)
    return size_bytes(mib * 1024 * 1024)


def size_bytes(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return show(value)
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(amount) < 1024 or unit == "PiB":
            if unit == "B":
                return f"{int(amount)} B"
            text = f"{amount:.1f}".removesuffix(".0")
            return f"{text} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2)
