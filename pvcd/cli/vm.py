"""`pvc vm`: list and inspect VMs, define/modify/undefine them, change state and node.

State and node changes are recorded by the API and carried out by a node; with `--wait` the API
answers once the VM has settled (no migration or restart pending, running on its node or
stopped, as `pvcd.domain.settled` decides); a VM that fails meanwhile ends the wait with its
failure reason.
"""

from __future__ import annotations

import difflib
import xml.etree.ElementTree as ElementTree
from typing import Any, TextIO

import click

from pvcd.cli.client import api_path
from pvcd.cli.completion import complete_nodes, complete_vms
from pvcd.cli.context import (
    CliContext,
    confirm,
    format_option,
    pass_cli,
    wait_options,
    yes_option,
)
from pvcd.cli.editor import edit_text
from pvcd.cli.logs import vm_log
from pvcd.cli.output import Column, Row, field, render_fields, render_table, size_mib
from pvcd.cli.task import follow_task, follow_task_options
from pvcd.cli.vm_autobackup import vm_autobackup
from pvcd.cli.vm_backup import snapshot_export, snapshot_import, vm_backup, vm_restore
from pvcd.cli.vm_device import vm_device
from pvcd.cli.vm_meta import MIGRATION_METHODS, NODE_SELECTORS, vm_meta, vm_tag
from pvcd.cli.vm_snapshot import vm_snapshot

SELECTORS = NODE_SELECTORS
STATES = ("start", "restart", "shutdown", "stop", "failed", "migrate", "unmigrate", "disable",
          "provision")


def migrated(vm: Row) -> str:
    return f"from {vm['last_node']}" if vm.get("last_node") else "no"


def network_sources(vm: Row) -> list[str]:
    return [str(net.get("source")) for net in vm.get("networks") or []]


VM_COLUMNS = [
    Column("NAME", field("name")),
    Column("UUID", field("uuid")),
    Column("STATE", field("state")),
    Column("NODE", field("node")),
    Column("MIGRATED", migrated),
    Column("VCPU", field("vcpu"), right=True),
    Column("MEMORY", lambda vm: size_mib(vm.get("memory")), right=True),
    Column("NETWORKS", network_sources),
]


def vm_table(vms: list[dict[str, Any]]) -> str:
    return render_table(vms, VM_COLUMNS, empty="No VMs found.")


def vm_details(vms: list[dict[str, Any]]) -> str:
    blocks = []
    for vm in vms:
        lines = render_fields([
            ("Name", vm.get("name")),
            ("UUID", vm.get("uuid")),
            ("Description", vm.get("description")),
            ("State", vm.get("state")),
            ("Node", vm.get("node")),
            ("Running on", vm.get("running_on")),
            ("Migrated", migrated(vm)),
            ("Failed reason", vm.get("failed_reason")),
            ("Node limit", ", ".join(vm.get("node_limit") or []) or None),
            ("Node selector", vm.get("node_selector")),
            ("Autostart", "yes" if vm.get("node_autostart") else None),
            ("Migration method", vm.get("migration_method")),
            ("Profile", vm.get("profile")),
            ("Tags", [t.get("name") for t in vm.get("tags") or []] or None),
            ("Snapshots", [s.get("name") for s in vm.get("snapshots") or []] or None),
            ("vCPUs", vm.get("vcpu")),
            ("vCPU topology", vm.get("vcpu_topology")),
            ("Memory", size_mib(vm.get("memory"))),
            ("Type", vm.get("type")),
            ("Architecture", vm.get("arch")),
            ("Machine", vm.get("machine")),
            ("Console", vm.get("console")),
            ("Emulator", vm.get("emulator")),
            ("Features", vm.get("features")),
        ])
        networks = render_table(vm.get("networks") or [], [
            Column("TYPE", field("type")), Column("SOURCE", field("source")),
            Column("MAC", field("mac")), Column("MODEL", field("model"))])
        disks = render_table(vm.get("disks") or [], [
            Column("TYPE", field("type")), Column("NAME", field("name")),
            Column("DEV", field("dev")), Column("BUS", field("bus"))])
        for title, table in (("Networks", networks), ("Disks", disks)):
            if table:
                lines += f"\n\n{title}:\n" + "\n".join("  " + line for line in table.splitlines())
        blocks.append(lines)
    return "\n\n".join(blocks)


