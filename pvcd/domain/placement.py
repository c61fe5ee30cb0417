"""Choosing the node a VM runs on: one rule for define, migrate, flush and recovery.

Only nodes whose daemon runs and whose domain state is `ready` are candidates, and only those
within the VM's `node_limit` when it has one (a named node outside the limit counts as not valid,
so selection within the limit takes over, as for any invalid node). The selectors are
the manual's: `mem` (least memory allocated to VMs), `vcpus` (least vCPUs allocated), `load`
(least 1-minute load), `vms` (fewest VMs assigned). Allocation counts what is *assigned* (VMs
not started yet included), so a burst of defines spreads out instead of piling onto the node
whose keepalive has not been refreshed yet. A VM's `node_selector` may also say `none` (the
default, `mem`) or `memprov` (`mem`, which counts provisioned memory already). Ties go to the
node name: the choice is deterministic.

Capacity: a node whose assigned VM memory plus the VM's would exceed its physical memory is
never chosen by a selector, and a node named explicitly that lacks the memory is refused with
the numbers. A node that has not reported its memory yet (0) is not judged.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from pvcd.domain.errors import InvalidValue
from pvcd.domain.states import NODE_SELECTORS, SELECTORS

DEFAULT_SELECTOR = "mem"


@dataclass(frozen=True)
class NodeLoad:
    """What placement knows of one node: its states, size and what is assigned to it."""

    name: str
    daemon_state: str  # as operators see it (a node without a session is `dead`)
    domain_state: str
    memory_total: int = 0  # MiB, 0 = not reported yet
    load: float = 0.0
    memory_allocated: int = 0  # MiB of the VMs assigned to it that should run
    vcpus_allocated: int = 0
    vms: int = 0  # VMs assigned to it, whatever their state

    @property
    def available(self) -> bool:
        return self.daemon_state == "run" and self.domain_state == "ready"

    def fits(self, memory: int) -> bool:
        return self.memory_total <= 0 or self.memory_allocated + memory <= self.memory_total

    def score(self, selector: str) -> float:
        return {"mem": float(self.memory_allocated), "vcpus": float(self.vcpus_allocated),
                "load": self.load, "vms": float(self.vms)}[selector]


def check_selector(selector: str | None) -> str:
    """The selector placement ranks by: `none` (or none given) is the default, `memprov` is
    `mem`; InvalidValue for any other word that is not a selector."""
    if selector in (None, "", "none", "memprov"):
        return DEFAULT_SELECTOR
    if selector not in SELECTORS:
        raise InvalidValue(f"invalid selector '{selector}'; valid values are: "
                           f"{', '.join(NODE_SELECTORS)}")
    return selector


def candidates(nodes: Iterable[NodeLoad], exclude: Iterable[str] = (),
               limit: Collection[str] = ()) -> list[NodeLoad]:
    """The ready nodes not excluded, within `limit` (empty: no limit)."""
    excluded = set(exclude)
    return [n for n in nodes if n.available and n.name not in excluded
            and (not limit or n.name in limit)]


def select_target_node(nodes: Sequence[NodeLoad], selector: str | None = None,
                       exclude: Iterable[str] = (), memory: int = 0,
                       limit: Collection[str] = ()) -> str:
    """The best candidate by `selector` within `limit` (a VM's `node_limit`; empty: any node)
    that has `memory` MiB free; InvalidValue (with the reason) when there is none."""
    selector = check_selector(selector)
    excluded = sorted(set(exclude))
    available = candidates(nodes, excluded, limit)
    if not available:
        raise InvalidValue("no node is available: none is running and ready"
                           + (f" within the node limit {', '.join(limit)}" if limit else "")
                           + (f" (excluding {', '.join(excluded)})" if excluded else ""))
    fitting = [n for n in available if n.fits(memory)]
    if not fitting:
        free = ", ".join(f"{n.name} {max(0, n.memory_total - n.memory_allocated)}"
                         for n in available)
        raise InvalidValue(f"no node has {memory} MiB of memory free for this VM "
                           f"(MiB free: {free})")
    return min(fitting, key=lambda n: (n.score(selector), n.name)).name


def require_node(nodes: Sequence[NodeLoad], name: str, memory: int = 0) -> str:
    """`name` itself, if it can take a VM of `memory` MiB now; else InvalidValue saying why."""
    found = next((n for n in nodes if n.name == name), None)
    if found is None:
        raise InvalidValue(f"node {name} does not exist")
    if not found.available:
        raise InvalidValue(f"node {name} is not running and ready (daemon "
                           f"{found.daemon_state}, domain state {found.domain_state})")
    if not found.fits(memory):
        raise InvalidValue(
            f"node {name} lacks memory for this VM: it needs {memory} MiB, "
            f"{max(0, found.memory_total - found.memory_allocated)} MiB of "
            f"{found.memory_total} are free")
    return name


def choose_node(nodes: Sequence[NodeLoad], node: str | None, selector: str | None,
                exclude: Iterable[str] = (), memory: int = 0,
                limit: Collection[str] = ()) -> str:
    """The manual's rule: a named node that is available (and within `limit`) wins, an
    unavailable one (or one outside the limit) falls back to the selector within the limit; a
    named node that lacks the memory is refused (the operator asked for it)."""
    check_selector(selector)
    excluded = set(exclude)
    if node and any(n.name == node for n in candidates(nodes, excluded, limit)):
        return require_node(nodes, node, memory)
    return select_target_node(nodes, selector, excluded, memory, limit)
