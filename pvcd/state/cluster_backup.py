"""The cluster's desired state as one document: what `GET /backup` answers and `POST /restore`
takes (extensions.md §9).

A backup holds the desired state only, the documents the API writes: the schema version,
networks with everything under them (static leases, ACLs, active leases) and their description
index, VM specs with their snapshots and the name index, the provisioner's objects and the
autobackup configuration. It leaves out what the cluster rebuilds or must not carry to another
cluster: node records (observed state, and today the fencing credentials), the coordinator and
fencing records, API sessions, the Ceph mirror (Ceph is the truth), tasks, faults, logs, a
VM's `status`, `owner` and `console`, the maintenance flag and the restore marker.
`pvcd.specs.cluster_backup.included` is that rule, in one place, for both directions.

The documents are copied from the watch-fed cache at one point (`StateCache.subtrees`): a
change that lands while the backup is taken is in it whole or not at all, never half (a VM
whose spec is in the copy and whose name entry is not).
"""

from __future__ import annotations

from typing import Any

from pvcd.specs.cluster_backup import FORMAT, FORMAT_VERSION, included
from pvcd.state.schema import SCHEMA_VERSION
from pvcd.state.view import ClusterView

# the top-level folders a backup reads (relative to the cluster root)
SOURCES = ("schema", "networks", "network-names", "vms", "vm-names", "provisioner", "cluster")


def desired_state(view: ClusterView) -> dict[str, Any]:
    """Every included document, by path relative to the cluster root, copied at one point."""
    prefix = view.paths.root.rstrip("/") + "/"
    entries = view.cache.subtrees(prefix + top for top in SOURCES)
    return {path[len(prefix):]: entry.doc for path, entry in sorted(entries.items())
            if included(path[len(prefix):])}


def backup_document(view: ClusterView, primary: str, now: float) -> dict[str, Any]:
    """The backup document of extensions.md §9 (`primary`: the node answering)."""
    znodes = desired_state(view)
    version = znodes.get("schema/version")
    schema_version = version.get("version") if isinstance(version, dict) else None
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "schema_version": schema_version if isinstance(schema_version, int)
            else SCHEMA_VERSION,
            "created": now, "primary_node": primary, "znodes": znodes}


def cluster_schema_version(view: ClusterView) -> int:
    """The cluster's schema version as the cache holds it."""
    doc = view.cache.get(view.paths.schema_version)
    version = doc.get("version") if isinstance(doc, dict) else None
    return version if isinstance(version, int) else SCHEMA_VERSION
