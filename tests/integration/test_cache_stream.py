"""The cache's ordered stream against a real ZooKeeper (pvcd/state/cache.py, tree_watch.py):
whatever order this process's writes and other clients' writes interleave in, the cache ends
exactly as ZooKeeper is — no ghost of a deleted znode, no lost one — and shows this process's
own writes at once; after a lost connection it reads again what it missed."""

from __future__ import annotations

import random
import socket

import pytest
from kazoo.client import KazooClient

from pvcd.domain.errors import Conflict
from pvcd.state.cache import StateCache
from pvcd.state.codec import decode, encode
from pvcd.state.schema import Paths, ensure_schema
from pvcd.state.store import Op, Store
from pvcd.state.tree_watch import tap
from tests.integration.test_state import wait_for


def zk_tree(client: KazooClient, root: str) -> dict[str, object]:
    """Every znode below `root` (and itself) with its document, read from ZooKeeper."""
    found: dict[str, object] = {}
    pending = [root]
    while pending:
        path = pending.pop()
        raw, _ = client.get(path)
        found[path] = decode(raw)
        pending.extend(f"{path}/{name}" for name in client.get_children(path))
    return found


def cache_tree(cache: StateCache, root: str) -> dict[str, object]:
    found: dict[str, object] = {root: cache.get(root)}
    found.update({path: entry.doc for path, entry in cache.subtrees([root]).items()})
    return found


def settled(cache: StateCache) -> bool:
    return not cache._overlay and cache._stream.empty()


@pytest.fixture
def other(zookeeper) -> KazooClient:  # type: ignore[no-untyped-def]
    client = KazooClient(zookeeper.connect_string, timeout=5)
    client.start()
    yield client
    client.stop()
    client.close()


@pytest.mark.parametrize("seed", range(4))
def test_interleaved_writes_of_two_clients_end_exactly_as_zookeeper(
        zk: KazooClient, zk_root: str, other: KazooClient, seed: int) -> None:
    """Creates, sets and deletes of a few paths, by this process (shown at once) and by
    another client (seen through the watch), as fast as they go: every read of this
    process's own write sees it, and the cache ends equal to ZooKeeper."""
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, zk_root)
    cache.start()
    store = Store(zk, cache)
    names = [paths.vm(f"v{i}") for i in range(4)]
    chance = random.Random(seed)
    try:
        for step in range(300):
            path = chance.choice(names)
            doc = {"step": step}
            mine = chance.random() < 0.5
            try:
                if mine:
                    entry = cache.entry(path)
                    if entry is None:
                        store.commit([Op.create(path, doc)])
                    elif chance.random() < 0.5:
                        store.commit([Op.delete(path, entry.version)])
                        doc = None
                    else:
                        store.commit([Op.set(path, doc, entry.version)])
                    assert cache.get(path) == doc, (step, path)  # read-your-writes
                elif other.exists(path) is None:
                    other.create(path, encode(doc))
                elif chance.random() < 0.5:
                    other.delete(path)
                else:
                    other.set(path, encode(doc))
            except Conflict:
                pass  # our cached version was stale: the other client was faster
            except Exception as exc:  # kazoo's NoNode/NodeExists: the same race, other side
                assert type(exc).__name__ in ("NoNodeError", "NodeExistsError"), exc
        assert wait_for(lambda: settled(cache) and
                        cache_tree(cache, zk_root) == zk_tree(zk, zk_root), timeout=10)
        assert all(cache.entry(p).mzxid is not None for p in names if cache.exists(p))
    finally:
        cache.close()


def test_own_create_deleted_elsewhere_at_once_leaves_no_ghost(
        zk: KazooClient, zk_root: str, other: KazooClient) -> None:
    """The ghost VM of issue 12: defined here, removed by its node before the watch's read of
    it could answer. The overlay goes once the stream has passed the write."""
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, zk_root)
    cache.start()
    store = Store(zk, cache)
    try:
        for i in range(50):
            ghost = paths.vm(f"ghost{i}")
            store.commit([Op.create(ghost, {"name": "ghost"})])
            assert cache.exists(ghost)
            other.delete(ghost)
        assert wait_for(lambda: settled(cache) and cache.children(paths.vms) == [])
    finally:
        cache.close()


def test_own_echo_is_announced_once(zk: KazooClient, zk_root: str) -> None:
    """A write of this process is announced when shown; the stream's copy of the same write
    replaces it silently (a list's ETag must not change twice for one write)."""
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, zk_root)
    cache.start()
    store = Store(zk, cache)
    seen: list[str] = []
    cache.subscribe(seen.append)
    try:
        vm = paths.vm("echo")
        store.commit([Op.create(vm, {"v": 1})])
        store.commit([Op.set(vm, {"v": 2}, 0)])
        assert wait_for(lambda: settled(cache) and cache.entry(vm).mzxid is not None)
        assert seen.count(vm) == 2
        assert cache.entry(vm).version == 1
    finally:
        cache.close()


def test_what_changed_while_the_watch_was_away_is_read_again_on_reconnect(
        zookeeper, zk_root: str, other: KazooClient) -> None:  # type: ignore[no-untyped-def]
    """Events lost (the tap unplugged, as a dropped connection loses them), then the
    connection drops for real: the new connection's resync adds what was created, changes
    what was set, and removes what was deleted meanwhile."""
    client = KazooClient(zookeeper.connect_string, timeout=5)
    client.start()
    paths = Paths(zk_root)
    ensure_schema(client, paths)
    kept, changed, gone = paths.vm("kept"), paths.vm("changed"), paths.vm("gone")
    for path in (kept, changed, gone):
        other.create(path, encode({"v": 1}))
    cache = StateCache(client, zk_root)
    cache.start()
    try:
        assert cache.get(gone) == {"v": 1}
        tap(client).remove(cache._on_event)  # deaf from here on
        other.set(changed, encode({"v": 2}))
        other.delete(gone)
        other.create(paths.vm("new"), encode({"v": 1}))
        other.create(f"{paths.vm('new')}/status", encode({"s": "up"}))
        assert cache.get(gone) == {"v": 1}  # (the cache did not hear of it)
        tap(client).add(zk_root, cache._on_event)
        client._connection._socket.shutdown(socket.SHUT_RDWR)  # kazoo reconnects, same session
        assert wait_for(lambda: cache_tree(cache, zk_root) == zk_tree(other, zk_root),
                        timeout=15)
        assert not cache.exists(gone) and cache.get(changed) == {"v": 2}
        assert cache.get(f"{paths.vm('new')}/status") == {"s": "up"}
        other.set(kept, encode({"v": 3}))  # and the watch works again
        assert wait_for(lambda: cache.get(kept) == {"v": 3})
    finally:
        cache.close()
        client.stop()
        client.close()
