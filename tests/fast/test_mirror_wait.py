"""A finished storage request's answer waits until this API's cache shows what its completion
wrote (`pvcd.api.waiting.wait_for_mirror`): the request's znode can reach the cache before a
znode created in the same transaction, and a client that adds a volume and then changes it must
find it. Against the real cache on a real ZooKeeper."""

from __future__ import annotations

import asyncio
import threading
import time

from pvcd.api.waiting import MIRROR_WAIT, wait_for_mirror
from pvcd.state.store import Op
from tests.fakes.state import ClusterState


def test_the_wait_ends_once_the_cache_shows_the_created_and_deleted_znodes(
        cluster_state: ClusterState) -> None:
    paths = cluster_state.paths
    created, deleted = paths.storage_pool("late"), paths.storage_pool("gone")
    cluster_state.store.commit([Op.create(deleted, {"name": "gone"})])
    while not cluster_state.cache.exists(deleted):
        time.sleep(0.01)

    def later() -> None:
        time.sleep(0.3)
        cluster_state.store.commit([Op.create(created, {"name": "late"}),
                                    Op.delete(deleted)])

    threading.Thread(target=later).start()
    started = time.monotonic()
    shown = asyncio.run(wait_for_mirror(cluster_state.cache,
                                        [["create", created], ["delete", deleted]]))
    assert shown and time.monotonic() - started >= 0.3
    assert cluster_state.cache.exists(created) and not cluster_state.cache.exists(deleted)


def test_a_znode_that_never_shows_ends_the_wait_at_its_bound(
        cluster_state: ClusterState) -> None:
    started = time.monotonic()
    shown = asyncio.run(wait_for_mirror(cluster_state.cache,
                                        [["create", cluster_state.paths.storage_pool("never")]]))
    assert not shown and MIRROR_WAIT <= time.monotonic() - started < MIRROR_WAIT + 1
    assert asyncio.run(wait_for_mirror(cluster_state.cache, []))
