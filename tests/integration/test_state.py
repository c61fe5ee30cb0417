"""The state layer against a real ZooKeeper: CAS writes, the watch-fed cache, the schema."""

from __future__ import annotations

import threading
import time

import pytest
from kazoo.client import KazooClient

from pvcd.domain.errors import Conflict
from pvcd.state.cache import StateCache
from pvcd.state.codec import decode, encode
from pvcd.state.schema import SCHEMA_VERSION, Paths, ensure_schema
from pvcd.state.store import Op, Store


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def state(zk: KazooClient, zk_root: str):  # type: ignore[no-untyped-def]
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, zk_root)
    cache.start()
    yield paths, cache, Store(zk, cache)
    cache.close()


def test_schema_is_created_versioned_and_idempotent(zk: KazooClient, zk_root: str) -> None:
    paths = Paths(zk_root)
    assert ensure_schema(zk, paths) == SCHEMA_VERSION
    assert ensure_schema(zk, paths) == SCHEMA_VERSION
    raw, _ = zk.get(paths.schema_version)
    assert decode(raw) == {"version": SCHEMA_VERSION}
    for path in paths.base_paths():
        assert zk.exists(path)


def test_schema_newer_than_code_is_refused(zk: KazooClient, zk_root: str) -> None:
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    zk.set(paths.schema_version, encode({"version": SCHEMA_VERSION + 1}))
    with pytest.raises(RuntimeError, match="newer than this pvcd"):
        ensure_schema(zk, paths)


def test_transaction_is_atomic(state, zk: KazooClient) -> None:  # type: ignore[no-untyped-def]
    paths, _, store = state
    store.commit([Op.create(paths.node("a"), {"n": 1})])
    with pytest.raises(Conflict, match="already exists"):
        store.commit([Op.create(paths.node("b"), {"n": 2}), Op.create(paths.node("a"), {})])
    assert zk.exists(paths.node("b")) is None  # the first op was rolled back too


def test_compare_and_set_rejects_a_stale_version(state, zk: KazooClient) -> None:  # type: ignore[no-untyped-def]
    paths, cache, store = state
    store.commit([Op.create(paths.node("a"), {"n": 1})])
    version = cache.entry(paths.node("a")).version
    store.commit([Op.set(paths.node("a"), {"n": 2}, version)])
    with pytest.raises(Conflict, match="version mismatch"):
        store.commit([Op.set(paths.node("a"), {"n": 3}, version)])
    assert decode(zk.get(paths.node("a"))[0]) == {"n": 2}


def test_cache_sees_writes_of_other_clients(state, zookeeper) -> None:  # type: ignore[no-untyped-def]
    paths, cache, _ = state
    other = KazooClient(zookeeper.connect_string)
    other.start()
    try:
        other.create(paths.node("x"), encode({"v": 1}))
        assert wait_for(lambda: cache.get(paths.node("x")) == {"v": 1})
        other.set(paths.node("x"), encode({"v": 2}))
        assert wait_for(lambda: cache.get(paths.node("x")) == {"v": 2})
        assert cache.children(paths.nodes) == ["x"]
        other.delete(paths.node("x"))
        assert wait_for(lambda: not cache.exists(paths.node("x")))
        assert cache.children(paths.nodes) == []
    finally:
        other.stop()
        other.close()


def test_read_your_writes_without_waiting(state) -> None:  # type: ignore[no-untyped-def]
    paths, cache, store = state
    for i in range(50):
        store.commit([Op.create(paths.node(f"n{i}"), {"i": i})])
        assert cache.get(paths.node(f"n{i}")) == {"i": i}
        store.commit([Op.set(paths.node(f"n{i}"), {"i": -i},
                             cache.entry(paths.node(f"n{i}")).version)])
        assert cache.get(paths.node(f"n{i}")) == {"i": -i}
        store.commit([Op.delete(paths.node(f"n{i}"))])
        assert not cache.exists(paths.node(f"n{i}"))
    # late watch events must not resurrect or roll back anything: a marker written behind the
    # cache's back arrives after every earlier event (one session's watches fire in order)
    store.client.create(paths.node("marker"), b"{}")
    assert wait_for(lambda: cache.exists(paths.node("marker")))
    assert cache.children(paths.nodes) == ["marker"]


def test_update_retries_lost_races(state) -> None:  # type: ignore[no-untyped-def]
    paths, _, store = state
    store.commit([Op.create(paths.node("counter"), {"n": 0})])

    def bump() -> None:
        for _ in range(20):
            store.update(paths.node("counter"), lambda d: {"n": d["n"] + 1})

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read(paths.node("counter"))[0] == {"n": 80}  # no lost update


