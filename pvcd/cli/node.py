"""`pvc node`: list, info, and the coordinator and domain state changes (with --wait)."""

from __future__ import annotations

from typing import Any

import click

from pvcd.cli.client import api_path
from pvcd.cli.completion import complete_nodes
from pvcd.cli.context import CliContext, format_option, pass_cli, wait_options
from pvcd.cli.logs import node_log
from pvcd.cli.output import Column, field, render_fields, render_table, show, size_mib

NODE_COLUMNS = [
    Column("NAME", field("name")),
    Column("DAEMON", field("daemon_state")),
    Column("COORDINATOR", field("coordinator_state")),
    Column("DOMAIN", field("domain_state")),
    Column("HEALTH", lambda n: health_text(n.get("health")), right=True),
    Column("VMS", field("domains_count"), right=True),
    Column("CPUS", field("cpu_count"), right=True),
    Column("LOAD", field("load"), right=True),
    Column("VCPU ALLOC", lambda n: f"{show(field('vcpu', 'allocated')(n))}/"
                                   f"{show(field('vcpu', 'total')(n))}", right=True),
    Column("MEM TOTAL", lambda n: size_mib(field("memory", "total")(n)), right=True),
    Column("USED", lambda n: size_mib(field("memory", "used")(n)), right=True),
    Column("FREE", lambda n: size_mib(field("memory", "free")(n)), right=True),
    Column("ALLOC", lambda n: size_mib(field("memory", "allocated")(n)), right=True),
]


def health_text(health: Any) -> str:
    """A node's health as a percentage; "N/A" before its first round or while it is down."""
    return f"{health}%" if isinstance(health, int) else "N/A"


def failing_checks(node: dict[str, Any]) -> list[str]:
    """The checks of the node's latest round that lower its health: `name (-delta): message`."""
    details = node.get("health_details") or []
    return [f"{d.get('name')} (-{d.get('health_delta')}): {d.get('message')}"
            for d in details if isinstance(d, dict) and d.get("health_delta")]


def node_table(nodes: list[dict[str, Any]]) -> str:
    return render_table(nodes, NODE_COLUMNS, empty="No nodes found.")


def node_details(nodes: list[dict[str, Any]]) -> str:
    blocks = []
    for node in nodes:
        memory = node.get("memory") or {}
        vcpu = node.get("vcpu") or {}
        blocks.append(render_fields([
            ("Name", node.get("name")),
            ("Daemon state", node.get("daemon_state")),
            ("Coordinator state", node.get("coordinator_state")),
            ("Domain state", node.get("domain_state")),
            ("Coordinator", node.get("coordinator")),
            ("OS", node.get("os")),
            ("Kernel", node.get("kernel")),
            ("Architecture", node.get("arch")),
            ("CPUs", node.get("cpu_count")),
            ("Load", node.get("load")),
            ("vCPUs allocated", f"{show(vcpu.get('allocated'))} of {show(vcpu.get('total'))}"),
            ("Memory total", size_mib(memory.get("total"))),
            ("Memory used", size_mib(memory.get("used"))),
            ("Memory free", size_mib(memory.get("free"))),
            ("Memory allocated", size_mib(memory.get("allocated"))),
            ("VMs", node.get("domains_count")),
            ("Running VMs", node.get("running_domains")),
            ("Health", health_text(node.get("health"))),
            ("Health checks", show(node.get("health_plugins"))),
        ]))
        failing = failing_checks(node)
        if failing:
            blocks[-1] += "\nFailing checks:\n" + "\n".join(f"  {line}" for line in failing)
    return "\n\n".join(blocks)


@click.group()
def node() -> None:
    """Cluster nodes: state, coordinator role, flush and ready."""


@node.command("list")
@click.argument("limit", required=False)
@format_option
@pass_cli
def node_list(cli: CliContext, limit: str | None) -> None:
    """List nodes (LIMIT: a regular expression matched in the names)."""
    cli.emit(cli.client.get("/node", {"limit": limit}), node_table)


@node.command("info")
@click.argument("name", shell_complete=complete_nodes)
@format_option
@pass_cli
def node_info(cli: CliContext, name: str) -> None:
    """Show one node in detail."""
    cli.emit(cli.client.get(api_path("node", name)), node_details)


GOALS = {"primary": "to be primary", "secondary": "to be secondary", "flush": "to be flushed",
         "ready": "to be ready"}


def _set_state(cli: CliContext, name: str, kind: str, value: str, wait: bool,
               timeout: float) -> None:
    # after a handover cut the wait, ask again at the state (the coordinator state says which)
    again = {kind: value} if kind == "coordinator-state" else {}
    cli.change(api_path("node", name, kind), {kind: value}, wait, timeout,
               f"node {name} {GOALS[value]}", (api_path("node", name, kind), again),
               lambda: _node(cli, name))


def _node(cli: CliContext, name: str) -> dict[str, Any]:
    nodes = cli.client.get(api_path("node", name))
    return dict(nodes[0])


def _state_command(name: str, kind: str, summary: str) -> None:
    @click.argument("node_name", metavar="NAME", shell_complete=complete_nodes)
    @wait_options
    @format_option
    @pass_cli
    def command(cli: CliContext, node_name: str, wait: bool, timeout: float) -> None:
        _set_state(cli, node_name, kind, name, wait, timeout)

    command.__doc__ = summary
    node.command(name)(command)


_state_command("primary", "coordinator-state",
               "Make a coordinator the primary (the current primary hands over).")
_state_command("secondary", "coordinator-state",
               "Make the primary a secondary (another coordinator takes over).")
_state_command("flush", "domain-state", "Move every VM off a node (for maintenance).")
_state_command("ready", "domain-state",
               "Take VMs again, and bring back those flushed from the node.")
node.add_command(node_log)
