"""`pvc cluster status`: the whole cluster on one screen.

The primary, node and VM counts by state, storage health when the cluster has storage, and
what needs attention (nodes not running or not ready, failed VMs) by name.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import click

from pvcd.cli.client import api_path
from pvcd.cli.cluster_backup import cluster_backup, cluster_restore
from pvcd.cli.context import CliContext, format_option, pass_cli
from pvcd.cli.errors import ApiFailure
from pvcd.cli.output import render_fields

ATTENTION_LIMIT = 10  # names listed per problem before "and N more"
_HEALTH = re.compile(r"health:\s*(HEALTH_[A-Z_]+)")


def storage_health(doc: Any) -> str | None:
    """HEALTH_OK/WARN/ERR from the status endpoint: its `health` field (a pvcd addition), else
    found in `ceph_data` (raw `ceph status` text, or a parsed form)."""
    if isinstance(doc, dict) and isinstance(doc.get("health"), str) and doc["health"]:
        return str(doc["health"])
    data = doc.get("ceph_data") if isinstance(doc, dict) else None
    if isinstance(data, dict):
        health = data.get("health")
        status = health.get("status") if isinstance(health, dict) else health
        return str(status) if status else None
    if isinstance(data, str):
        match = _HEALTH.search(data)
        return match.group(1) if match else None
    return None


def summarise(url: str, nodes: list[dict[str, Any]], vms: list[dict[str, Any]],
              storage: dict[str, Any]) -> dict[str, Any]:
    primary = next((n["name"] for n in nodes if n.get("coordinator_state") == "primary"), None)
    return {
        "api": url,
        "primary": primary,
        "nodes": {
            "total": len(nodes),
            "daemon_state": dict(Counter(str(n.get("daemon_state")) for n in nodes)),
            "domain_state": dict(Counter(str(n.get("domain_state")) for n in nodes)),
            "attention": [n["name"] for n in nodes if n.get("daemon_state") != "run" or
                          n.get("domain_state") != "ready"],
        },
        "vms": {
            "total": len(vms),
            "state": dict(Counter(str(vm.get("state")) for vm in vms)),
            "failed": [vm["name"] for vm in vms if vm.get("state") == "failed"],
        },
        "storage": storage,
    }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{number} {state}" for state, number in sorted(counts.items())) or "none"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:ATTENTION_LIMIT])
    more = len(names) - ATTENTION_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


def render_summary(summary: dict[str, Any]) -> str:
    nodes, vms, storage = summary["nodes"], summary["vms"], summary["storage"]
    if storage.get("available"):
        storage_line = storage.get("health") or "unknown health"
    else:
        storage_line = f"not available ({storage.get('message')})"
    pairs: list[tuple[str, Any]] = [
        ("Cluster", summary["api"]),
        ("Primary", summary["primary"] or "NONE (no primary coordinator)"),
        ("Nodes", f"{nodes['total']} total; daemon: {_counts(nodes['daemon_state'])}; "
                  f"domain: {_counts(nodes['domain_state'])}"),
        ("VMs", f"{vms['total']} total; {_counts(vms['state'])}"),
        ("Storage", storage_line),
    ]
    if nodes["attention"]:
        pairs.append(("Nodes not run/ready", _names(nodes["attention"])))
    if vms["failed"]:
        pairs.append(("Failed VMs", _names(vms["failed"])))
    return render_fields(pairs)


@click.group()
def cluster() -> None:
    """The cluster as a whole."""


cluster.add_command(cluster_backup)
cluster.add_command(cluster_restore)


@cluster.command("status")
@format_option
@pass_cli
def cluster_status(cli: CliContext) -> None:
    """One-screen summary: primary, nodes, VMs by state, storage health."""
    client = cli.client
    nodes = client.get("/node")
    vms = client.get("/vm")
    try:
        health = storage_health(client.get(api_path("storage", "ceph", "status")))
        storage: dict[str, Any] = {"available": True, "health": health}
    except ApiFailure as exc:  # a cluster without storage, or Ceph not answering
        message = "the API has no storage endpoints" if exc.status == 404 else str(exc)
        storage = {"available": False, "health": None, "message": message}
    cli.emit(summarise(client.connection.url, nodes, vms, storage), render_summary)