def test_commit_async_resolves_and_maps_conflicts(state) -> None:  # type: ignore[no-untyped-def]
    paths, cache, store = state
    assert store.commit_async([Op.create(paths.node("a"), {"ok": True})]).result(5)
    assert cache.get(paths.node("a")) == {"ok": True}
    with pytest.raises(Conflict):
        store.commit_async([Op.create(paths.node("a"), {})]).result(5)


def test_cache_listener_gets_paths(state) -> None:  # type: ignore[no-untyped-def]
    paths, cache, store = state
    seen: list[str] = []
    cache.subscribe(seen.append)
    store.commit([Op.create(paths.node("l"), {})])
    assert wait_for(lambda: paths.node("l") in seen)


def _event(kind: str, path: str, zk: KazooClient | None = None) -> object:
    """A TreeCache event as kazoo delivers it; ADDED/UPDATED carry what `path` holds now."""
    from kazoo.recipe.cache import NodeData, TreeEvent

    if zk is None:
        return TreeEvent.make(getattr(TreeEvent, kind), NodeData.make(path, b"", None))
    raw, stat = zk.get(path)
    return TreeEvent.make(getattr(TreeEvent, kind), NodeData.make(path, raw, stat))


@pytest.mark.parametrize("order", [
    "create delete ADDED",  # the ghost VM of issue 12: the create's event after our delete
    "create delete REMOVED ADDED",
    "create ADDED delete UPDATED REMOVED",
    "create delete ADDED REMOVED ADDED",
])
def test_a_delete_is_final_whatever_order_the_events_arrive_in(
        zk: KazooClient, zk_root: str, order: str) -> None:
    """Replays watch events in the given order against a cache fed by nothing else (no
    TreeCache): `create`/`delete` are this process's own committed writes."""
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, zk_root)  # not started: the only events are the replayed ones
    store = Store(zk, cache)
    vm, marker = paths.vm("ghost"), paths.vm("marker")
    events = {}
    for step in order.split():
        if step == "create":
            store.commit([Op.create(vm, {"name": "ghost"})])
            events = {kind: _event(kind, vm, zk) for kind in ("NODE_ADDED", "NODE_UPDATED")}
        elif step == "delete":
            store.commit([Op.delete(vm)])
            assert not cache.exists(vm)
        else:
            cache._on_tree_event(events.get(f"NODE_{step}") or _event(f"NODE_{step}", vm))
    # checks against ZooKeeper are answered in order: once a later one is in, ours are too
    zk.create(marker, encode({}))
    getattr(cache, "_unverified", set()).add(marker)  # (checked too: queued behind ours)
    cache._on_tree_event(_event("NODE_ADDED", marker, zk))
    assert wait_for(lambda: cache.exists(marker))
    assert not cache.exists(vm), order
    assert cache.children(paths.vms) == ["marker"]
    # a real create of the same path, by anyone, later is seen
    zk.create(vm, encode({"name": "new"}))
    cache._on_tree_event(_event("NODE_ADDED", vm, zk))
    assert wait_for(lambda: cache.get(vm) == {"name": "new"})


def test_a_late_removal_of_an_older_incarnation_keeps_the_newer_one(
        zk: KazooClient, zk_root: str) -> None:
    """A path deleted and created again quickly: the old incarnation's NODE_REMOVED arriving
    after the new one is known (by its event, or by our own create) must not remove it."""
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, zk_root)  # not started: the only events are the replayed ones
    store = Store(zk, cache)
    name = paths.vm_name("db")
    store.commit([Op.create(name, {"uuid": "old"})])
    old_removed = _event("NODE_REMOVED", name, zk)  # carries the old incarnation's stat
    store.commit([Op.delete(name)])
    zk.create(name, encode({"uuid": "new"}))  # someone else creates it again
    cache._on_tree_event(_event("NODE_ADDED", name, zk))
    assert wait_for(lambda: cache.get(name) == {"uuid": "new"})  # (checked against ZooKeeper)
    cache._on_tree_event(old_removed)
    assert cache.get(name) == {"uuid": "new"}
    # the same when the new incarnation is our own create, whose stat we do not know yet
    other = paths.vm_name("web")
    store.commit([Op.create(other, {"uuid": "old"})])
    old_removed = _event("NODE_REMOVED", other, zk)
    store.commit([Op.delete(other)])
    store.commit([Op.create(other, {"uuid": "new"})])
    cache._on_tree_event(old_removed)
    marker = paths.vm("marker")  # checks against ZooKeeper are answered in order
    zk.create(marker, encode({}))
    getattr(cache, "_unverified", set()).add(marker)
    cache._on_tree_event(_event("NODE_ADDED", marker, zk))
    assert wait_for(lambda: cache.exists(marker))
    assert cache.get(other) == {"uuid": "new"}
    # and the removal of the incarnation we hold does remove it
    cache._on_tree_event(_event("NODE_REMOVED", name, zk))
    assert not cache.exists(name)