def _vm(cli: CliContext, name: str) -> dict[str, Any]:
    return dict(cli.client.get(api_path("vm", name))[0])


def _change(cli: CliContext, name: str, uuid: str, what: str, path: str,
            values: dict[str, Any], wait: bool, timeout: float) -> None:
    """A state or node change of VM `uuid`; `--wait` asks again at its state after a
    handover."""
    cli.change(path, values, wait, timeout, f"VM {name} {what}",
               (api_path("vm", uuid, "state"), {}), lambda: _vm(cli, uuid))


def _domain_name(xml: str) -> str | None:
    """The VM's name in its XML, or None when the API will refuse the XML anyway."""
    try:
        name = ElementTree.fromstring(xml).findtext("name")
    except ElementTree.ParseError:
        return None
    return name.strip() or None if name else None


@click.group()
def vm() -> None:
    """Virtual machines: define, change state, migrate, inspect."""


@vm.command("list")
@click.argument("limit", required=False)
@click.option("--node", "-n", help="Only VMs assigned to this node.",
              shell_complete=complete_nodes)
@click.option("--state", "-s", type=click.Choice(STATES), help="Only VMs in this state.")
@click.option("--tag", "-t", help="Only VMs with this tag.")
@click.option("--negate", is_flag=True,
              help="Invert --node, --state and --tag: VMs not matching them.")
@format_option
@pass_cli
def vm_list(cli: CliContext, limit: str | None, node: str | None, state: str | None,
            tag: str | None, negate: bool) -> None:
    """List VMs (LIMIT: a regular expression matched in the names)."""
    cli.emit(cli.client.get("/vm", {"limit": limit, "node": node, "state": state, "tag": tag,
                                    "negate": negate or None}), vm_table)


@vm.command("info")
@click.argument("name", shell_complete=complete_vms)
@format_option
@pass_cli
def vm_info(cli: CliContext, name: str) -> None:
    """Show one VM (by name or UUID) in detail."""
    cli.emit(cli.client.get(api_path("vm", name)), vm_details)


@vm.command("dump")
@click.argument("name", shell_complete=complete_vms)
@pass_cli
def vm_dump(cli: CliContext, name: str) -> None:
    """Print a VM's libvirt XML."""
    xml = cli.client.get_text(api_path("vm", name, "dump"))
    click.echo(xml, nl=not xml.endswith("\n"))


@vm.command("define")
@click.argument("xml_file", metavar="FILE", type=click.File("r"))
@click.option("--node", "-n", help="Put the VM on this node (default: chosen by the selector).",
              shell_complete=complete_nodes)
@click.option("--selector", type=click.Choice(SELECTORS),
              help="How to choose the node (default: the cluster's).")
@click.option("--limit", "node_limit", metavar="NODES",
              help="Nodes the VM may run on, comma-separated (its node_limit).")
@click.option("--autostart", is_flag=True, help="Start it when its node becomes ready.")
@click.option("--migration-method", type=click.Choice(MIGRATION_METHODS),
              help="live, shutdown, or none (live, else shutdown).")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--protected-tag", "protected_tags", multiple=True,
              help="A protected tag (repeatable).")
