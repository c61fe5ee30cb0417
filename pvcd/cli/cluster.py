"""`pvc cluster`: the cluster as a whole. `status` (one screen from `GET /status`: health and its
reasons, each node's health, the primary, counts), `maintenance on|off`, and the faults the
primary raised (`fault list|ack|ack-all|delete|delete-all`, PVC 1.0's names).
"""

from __future__ import annotations

from typing import Any

import click

from pvcd.cli.client import api_path
from pvcd.cli.cluster_backup import cluster_backup, cluster_restore
from pvcd.cli.context import CliContext, confirm, format_option, pass_cli, yes_option
from pvcd.cli.output import Column, field, render_fields, table_of

ATTENTION_LIMIT = 10  # names listed per problem before "and N more"
SORT_KEYS = ("first_reported", "last_reported", "acknowledged_at", "status", "health_delta",
             "message")

FAULT_COLUMNS = [
    Column("ID", field("id")),
    Column("STATUS", field("status")),
    Column("DELTA", field("health_delta"), right=True),
    Column("ACTIVE", field("active")),
    Column("LAST REPORTED", field("last_reported"), right=True),
    Column("MESSAGE", field("message")),
]


def _counts(counts: dict[str, int]) -> str:
    parts = [f"{number} {state}" for state, number in sorted(counts.items()) if state != "total"]
    return f"{counts.get('total', 0)} total" + (f"; {', '.join(parts)}" if parts else "")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:ATTENTION_LIMIT])
    more = len(names) - ATTENTION_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


def _percent(value: Any) -> str:
    return "unknown" if value is None else f"{value}%"


def render_status(status: dict[str, Any]) -> str:
    """`GET /status` on one screen: health and why, then each node's, then the counts."""
    health = status.get("cluster_health") or {}
    pairs: list[tuple[str, Any]] = [
        ("Health", _percent(health.get("health"))),
        ("Primary", status.get("primary_node") or "NONE (no primary coordinator)"),
        ("Maintenance", "ON (fencing suspended, no faults raised)"
         if status.get("maintenance") else "off"),
        ("Nodes", _counts(status.get("nodes") or {})),
        ("VMs", _counts(status.get("vms") or {})),
        ("Networks", status.get("networks")),
    ]
    if (status.get("osds") or {}).get("total"):
        pairs += [("OSDs", _counts(status["osds"])),
                  ("Pools", f"{status.get('pools')}; volumes {status.get('volumes')}; "
                            f"snapshots {status.get('snapshots')}")]
    detail = status.get("detail") or {}
    attention = [n["name"] for n in detail.get("node") or []
                 if n.get("daemon_state") != "run" or n.get("domain_state") != "ready"]
    if attention:
        pairs.append(("Nodes not run/ready", _names(attention)))
    lines = [render_fields(pairs)]
    reasons = health.get("messages") or []
    cleared = {f.get("id") for f in detail.get("faults") or [] if f.get("active") is False}
    if reasons:
        lines.append("Unacknowledged faults:")
        lines += [f"  {m.get('id')} (-{m.get('health_delta')}): {m.get('text')}"
                  + (" [cleared]" if m.get("id") in cleared else "") for m in reasons]
    node_health = status.get("node_health") or {}
    if node_health:
        lines.append("Node health:")
        for name, node in sorted(node_health.items()):
            messages = "; ".join(node.get("messages") or [])
            lines.append(f"  {name}: {_percent(node.get('health'))}"
                         + (f" ({messages})" if messages else ""))
    return "\n".join(lines)


@click.group()
def cluster() -> None:
    """The cluster as a whole."""


cluster.add_command(cluster_backup)
cluster.add_command(cluster_restore)


@cluster.command("status")
@format_option
@pass_cli
def cluster_status(cli: CliContext) -> None:
    """One screen: cluster health and its reasons, node health, primary, counts by state."""
    cli.emit(cli.client.get(api_path("status")), render_status)


@cluster.command("maintenance")
@click.argument("state", type=click.Choice(["on", "off"]))
@format_option
@pass_cli
def cluster_maintenance(cli: CliContext, state: str) -> None:
    """Turn maintenance mode on (fencing suspended, no faults raised) or off."""
    cli.message(cli.client.post(api_path("maintenance"), {"state": state}))


@cluster.group("fault")
def fault() -> None:
    """Faults the primary raised (extensions.md §8.2)."""


@fault.command("list")
@click.option("--sort-key", "-s", type=click.Choice(SORT_KEYS), default="last_reported",
              show_default=True, help="The order (times newest first).")
@format_option
@pass_cli
def fault_list(cli: CliContext, sort_key: str) -> None:
    """List the faults."""
    cli.emit(cli.client.get(api_path("faults"), {"sort_key": sort_key}),
             table_of(FAULT_COLUMNS, "No faults."))


@fault.command("ack")
@click.argument("fault_id", metavar="ID")
@format_option
@pass_cli
def fault_ack(cli: CliContext, fault_id: str) -> None:
    """Acknowledge a fault: it no longer lowers the cluster's health."""
    cli.message(cli.client.put(api_path("faults", fault_id)))


@fault.command("ack-all")
@format_option
@pass_cli
def fault_ack_all(cli: CliContext) -> None:
    """Acknowledge every fault."""
    cli.message(cli.client.put(api_path("faults")))


@fault.command("delete")
@click.argument("fault_id", metavar="ID")
@yes_option
@format_option
@pass_cli
def fault_delete(cli: CliContext, fault_id: str, yes: bool) -> None:
    """Delete a fault (raised again, as new, while its condition persists)."""
    confirm(yes, f"Delete fault {fault_id}?")
    cli.message(cli.client.delete(api_path("faults", fault_id)))


@fault.command("delete-all")
@yes_option
@format_option
@pass_cli
def fault_delete_all(cli: CliContext, yes: bool) -> None:
    """Delete every fault."""
    confirm(yes, "Delete every fault?")
    cli.message(cli.client.delete(api_path("faults")))