def test_a_local_write_the_watch_never_reports_is_checked_against_zookeeper(
        zk: KazooClient, zk_root: str) -> None:
    """The ghost VM of the chaos test: defined here and removed by its node before kazoo's
    TreeCache fetched it, so no event ever reports either. The local write is checked."""
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, zk_root)  # not started: no watch event at all
    store = Store(zk, cache)
    ghost, kept = paths.vm("ghost"), paths.vm("kept")
    store.commit([Op.create(ghost, {"name": "ghost"}), Op.create(kept, {"name": "kept"})])
    store.commit([Op.set(ghost, {"name": "ghost", "remove": {}}, 0)])
    zk.delete(ghost)  # by another node; the watch stays silent
    cache.confirm_local_writes(older_than=0)
    assert wait_for(lambda: not cache.exists(ghost))
    assert cache.get(kept) == {"name": "kept"}
    assert wait_for(lambda: cache.entry(kept).czxid is not None)  # now with its real stat
    assert cache.children(paths.vms) == ["kept"]


@pytest.mark.parametrize("first", ["added", "updated", "added-here"])
def test_a_znode_kazoo_reports_after_its_deletion_leaves_no_ghost(
        state, zookeeper, monkeypatch: pytest.MonkeyPatch, first: str) -> None:  # type: ignore[no-untyped-def]
    """The ghost VMs of issue 12, replayed in kazoo's TreeCache itself: a tree node's `get`
    answer waits in the cache's background queue while the znode's DELETED watch runs on
    kazoo's event thread (for a node not live yet it publishes nothing, for a live one
    NODE_REMOVED); the late answer then publishes NODE_ADDED of a znode that is gone, and no
    removal ever follows. `added-here`: created by this process (as the API defines a VM),
    deleted by another (its node forgets it)."""
    from kazoo.recipe import cache as kazoo_cache

    paths, cache, store = state
    target = paths.vm("ghost")
    gate, held = threading.Event(), threading.Event()
    original = kazoo_cache.TreeNode._process_result

    def late(self, method_name, path, result):  # type: ignore[no-untyped-def]
        if method_name == "get" and path == target and not gate.is_set() and \
                (first != "updated" or held.is_set() or getattr(self, "_state", 0) == 1):
            held.set()
            gate.wait(10)
        return original(self, method_name, path, result)

    other = KazooClient(zookeeper.connect_string)
    other.start()
    try:
        if first == "updated":  # live first, then changed: the refresh's answer comes late
            other.create(target, encode({"v": 1}))
            assert wait_for(lambda: cache.get(target) == {"v": 1})
        monkeypatch.setattr(kazoo_cache.TreeNode, "_process_result", late)
        if first == "added":
            other.create(target, encode({"v": 1}))
        elif first == "added-here":
            store.commit([Op.create(target, {"v": 1})])
        else:
            other.set(target, encode({"v": 2}))
        assert held.wait(5)
        other.delete(target)
        tree = cache._tree
        assert wait_for(lambda: tree._find_node(target) is None)  # kazoo saw the deletion
        gate.set()
        marker = paths.vm("marker")  # events are handled in order: after the marker's, ours
        other.create(marker, encode({}))
        assert wait_for(lambda: cache.exists(marker))
        assert wait_for(lambda: not cache.exists(target), timeout=2)
        assert cache.children(paths.vms) == ["marker"]
    finally:
        gate.set()
        other.stop()
        other.close()


def test_a_tree_made_without_credentials_is_secured_by_the_first_daemon_with_them(
        zookeeper, zk_root: str) -> None:  # type: ignore[no-untyped-def]
    from kazoo.exceptions import NoAuthError

    from pvcd.state.client import ZkCredentials, secure_tree, zookeeper_client

    paths = Paths(zk_root)
    open_client = zookeeper_client([zookeeper.connect_string], 5, retry_forever=False)
    secured = zookeeper_client([zookeeper.connect_string], 5,
                               ZkCredentials("pvcd", "a-long-secret"), retry_forever=False)
    for client in (open_client, secured):
        client.start(timeout=10)
    try:
        ensure_schema(open_client, paths)  # an older cluster: world:anyone everywhere
        open_client.create(paths.vm("web"), encode({"name": "web"}))
        assert ensure_schema(secured, paths) == SCHEMA_VERSION  # secures it on the way
        with pytest.raises(NoAuthError):
            open_client.get(paths.vm("web"))
        with pytest.raises(NoAuthError):
            open_client.get_children(paths.root)
        assert decode(secured.get(paths.vm("web"))[0]) == {"name": "web"}
        assert secure_tree(secured, paths.root) == 0  # done once: the root says so
        secured.create(paths.vm("db"), encode({}))  # and what it creates is secured too
        with pytest.raises(NoAuthError):
            open_client.get(paths.vm("db"))
    finally:
        secured.delete(paths.root, recursive=True)
        for client in (open_client, secured):
            client.stop()
            client.close()