@wait_options
@format_option
@pass_cli
def vm_define(cli: CliContext, xml_file: TextIO, node: str | None, selector: str | None,
              node_limit: str | None, autostart: bool, migration_method: str | None,
              tags: tuple[str, ...], protected_tags: tuple[str, ...], wait: bool,
              timeout: float) -> None:
    """Define (and start) a VM from a libvirt XML FILE ("-" reads standard input), with its
    metadata and tags (`pvc vm meta`, `pvc vm tag` change them later)."""
    xml = xml_file.read()
    name = _domain_name(xml)
    # by name: the UUID may be chosen by the API; a re-attach after a handover asks by name
    _change(cli, name or "", name or "", "to run", "/vm",
            {"xml": xml, "node": node, "selector": selector, "limit": node_limit,
             "autostart": autostart or None, "migration_method": migration_method,
             "user_tags": list(tags), "protected_tags": list(protected_tags)},
            wait and name is not None, timeout)


@vm.command("create")
@click.argument("name")
@click.option("--profile", "-p", required=True, help="The provisioner profile to create it from.")
@click.option("--arg", "-a", "args", multiple=True, metavar="NAME=VALUE",
              help="An argument of the profile's install method (overrides the profile's); "
                   "repeatable.")
@click.option("--description", "-d", help="The domain's description.")
@click.option("--no-define", is_flag=True,
              help="Only make the disks; the task's result holds the XML (implies --no-start).")
@click.option("--no-start", is_flag=True, help="Define the VM but leave it stopped.")
@follow_task_options(3600.0)
@format_option
@pass_cli
def vm_create(cli: CliContext, name: str, profile: str, args: tuple[str, ...],
              description: str | None, no_define: bool, no_start: bool, wait: bool,
              timeout: float) -> None:
    """Create VM NAME from a provisioner profile (its disks, its definition, its start), as the
    task provisioner.create."""
    values: dict[str, Any] = {
        "name": name, "profile": profile, "arg": list(args) or None,
        "description": description, "define_vm": False if no_define else None,
        "start_vm": False if no_start or no_define else None}
    accepted = cli.client.post_doc(api_path("provisioner", "create"), values)
    if not wait:
        cli.message(str(accepted.get("message")), accepted if cli.json else None)
        return
    follow_task(cli, str(accepted["task_id"]), timeout)


@vm.command("modify")
@click.argument("name", shell_complete=complete_vms)
@click.argument("xml_file", metavar="[FILE]", type=click.File("r"), required=False)
@click.option("--restart", "-r", is_flag=True, help="Restart the VM with the new definition.")
@format_option
@pass_cli
def vm_modify(cli: CliContext, name: str, xml_file: TextIO | None, restart: bool) -> None:
    """Replace a VM's XML with FILE, or edit the current XML in $EDITOR.

    Without FILE the current definition opens in $VISUAL or $EDITOR (default vi); it is sent
    back only if it changed. Without --restart the change applies at the VM's next restart.
    """
    if xml_file is not None:
        xml = xml_file.read()
    else:
        current = cli.client.get_text(api_path("vm", name, "dump"))
        xml = edit_text(current, cli.env)
        if xml.strip() == current.strip():
            cli.message(f"VM '{name}' unchanged; nothing sent")
            return
        if not cli.json:
            diff = difflib.unified_diff(current.splitlines(), xml.splitlines(),
                                        "current", "edited", lineterm="")
            click.echo("\n".join(diff), err=True)
    cli.message(cli.client.put(api_path("vm", name), {"xml": xml, "restart": restart or None}))


@vm.command("rename")
@click.argument("name", shell_complete=complete_vms)
@click.argument("new_name")
@format_option
@pass_cli
def vm_rename(cli: CliContext, name: str, new_name: str) -> None:
    """Rename a stopped VM to NEW_NAME, with its RBD volumes named after it."""
    cli.message(cli.client.post(api_path("vm", name, "rename"), {"new_name": new_name}))


@vm.command("undefine")
@click.argument("name", shell_complete=complete_vms)
@yes_option
@format_option
@pass_cli
def vm_undefine(cli: CliContext, name: str, yes: bool) -> None:
    """Stop a VM and remove it from the cluster; its disks stay."""
    confirm(yes, f"Stop and undefine VM '{name}'? Its disks are kept.")
    cli.message(cli.client.delete(api_path("vm", name)))


