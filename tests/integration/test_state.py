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
