"""Which VMs each node has, kept in step with the cache: the index that keeps a node's work
proportional to its own VMs, not to the cluster's.

Without it every question "what is assigned to node X" walked every VM document (10,000 at
scale): the keepalive's allocation each second, the node record's domain counts on every VM
change, the VM controller's resync, placement's node loads. Here each change of a VM's spec
document (`vms/<uuid>`, from a watch event or a local write) updates one small record — the
node it names, the source of a migration in flight, the memory and vCPUs it counts for — and
the per-node sets and totals derived from them.

Consistency: the index listens to the cache and, for each change, re-reads the cache's current
document of that VM under its own lock. The cache stores a change before it notifies, so the
last read of a path is at least as new as any earlier one: whatever order the notifications of
two threads (the watch, a local write) arrive in, the index ends where the cache is. It must
be subscribed before the cache starts (it then sees the initial load) or `rebuild()` after.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

from pvcd.domain.states import STOPPED_VM_STATES, vm_state
from pvcd.state.schema import Paths


class IndexedCache(Protocol):
    """What the index needs of `pvcd.state.cache.StateCache`."""

    def get(self, path: str) -> Any: ...
    def children(self, path: str) -> list[str]: ...
    def subscribe(self, listener: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Placed:
    """One VM as the index counts it."""

    node: str
    source: str | None  # the source of a migration recorded in the spec, if any
    memory: int  # MiB counted on `node` (0 for a VM that should not run)
    vcpus: int


class VmIndex:
    """The VMs by node: assigned there, or migrating away from there."""

    def __init__(self, cache: IndexedCache, paths: Paths) -> None:
        self._cache = cache
        self._vms = paths.vms + "/"
        self._paths = paths
        self._lock = threading.Lock()
        self._placed: dict[str, Placed] = {}
        self._by_node: dict[str, set[str]] = {}  # node -> VMs assigned there or leaving it
        # node -> [memory, vcpus, VMs] of the VMs assigned there
        self._totals: dict[str, list[int]] = {}
        self._unreadable: set[str] = set()  # documents without a VM's fields
        self._failed: set[str] = set()  # VMs whose state (objects.md) is `failed`
        cache.subscribe(self._on_change)

    # reads
    def on_node(self, node: str) -> set[str]:
        """UUIDs of the VMs assigned to `node` or migrating away from it (a copy)."""
        with self._lock:
            return set(self._by_node.get(node, ()))

    def unreadable(self) -> set[str]:
        """UUIDs whose documents are not VM documents (each node's VM controller reports
        them; a copy)."""
        with self._lock:
            return set(self._unreadable)

    def failed(self) -> set[str]:
        """UUIDs of the VMs in state `failed` (the fault checks; a copy)."""
        with self._lock:
            return set(self._failed)

    def assigned(self, node: str) -> tuple[int, int, int]:
        """(memory MiB, vCPUs, VMs) assigned to `node`; memory and vCPUs of the VMs that
        should run only."""
        with self._lock:
            memory, vcpus, count = self._totals.get(node, (0, 0, 0))
            return memory, vcpus, count

    # upkeep
    def rebuild(self) -> None:
        """Index every VM the cache holds now (for an index made after the cache started)."""
        for uuid in list(self._cache.children(self._paths.vms)):
            self._update(uuid)

    def _on_change(self, path: str) -> None:
        if not path.startswith(self._vms):
            return
        uuid, _, child = path[len(self._vms):].partition("/")
        if child in ("", "status"):
            self._update(uuid)

    def _update(self, uuid: str) -> None:
        with self._lock:
            doc = self._cache.get(self._vms + uuid)
            if _failed(doc, self._cache.get(f"{self._vms}{uuid}/status")):
                self._failed.add(uuid)
            else:
                self._failed.discard(uuid)
            new = _placed(doc)
            old = self._placed.pop(uuid, None)
            if old is not None:
                self._forget(uuid, old)
            self._unreadable.discard(uuid)
            if new is None:
                if doc is not None:
                    self._unreadable.add(uuid)
                return
            self._placed[uuid] = new
            for node in {new.node, new.source} - {None}:
                self._by_node.setdefault(str(node), set()).add(uuid)
            totals = self._totals.setdefault(new.node, [0, 0, 0])
            totals[0] += new.memory
            totals[1] += new.vcpus
            totals[2] += 1

    def _forget(self, uuid: str, old: Placed) -> None:
        for node in {old.node, old.source} - {None}:
            members = self._by_node.get(str(node))
            if members is not None:
                members.discard(uuid)
                if not members:
                    del self._by_node[str(node)]
        totals = self._totals[old.node]
        totals[0] -= old.memory
        totals[1] -= old.vcpus
        totals[2] -= 1
        if totals[2] == 0:
            del self._totals[old.node]


def _placed(doc: Any) -> Placed | None:
    """The index's record of a VM document; None when it is not one (or absent)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("node"), str):
        return None
    migration = doc.get("migration")
    source = migration.get("source") if isinstance(migration, dict) else None
    runs = doc.get("state") not in STOPPED_VM_STATES
    try:
        memory = int(doc.get("memory", 0)) if runs else 0
        vcpus = int(doc.get("vcpu", 0)) if runs else 0
    except (TypeError, ValueError):
        return None
    return Placed(doc["node"], source if isinstance(source, str) else None, memory, vcpus)


def _failed(spec: Any, status: Any) -> bool:
    if not isinstance(spec, dict):
        return False
    try:
        return vm_state(spec, status if isinstance(status, dict) else {}) == "failed"
    except (TypeError, ValueError):
        return False