@vm.command("remove")
@click.argument("name", shell_complete=complete_vms)
@yes_option
@format_option
@pass_cli
def vm_remove(cli: CliContext, name: str, yes: bool) -> None:
    """Stop a VM, remove it from the cluster AND delete its disks."""
    confirm(yes, f"Stop and remove VM '{name}' and DELETE ALL ITS DISKS?")
    cli.message(cli.client.delete(api_path("vm", name), {"delete_disks": True}))


def _state_command(state: str, summary: str, goal: str) -> None:
    @click.argument("name", shell_complete=complete_vms)
    @wait_options
    @format_option
    @pass_cli
    def command(cli: CliContext, name: str, wait: bool, timeout: float) -> None:
        uuid = _vm(cli, name)["uuid"]
        _change(cli, name, uuid, goal, api_path("vm", uuid, "state"), {"state": state}, wait,
                timeout)

    command.__doc__ = summary
    vm.command(state)(command)


_state_command("start", "Start a VM.", "to run")
_state_command("shutdown", "Shut a VM down gracefully (forced stop after the node's timeout).",
               "to shut down")
_state_command("stop", "Stop a VM at once (power off).", "to stop")
_state_command("restart", "Restart a VM (also applies a modified definition).", "to restart")


def _node_change(cli: CliContext, name: str, values: dict[str, Any], wait: bool,
                 timeout: float) -> None:
    uuid = _vm(cli, name)["uuid"]
    _change(cli, name, uuid, "to settle on its new node", api_path("vm", uuid, "node"), values,
            wait, timeout)


@vm.command("migrate")
@click.argument("name", shell_complete=complete_vms)
@click.option("--node", "-n", help="Target node (default: chosen by the selector).",
              shell_complete=complete_nodes)
@click.option("--selector", type=click.Choice(SELECTORS), help="How to choose the target.")
@click.option("--force", is_flag=True,
              help="Migrate again although already migrated (keeps the original node).")
@wait_options
@format_option
@pass_cli
def vm_migrate(cli: CliContext, name: str, node: str | None, selector: str | None, force: bool,
               wait: bool, timeout: float) -> None:
    """Move a VM to another node (live if possible), remembering where it came from."""
    _node_change(cli, name, {"action": "migrate", "node": node, "selector": selector,
                             "force": force or None}, wait, timeout)


@vm.command("unmigrate")
@click.argument("name", shell_complete=complete_vms)
@wait_options
@format_option
@pass_cli
def vm_unmigrate(cli: CliContext, name: str, wait: bool, timeout: float) -> None:
    """Return a migrated VM to the node it came from."""
    _node_change(cli, name, {"action": "unmigrate"}, wait, timeout)


@vm.command("move")
@click.argument("name", shell_complete=complete_vms)
@click.option("--node", "-n", help="Target node (default: chosen by the selector).",
              shell_complete=complete_nodes)
@click.option("--selector", type=click.Choice(SELECTORS), help="How to choose the target.")
@wait_options
@format_option
@pass_cli
def vm_move(cli: CliContext, name: str, node: str | None, selector: str | None, wait: bool,
            timeout: float) -> None:
    """Move a VM to another node for good (it is not considered migrated)."""
    _node_change(cli, name, {"action": "migrate", "node": node, "selector": selector,
                             "permanent": True}, wait, timeout)


vm.add_command(vm_meta)
vm.add_command(vm_tag)
vm.add_command(vm_log)
vm.add_command(vm_snapshot)
vm_snapshot.add_command(snapshot_export)
vm_snapshot.add_command(snapshot_import)
vm.add_command(vm_backup)
vm.add_command(vm_restore)
vm.add_command(vm_autobackup)
vm.add_command(vm_device)
