"""The cache holds one decoded copy of each document, compactly: no bytes and no tree of kazoo's
(its entries are the document, its version and two zxids), and documents of one shape share
their keys and short words — while every change is still seen, in order."""

from __future__ import annotations

from kazoo.client import KazooClient

from pvcd.state.cache import StateCache
from pvcd.state.codec import encode
from pvcd.state.schema import Paths, ensure_schema
from pvcd.state.store import Op, Store
from tests.e2e.labclient import wait_until


def test_one_decoded_copy_per_document_and_changes_still_arrive(
        zk: KazooClient, zk_root: str) -> None:
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    vms = [paths.vm(f"{i:08d}-0000-0000-0000-000000000000") for i in range(20)]
    for i, path in enumerate(vms):  # before the cache starts: its initial load
        zk.create(path, encode({"node": "node1", "state": "start", "xml": "<domain/>" * i}))
    cache = StateCache(zk, zk_root)
    cache.start()
    try:
        assert all(cache.get(path)["xml"] == "<domain/>" * i for i, path in enumerate(vms))
        assert cache.entry(vms[3]).version == 0
        assert not hasattr(cache, "_tree") and set(cache.entry(vms[3]).__slots__) == {
            "doc", "version", "mzxid", "czxid", "ephemeral_owner"}

        # changes from elsewhere (watch events) and from here (local applies) both arrive
        zk.set(vms[3], encode({"node": "node2", "state": "stop", "xml": "new"}))
        Store(zk, cache).commit([Op.set(vms[4], {"node": "node3", "state": "start"}, 0)])
        wait_until(lambda: cache.get(vms[3]) == {"node": "node2", "state": "stop",
                                                 "xml": "new"}, timeout=5)
        wait_until(lambda: cache.entry(vms[4]) is not None and
                   cache.entry(vms[4]).mzxid is not None and not cache._overlay, timeout=5)
        assert cache.get(vms[4]) == {"node": "node3", "state": "start"}
        assert cache.entry(vms[4]).version == 1
        zk.delete(vms[5])
        wait_until(lambda: not cache.exists(vms[5]), timeout=5)

        # documents of one shape share their keys and short words
        first, second = cache.get(vms[1]), cache.get(vms[2])
        key_first = next(key for key in first if key == "state")
        key_second = next(key for key in second if key == "state")
        assert key_first is key_second
        assert first["node"] is second["node"]
    finally:
        cache.close()
