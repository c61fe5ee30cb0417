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

The documents are copied from the watch-fed cache at one point (`StateCache.subtrees`: no
change is applied while the copy is taken). That alone does not make the copy whole: the cache
learns a transaction one znode at a time (a watch event per znode, or the store's local apply
op by op), so it may hold a VM's spec and not yet its name entry. A copy is therefore taken
again, on the cache's next change, until its name indexes are whole (`check_indexes`: every
VM and network with its entry, every entry with its object), which a backup must be for its
restore to pass. A tree that stays inconsistent (a bug, a hand edit) is copied as it is after
`SETTLE_TIMEOUT`, with a warning; its restore is then refused, saying where.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pvcd.domain.errors import InvalidValue
from pvcd.specs.cluster_backup import FORMAT, FORMAT_VERSION, check_indexes, included
from pvcd.state.schema import SCHEMA_VERSION
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

SETTLE_TIMEOUT = 2.0  # seconds a copy waits for the cache to hold no transaction in part
# the top-level folders a backup reads (relative to the cluster root)
SOURCES = ("schema", "networks", "network-names", "vms", "vm-names", "provisioner", "cluster")


def desired_state(view: ClusterView, settle: float = SETTLE_TIMEOUT) -> dict[str, Any]:
    """Every included document, by path relative to the cluster root, copied at one point
    at which the cache holds no transaction in part (module docstring); after `settle`
    seconds without such a point, the last copy (the tree itself is inconsistent then)."""
    changed = threading.Event()

    def on_change(path: str) -> None:
        changed.set()

    view.cache.subscribe(on_change)
    try:
        deadline = time.monotonic() + settle
        while True:
            changed.clear()
            znodes = _copy(view)
            try:
                check_indexes(znodes)
                return znodes
            except InvalidValue as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("event=backup-inconsistent reason=%s", exc)
                    return znodes
            changed.wait(left)
    finally:
        view.cache.unsubscribe(on_change)


def _copy(view: ClusterView) -> dict[str, Any]:
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
