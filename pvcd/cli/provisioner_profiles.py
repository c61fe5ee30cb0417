"""`pvc provisioner userdata|script|profile` (extensions.md §3.5, §3.6, §3.8); the group itself
is `pvcd.cli.provisioner`.

Userdata is read from a file (`-` for standard input) as UTF-8 and sent as is.
"""

from __future__ import annotations

from typing import Any

import click

from pvcd.cli.client import Value, api_path
from pvcd.cli.context import CliContext, format_option, pass_cli
from pvcd.cli.errors import CliError
from pvcd.cli.output import Column, Row, field, render_fields, table_of
from pvcd.cli.provisioner_objects import object_commands

P = "/provisioner"
PROFILE_TYPES = ("provisioner", "ova")
METHODS = ("clone", "blank", "ova")


def _read_text(source: Any) -> str:
    raw = source.read()
    try:
        return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError:
        raise CliError(f"{getattr(source, 'name', 'the file')} is not UTF-8 text") from None


# --- userdata -----------------------------------------------------------------------------

USERDATA_COLUMNS = [Column("NAME", field("name")),
                    Column("FIRST LINE", lambda row: (row.get("userdata") or "").split("\n")[0]),
                    Column("BYTES", lambda row: len((row.get("userdata") or "").encode()),
                           right=True)]


@click.group()
def userdata() -> None:
    """User-data served to new VMs by the metadata service (cloud-init)."""


object_commands(userdata, ("userdata",), "userdata", USERDATA_COLUMNS,
                lambda rows: "\n".join(str(row.get("userdata", "")) for row in rows),
                " (refused while a profile names it)")


@userdata.command("add")
@click.argument("name")
@click.argument("data_file", metavar="FILE", type=click.File("rb"))
@format_option
@pass_cli
def userdata_add(cli: CliContext, name: str, data_file: Any) -> None:
    """Add userdata NAME from FILE ("-" reads standard input; at most 256 KiB of UTF-8)."""
    cli.message(cli.client.post(f"{P}/userdata", {"name": name, "data": _read_text(data_file)}))


@userdata.command("modify")
@click.argument("name")
@click.argument("data_file", metavar="FILE", type=click.File("rb"))
@format_option
@pass_cli
def userdata_modify(cli: CliContext, name: str, data_file: Any) -> None:
    """Replace the text of userdata NAME with FILE ("-" reads standard input)."""
    cli.message(cli.client.put(api_path("provisioner", "userdata", name),
                               {"data": _read_text(data_file)}))


# --- scripts ------------------------------------------------------------------------------

def _arguments(row: Row) -> str:
    return ", ".join(str(a.get("name")) for a in row.get("arguments") or []) or "-"


SCRIPT_COLUMNS = [Column("NAME", field("name")), Column("ARGUMENTS", _arguments),
                  Column("DESCRIPTION", field("description"))]


@click.group()
def script() -> None:
    """The built-in install methods (pvcd runs no uploaded provisioning scripts)."""


@script.command("list")
@format_option
@pass_cli
def script_list(cli: CliContext) -> None:
    """List the built-in install methods and their arguments."""
    cli.emit(cli.client.get(f"{P}/script"), table_of(SCRIPT_COLUMNS))


@script.command("info")
@click.argument("name", type=click.Choice(METHODS))
@format_option
@pass_cli
def script_info(cli: CliContext, name: str) -> None:
    """Show one install method with its arguments."""
    def details(rows: list[Row]) -> str:
        row = rows[0]
        pairs = [("Name", row.get("name")), ("Description", row.get("description"))]
        pairs += [(f"arg {a.get('name')}", a.get("description"))
                  for a in row.get("arguments") or []]
        return render_fields(pairs)
    cli.emit(cli.client.get(api_path("provisioner", "script", name)), details)


# --- profiles -----------------------------------------------------------------------------

PROFILE_COLUMNS = [
    Column("NAME", field("name")), Column("TYPE", field("profile_type")),
    Column("SYSTEM", field("system_template")), Column("NETWORK", field("network_template")),
    Column("STORAGE", field("storage_template")), Column("USERDATA", field("userdata")),
    Column("METHOD", field("script")), Column("OVA", field("ova")),
    Column("ARGUMENTS", field("arguments")),
]


@click.group()
def profile() -> None:
    """Profiles: the templates, userdata and method a VM is created from."""


object_commands(profile, ("profile",), "profiles", PROFILE_COLUMNS,
                remove_note=" (VMs made from it keep running, without user-data)")


def profile_options(command: Any) -> Any:
    for decl, dest, help_text in reversed([
        ("--system-template", "system_template", "The system template."),
        ("--network-template", "network_template", "The network template ('' in modify: "
                                                   "none)."),
        ("--storage-template", "storage_template", "The storage template ('' in modify: "
                                                   "none)."),
        ("--userdata", "userdata", "The userdata ('' in modify: none)."),
    ]):
        command = click.option(decl, dest, help=help_text)(command)
    command = click.option("--script", "--method", "script", type=click.Choice(METHODS),
                           help="The install method (default: clone; ova for type ova).")(
        command)
    return click.option("--arg", "args", multiple=True, metavar="NAME=VALUE",
                        help="An argument of the method; repeat for more (in modify: "
                             "replaces them; --arg '' clears them).")(command)


def _profile_values(options: dict[str, Any]) -> dict[str, Value]:
    values: dict[str, Value] = {name: options[name] for name in (
        "system_template", "network_template", "storage_template", "userdata", "script")}
    values["arg"] = list(options["args"]) if options["args"] else None
    return values


@profile.command("add")
@click.argument("name")
@click.option("--type", "-t", "profile_type", type=click.Choice(PROFILE_TYPES),
              default="provisioner", show_default=True, help="The kind of profile.")
@click.option("--ova", help="The OVA (type ova only).")
@profile_options
@format_option
@pass_cli
def profile_add(cli: CliContext, name: str, profile_type: str, ova: str | None,
                **options: Any) -> None:
    """Add profile NAME."""
    if options["system_template"] is None:
        raise click.UsageError("Missing option '--system-template'.")
    cli.message(cli.client.post(f"{P}/profile", {
        "name": name, "profile_type": profile_type, "ova": ova, **_profile_values(options)}))


@profile.command("modify")
@click.argument("name")
@profile_options
@format_option
@pass_cli
def profile_modify(cli: CliContext, name: str, **options: Any) -> None:
    """Change the given values of profile NAME."""
    values = _profile_values(options)
    if all(v is None for v in values.values()):
        raise click.UsageError("nothing to change: give at least one option")
    cli.message(cli.client.put(api_path("provisioner", "profile", name), values))
