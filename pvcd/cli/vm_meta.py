"""`pvc vm meta` and `pvc vm tag`: a VM's metadata (where it may run, how it is placed and
migrated) and its tags (extensions.md §6), through `/vm/<vm>/meta` and `/vm/<vm>/tags`."""

from __future__ import annotations

from typing import Any

import click

from pvcd.cli.client import Value, api_path
from pvcd.cli.completion import complete_vms
from pvcd.cli.context import CliContext, format_option, pass_cli
from pvcd.cli.output import Column, field, render_fields, render_table

NODE_SELECTORS = ("mem", "memprov", "vcpus", "load", "vms", "none")
MIGRATION_METHODS = ("live", "shutdown", "none")


def meta_details(meta: dict[str, Any]) -> str:
    return render_fields([
        ("Name", meta.get("name")),
        ("Node limit", ", ".join(meta.get("node_limit") or []) or "any node"),
        ("Node selector", meta.get("node_selector")),
        ("Autostart", "yes" if meta.get("node_autostart") else "no"),
        ("Migration method", meta.get("migration_method")),
        ("Max downtime", f"{meta.get('migration_max_downtime')} ms"),
        ("Profile", meta.get("profile")),
    ])


def tags_table(doc: dict[str, Any]) -> str:
    return render_table(doc.get("tags") or [], [
        Column("TAG", field("name")), Column("TYPE", field("type")),
        Column("PROTECTED", lambda tag: "yes" if tag.get("protected") else "no"),
    ], empty=f"VM {doc.get('name')} has no tags.")


@click.command("meta")
@click.argument("name", shell_complete=complete_vms)
@click.option("--limit", "node_limit", metavar="NODES",
              help="Nodes the VM may run on, comma-separated; \"\" clears the limit.")
@click.option("--selector", type=click.Choice(NODE_SELECTORS),
              help="How placement ranks nodes for this VM (none: the cluster default).")
@click.option("--autostart/--no-autostart", default=None,
              help="Start the VM when its node becomes ready (acts once).")
@click.option("--migration-method", type=click.Choice(MIGRATION_METHODS),
              help="live (never falls back), shutdown, or none (live, else shutdown).")
@click.option("--migration-max-downtime", type=click.IntRange(1, 60000), metavar="MS",
              help="The longest a live migration may pause the VM (1-60000 ms).")
@click.option("--profile", help="The provisioner profile of the VM; \"\" clears it.")
@format_option
@pass_cli
def vm_meta(cli: CliContext, name: str, node_limit: str | None, selector: str | None,
            autostart: bool | None, migration_method: str | None,
            migration_max_downtime: int | None, profile: str | None) -> None:
    """Show a VM's metadata, or change the values given (a new node limit applies at the
    VM's next placement: a running VM is not moved)."""
    values: dict[str, Value] = {
        "limit": node_limit, "selector": selector,
        "autostart": autostart,
        "migration_method": migration_method,
        "migration_max_downtime": migration_max_downtime, "profile": profile}
    if all(v is None for v in values.values()):
        cli.emit(cli.client.get(api_path("vm", name, "meta")), meta_details)
        return
    cli.message(cli.client.post(api_path("vm", name, "meta"), values))


@click.group("tag")
def vm_tag() -> None:
    """A VM's tags: labels that select VMs (`pvc vm list --tag`); they never move a VM."""


@vm_tag.command("get")
@click.argument("name", shell_complete=complete_vms)
@format_option
@pass_cli
def tag_get(cli: CliContext, name: str) -> None:
    """List a VM's tags."""
    cli.emit(cli.client.get(api_path("vm", name, "tags")), tags_table)


@vm_tag.command("add")
@click.argument("name", shell_complete=complete_vms)
@click.argument("tag")
@click.option("--protected", is_flag=True,
              help="Protect the tag: it cannot be removed until added again without this.")
@format_option
@pass_cli
def tag_add(cli: CliContext, name: str, tag: str, protected: bool) -> None:
    """Add TAG to a VM (or change whether an existing one is protected)."""
    cli.message(cli.client.post(api_path("vm", name, "tags"),
                                {"action": "add", "tag": tag, "protected": protected}))


@vm_tag.command("remove")
@click.argument("name", shell_complete=complete_vms)
@click.argument("tag")
@format_option
@pass_cli
def tag_remove(cli: CliContext, name: str, tag: str) -> None:
    """Remove TAG from a VM (a protected tag: add it again without --protected first)."""
    cli.message(cli.client.post(api_path("vm", name, "tags"), {"action": "remove", "tag": tag}))
