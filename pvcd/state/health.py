"""Reading health and faults from the cache (extensions.md §8): the faults in `faults/<id>` and
each node's latest checks in `nodes/<node>/health`, re-validated on the way in
(`pvcd.domain.health`), for the primary's fault monitor, the API's `/faults` and `/status`, and
the metrics. A document that does not validate is skipped (a debug line), never
passed on: anything that can reach ZooKeeper may have written it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pvcd.domain.errors import InvalidValue
from pvcd.domain.health import Fault, NodeHealth
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredFault:
    """A fault with the version it was read at (the compare-and-set base of its next write)."""

    fault: Fault
    version: int


def read_faults(view: ClusterView) -> dict[str, StoredFault]:
    """Every valid fault in the cache, by id."""
    cache, paths = view.cache, view.paths
    found: dict[str, StoredFault] = {}
    for name in cache.children(paths.faults):
        entry = cache.entry(paths.fault(name))
        if entry is None:
            continue
        try:
            fault = Fault.from_doc(entry.doc)
        except InvalidValue as exc:
            log.debug("event=fault-invalid path=%s reason=%s", paths.fault(name), exc)
            continue
        if fault.id == name:
            found[name] = StoredFault(fault, entry.version)
    return found


def read_node_health(view: ClusterView, node: str) -> NodeHealth | None:
    """The node's latest round of checks; None when there is none, it does not validate, or the
    node is not running (its last round is stale then)."""
    if view.node_daemon_state(node) != "run":
        return None
    doc = view.cache.get(view.paths.node_health(node))
    if doc is None:
        return None
    try:
        return NodeHealth.from_doc(doc)
    except InvalidValue as exc:
        log.debug("event=node-health-invalid node=%s reason=%s", node, exc)
        return None
