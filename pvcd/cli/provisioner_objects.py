"""The commands every kind of provisioner object has: `list [LIMIT]`, `info NAME` and `remove
NAME` (extensions.md §3.1: a list with `limit`, a one-element list per name, a delete)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from pvcd.cli.client import api_path
from pvcd.cli.context import CliContext, confirm, format_option, pass_cli, yes_option
from pvcd.cli.output import Column, render_fields, table_of


def fields_of(columns: list[Column]) -> Callable[[Any], str]:
    """`Label: value` blocks of the objects of a list, from the list's columns."""
    return lambda rows: "\n\n".join(render_fields(
        [(c.header.capitalize(), c.value(row)) for c in columns]) for row in rows)


def object_commands(group: click.Group, parts: tuple[str, ...], what: str,
                    columns: list[Column], details: Callable[[Any], str] | None = None,
                    remove_note: str = "") -> None:
    """Add `list`, `info` and `remove` to `group` for the objects at
    `/provisioner/<parts...>`, called `what` in messages."""
    path = api_path("provisioner", *parts)

    @group.command("list")
    @click.argument("limit", required=False)
    @format_option
    @pass_cli
    def object_list(cli: CliContext, limit: str | None) -> None:
        cli.emit(cli.client.get(path, {"limit": limit}), table_of(columns, f"No {what} found."))

    object_list.help = f"List {what} (LIMIT: a regular expression matched in the names)."

    @group.command("info")
    @click.argument("name")
    @format_option
    @pass_cli
    def object_info(cli: CliContext, name: str) -> None:
        cli.emit(cli.client.get(f"{path}{api_path(name)}"), details or fields_of(columns))

    object_info.help = f"Show one of the {what}."

    @group.command("remove")
    @click.argument("name")
    @yes_option
    @format_option
    @pass_cli
    def object_remove(cli: CliContext, name: str, yes: bool) -> None:
        confirm(yes, f"Remove '{name}' from the {what}?")
        cli.message(cli.client.delete(f"{path}{api_path(name)}"))

    object_remove.help = f"Remove one of the {what}{remove_note}."
