"""The VMs-by-node index (`pvcd.state.vm_index`) agrees with a walk of every VM document,
whatever sequence of creates, moves, migrations, state changes and deletes it follows."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from pvcd.domain.states import STOPPED_VM_STATES, vm_state
from pvcd.state.schema import Paths
from pvcd.state.vm_index import VmIndex

PATHS = Paths("/pvc")
NODES = ["node1", "node2", "node3"]


class DictCache:
    """Documents by path, notifying its listeners after each change (as StateCache does)."""

    def __init__(self) -> None:
        self.docs: dict[str, Any] = {}
        self.listeners: list[Callable[[str], None]] = []

    def get(self, path: str) -> Any:
        return self.docs.get(path)

    def children(self, path: str) -> list[str]:
        prefix = path + "/"
        return sorted({p[len(prefix):].split("/")[0] for p in self.docs if p.startswith(prefix)})

    def subscribe(self, listener: Callable[[str], None]) -> None:
        self.listeners.append(listener)

    def put(self, path: str, doc: Any) -> None:
        self.docs[path] = doc
        for listener in self.listeners:
            listener(path)

    def delete(self, path: str) -> None:
        for gone in [p for p in self.docs if p == path or p.startswith(path + "/")]:
            del self.docs[gone]
        for listener in self.listeners:
            listener(path)


def walk(cache: DictCache, node: str) -> tuple[set[str], tuple[int, int, int]]:
    """What the index answers for `node`, by walking every document (the old way)."""
    on, memory, vcpus, count = set(), 0, 0, 0
    for uuid in cache.children(PATHS.vms):
        doc = cache.get(PATHS.vm(uuid))
        if not isinstance(doc, dict):
            continue
        source = (doc.get("migration") or {}).get("source")
        if node in (doc.get("node"), source):
            on.add(uuid)
        if doc.get("node") == node:
            count += 1
            if doc.get("state") not in STOPPED_VM_STATES:
                memory += doc["memory"]
                vcpus += doc["vcpu"]
    return on, (memory, vcpus, count)


def vm_doc(rng: random.Random) -> dict[str, Any]:
    migration = {"source": rng.choice(NODES), "request": 1} if rng.random() < 0.3 else None
    return {"uuid": "u", "name": "n", "xml": "<domain/>", "node": rng.choice(NODES),
            "memory": rng.choice([64, 512, 2048]), "vcpu": rng.choice([1, 2, 4]),
            "state": rng.choice(["start", "stop", "shutdown", "disable"]),
            "state_request": rng.randint(0, 2),
            "migration": migration}


def test_index_follows_every_change_like_a_full_walk() -> None:
    rng = random.Random(17)
    cache = DictCache()
    index = VmIndex(cache, PATHS)
    uuids = [f"{i:08d}-0000-0000-0000-000000000000" for i in range(40)]
    for _ in range(2000):
        uuid = rng.choice(uuids)
        roll = rng.random()
        if roll < 0.15:
            cache.delete(PATHS.vm(uuid))
        elif roll < 0.35 and cache.get(PATHS.vm(uuid)) is not None:
            cache.put(PATHS.vm_status(uuid), {"node": rng.choice(NODES),
                                              "state": rng.choice(["running", "failed"]),
                                              "state_request_done": rng.randint(0, 2)})
        elif roll < 0.4:
            cache.put(PATHS.vm_console(uuid), {"lines": []})  # nothing the index counts
        else:
            cache.put(PATHS.vm(uuid), vm_doc(rng))
        for node in NODES:
            on, totals = walk(cache, node)
            assert index.on_node(node) == on
            assert index.assigned(node) == totals
        assert index.failed() == {
            uuid for uuid in cache.children(PATHS.vms)
            if vm_state(cache.get(PATHS.vm(uuid)) or {},
                        cache.get(PATHS.vm_status(uuid)) or {}) == "failed"
            and cache.get(PATHS.vm(uuid)) is not None}


def test_an_index_made_after_the_cache_filled_catches_up_on_rebuild() -> None:
    rng = random.Random(3)
    cache = DictCache()
    for i in range(10):
        cache.put(PATHS.vm(f"{i:08d}-0000-0000-0000-000000000000"), vm_doc(rng))
    index = VmIndex(cache, PATHS)
    assert all(index.assigned(node) == (0, 0, 0) for node in NODES)
    index.rebuild()
    for node in NODES:
        on, totals = walk(cache, node)
        assert (index.on_node(node), index.assigned(node)) == (on, totals)


def test_a_document_that_is_not_a_vm_is_reported_unreadable_until_it_is_one() -> None:
    cache = DictCache()
    index = VmIndex(cache, PATHS)
    uuid = "00000000-0000-0000-0000-000000000001"
    cache.put(PATHS.vm(uuid), {"node": 7})
    assert index.unreadable() == {uuid}
    assert all(not index.on_node(node) for node in NODES)
    cache.put(PATHS.vm(uuid), vm_doc(random.Random(1)))
    assert index.unreadable() == set()
    cache.delete(PATHS.vm(uuid))
    assert index.unreadable() == set()
    assert all(index.assigned(node) == (0, 0, 0) for node in NODES)
