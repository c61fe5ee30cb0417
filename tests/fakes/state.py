"""The cluster state for in-process tests: the REAL Store and StateCache on a private root.

Why not an in-memory fake store: the compare-and-set semantics, the read-your-writes applies and
the ordering rules of `pvcd/state/{store,cache}.py` are exactly what the controllers depend on,
and a second implementation would be one more thing to keep identical. The session's ZooKeeper
(tests/conftest.py) answers in about a millisecond, and a root of its own per test isolates the
tests as well as a fresh store would.

All simulated nodes of one test share one `ClusterState` (one session, one cache): the store
applies every committed write to that cache at once, so a reconcile that runs right after a write
sees it, and a replay is deterministic. A node's liveness is its `alive` znode; a lost session is
simulated by deleting it (`drop_alive`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient

from pvcd.domain.records import VmSpec, VmStatus, from_dict
from pvcd.lab.guest import tiny_guest_xml
from pvcd.state.cache import StateCache
from pvcd.state.schema import Paths, ensure_schema
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.state.vm_index import VmIndex


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ClusterState:
    client: KazooClient
    paths: Paths
    cache: StateCache
    store: Store
    view: ClusterView

    @classmethod
    def open(cls, client: KazooClient, root: str) -> ClusterState:
        paths = Paths(root)
        ensure_schema(client, paths)
        cache = StateCache(client, paths.root)
        index = VmIndex(cache, paths)  # as the daemon: subscribed before the cache starts
        cache.start()
        store = Store(client, cache)
        return cls(client, paths, cache, store, ClusterView(cache, paths, index))

    def close(self) -> None:
        self.cache.close()

    # documents
    def doc(self, path: str) -> Any:
        return self.cache.get(path)

    def put(self, path: str, doc: Any) -> None:
        """Create or overwrite `path` (a test's own write, as the API would make it)."""
        entry = self.cache.entry(path)
        op = Op.create(path, doc) if entry is None else Op.set(path, doc, entry.version)
        self.store.commit([op])

    def change(self, path: str, **fields: Any) -> None:
        self.store.update(path, lambda doc: {**(doc or {}), **fields})

    def drop_alive(self, node: str) -> None:
        """The node's ZooKeeper session is gone (its ephemeral `alive` znode with it)."""
        if self.cache.exists(self.paths.node_alive(node)):
            self.store.commit([Op.delete(self.paths.node_alive(node))])

    # VMs, written as the API writes them
    def define_vm(self, name: str, node: str, memory: int = 64, state: str = "start",
                  **meta: Any) -> str:
        """`meta`: VmSpec's metadata fields (node_limit, node_selector, node_autostart, ...)."""
        import uuid as uuidlib

        uuid = str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"{self.paths.root}/{name}"))
        spec = VmSpec(uuid=uuid, name=name, xml=tiny_guest_xml(name, uuid, memory_mib=memory),
                      node=node, memory=memory, vcpu=1, state=state, **meta)
        self.store.commit([Op.create(self.paths.vm(uuid), spec.to_doc()),
                           Op.create(self.paths.vm_name(name), {"uuid": uuid})])
        return uuid

    def vm_uuid(self, name: str) -> str:
        uuid = self.view.vm_uuid_by_name(name)
        assert uuid is not None, f"no VM named {name}"
        return uuid

    def vm_spec(self, name: str) -> VmSpec:
        spec = self.view.vm_spec(self.vm_uuid(name))
        assert spec is not None
        return spec

    def vm_status(self, name: str) -> VmStatus:
        return from_dict(VmStatus, self.cache.get(self.paths.vm_status(self.vm_uuid(name))))
