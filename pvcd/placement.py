"""Choosing the node a VM runs on.

Only nodes whose daemon runs and whose domain state is `ready` are candidates. The selectors are
the manual's: `mem` (least memory allocated to VMs), `vcpus` (least vCPUs allocated), `load`
(least 1-minute load), `vms` (fewest VMs assigned). Allocation is counted from the VM specs in
the cache (what is *assigned*, including VMs not started yet), so a burst of defines spreads
out instead of piling onto the node whose keepalive has not been refreshed yet. Ties go to the
node name, so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable

from pvcd.domain.errors import InvalidValue
from pvcd.domain.states import SELECTORS
from pvcd.state.view import ClusterView

DEFAULT_SELECTOR = "mem"


def candidate_nodes(view: ClusterView, exclude: Iterable[str] = ()) -> list[str]:
    excluded = set(exclude)
    names = []
    for name in view.node_names():
        if name in excluded:
            continue
        status = view.cache.get(view.paths.node_status(name)) or {}
        if view.node_daemon_state(name, status) == "run" and \
                status.get("domain_state", "ready") == "ready":
            names.append(name)
    return names


def allocation(view: ClusterView) -> dict[str, dict[str, float]]:
    """Per node: memory and vCPUs allocated to, and number of, the VMs assigned to it."""
    result: dict[str, dict[str, float]] = {}
    for uuid in view.vm_uuids():
        doc = view.cache.get(view.paths.vm(uuid))
        if not isinstance(doc, dict):
            continue
        slot = result.setdefault(str(doc.get("node")), {"mem": 0, "vcpus": 0, "vms": 0})
        slot["vms"] += 1
        if doc.get("state") not in ("stop", "shutdown", "disable"):
            slot["mem"] += float(doc.get("memory", 0))
            slot["vcpus"] += float(doc.get("vcpu", 0))
    return result


def select_target_node(view: ClusterView, selector: str | None = None,
                       exclude: Iterable[str] = (), memory: int = 0) -> str:
    """The best candidate by `selector`; InvalidValue when there is none.

    With `memory` (MiB) given, nodes whose assigned VM memory plus `memory` would exceed their
    physical memory are left out (capacity for recovery and evacuation).
    """
    selector = selector or DEFAULT_SELECTOR
    if selector not in SELECTORS:
        raise InvalidValue(f"invalid selector '{selector}'; valid values are: "
                           f"{', '.join(SELECTORS)}")
    candidates = candidate_nodes(view, exclude)
    if not candidates:
        raise InvalidValue("no node is available: none is running and ready"
                           + (f" (excluding {', '.join(sorted(set(exclude)))})" if exclude
                              else ""))
    alloc = allocation(view)
    if memory:
        candidates = [n for n in candidates if _fits(view, alloc, n, memory)]
        if not candidates:
            raise InvalidValue(f"no node has {memory} MiB of memory free for this VM")

    def score(name: str) -> tuple[float, str]:
        if selector == "load":
            status = view.cache.get(view.paths.node_status(name)) or {}
            return float((status.get("stats") or {}).get("load", 0.0)), name
        return alloc.get(name, {}).get(str(selector), 0), name

    return min(candidates, key=score)


def choose_node(view: ClusterView, node: str | None, selector: str | None,
                exclude: Iterable[str] = ()) -> str:
    """The manual's rule: a valid `node` wins; an invalid one falls back to the selector."""
    if selector is not None and selector not in SELECTORS:
        raise InvalidValue(f"invalid selector '{selector}'; valid values are: "
                           f"{', '.join(SELECTORS)}")
    if node and node not in set(exclude) and node in candidate_nodes(view, exclude):
        return node
    return select_target_node(view, selector, exclude)


def _fits(view: ClusterView, alloc: dict[str, dict[str, float]], node: str, memory: int) -> bool:
    status = view.cache.get(view.paths.node_status(node)) or {}
    total = float((status.get("stats") or {}).get("memory_total", 0))
    return total <= 0 or alloc.get(node, {}).get("mem", 0) + memory <= total
