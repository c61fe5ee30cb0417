"""The storage controller on a real ZooKeeper and a real throwaway Ceph, without daemons.

Requests are written as the API writes them and reconciled by calling the executors directly;
every effect is checked with Ceph's own tools and in the mirror. The Ceph cluster is the session
cluster of `tests/integration/ceph/conftest.py` (its fixtures are imported here); each test works
in pools of its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

from pvcd.api.storage import new_request_id
from pvcd.api.waiting import wait_for_request
from pvcd.config import CephDriverSection
from pvcd.controllers.faults import FaultMonitor
from pvcd.controllers.storage.primary import PrimaryStorage
from pvcd.controllers.storage.requests import request_key
from pvcd.controllers.storage.sync import VOLUME_INFOS_PER_SYNC
from pvcd.domain.records import NodeSpec, StorageRequest
from pvcd.domain.states import PRIMARY_TARGET
from pvcd.drivers.ceph.driver import CephDriver
from pvcd.lab.ceph import ThrowawayCeph
from pvcd.state.cache import StateCache
from pvcd.state.health import read_faults
from pvcd.state.schema import Paths, ensure_schema
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from tests.integration.ceph.conftest import CephTools, ceph_lab, pool_name, tools

__all__ = ["ceph_lab", "pool_name", "tools"]  # fixtures shared with tests/integration/ceph

pytestmark = [pytest.mark.slow, pytest.mark.ceph]


@pytest.fixture
def primary(zk: KazooClient, zk_root: str, ceph_lab: ThrowawayCeph
            ) -> Iterator[PrimaryStorage]:
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, paths.root)
    cache.start()
    store = Store(zk, cache)
    ceph = CephDriver(ceph_lab.conf_path, ceph_lab.keyring_path, timeout=30)
    service = PrimaryStorage("node1", ClusterView(cache, paths), store, ceph,
                             CephDriverSection(enabled=True, request_timeout=5.0))
    service.start()
    yield service
    service.stop()
    cache.close()


def submit(primary: PrimaryStorage, op: str, **args: object) -> str:
    request = StorageRequest(id=new_request_id(time.time), op=op, args=dict(args),
                             target=PRIMARY_TARGET, created=time.time())
    primary.store.commit([Op.create(primary.view.paths.storage_request(request.id),
                                    request.to_doc())])
    return request.id


def run(primary: PrimaryStorage, op: str, **args: object) -> StorageRequest:
    request_id = submit(primary, op, **args)
    primary.requests.reconcile(request_key(request_id))
    doc = primary.view.cache.get(primary.view.paths.storage_request(request_id))
    return StorageRequest(**doc)


def test_requests_change_ceph_then_the_mirror(primary: PrimaryStorage, tools: CephTools,
                                             pool_name: str) -> None:
    paths, cache = primary.view.paths, primary.view.cache
    done = run(primary, "pool-add", pool=pool_name, pgs=8)
    assert done.state == "done" and done.executor and done.finished is not None
    assert pool_name in tools.pools() and cache.exists(paths.storage_pool(pool_name))
    assert run(primary, "volume-add", pool=pool_name, volume="v1", size=4 << 20).state == "done"
    assert tools.json("rbd", "info", "--pool", pool_name, "--image", "v1")["size"] == 4 << 20
    assert cache.get(paths.storage_volume(pool_name, "v1"))["stats"]["size"] == 4 << 20
    assert run(primary, "snapshot-add", pool=pool_name, volume="v1", snapshot="s").state == "done"
    renamed = run(primary, "volume-modify", pool=pool_name, volume="v1", name="v2",
                  size=8 << 20)
    assert renamed.state == "done", renamed.message
    assert tools.json("rbd", "ls", "--pool", pool_name) == ["v2"]
    assert not cache.exists(paths.storage_volume(pool_name, "v1"))
    assert cache.get(paths.storage_snapshot(pool_name, "v2", "s"))["volume"] == "v2"

    failed = run(primary, "volume-remove", pool=pool_name, volume="v2")  # has a snapshot
    assert failed.state == "failed" and failed.error in ("Conflict", "BackendError")
    assert cache.exists(paths.storage_volume(pool_name, "v2"))
    assert run(primary, "pool-remove", pool=pool_name).state == "done"
    assert pool_name not in tools.pools()
    assert not cache.exists(paths.storage_pool(pool_name))
    assert not cache.exists(paths.storage_pool_volumes(pool_name))
    assert not cache.exists(paths.storage_pool_snapshots(pool_name))


def test_sync_adopts_and_drops_what_changed_outside_pvcd(primary: PrimaryStorage,
                                                         tools: CephTools,
                                                         pool_name: str) -> None:
    paths, cache = primary.view.paths, primary.view.cache
    assert run(primary, "pool-add", pool=pool_name, pgs=8).state == "done"
    tools.run("rbd", "create", "--pool", pool_name, "--image", "outside", "--size", "1M")
    tools.run("rbd", "snap", "create", f"{pool_name}/outside@snap")
    primary.mirror_sync.run()  # a request finished moments ago: no adoption in this round (races)
    assert not cache.exists(paths.storage_volume(pool_name, "outside"))
    time.sleep(2.5)  # past the margin after the pool-add request
    primary.mirror_sync.run()
    assert cache.get(paths.storage_volume(pool_name, "outside"))["stats"]["size"] == 1 << 20
    assert cache.exists(paths.storage_snapshot(pool_name, "outside", "snap"))
    osds = cache.children(paths.storage_osds)
    assert sorted(int(o) for o in osds) == sorted(tools.lab.osd_ids)
    assert "ceph_data" in cache.get(paths.storage_status)

    tools.run("rbd", "snap", "purge", f"{pool_name}/outside")
    tools.run("rbd", "rm", f"{pool_name}/outside")
    primary.mirror_sync.run()
    assert not cache.exists(paths.storage_volume(pool_name, "outside"))
    assert not cache.exists(paths.storage_volume_snapshots(pool_name, "outside"))


def test_an_osd_adopted_before_its_node_registered_gets_its_node(primary: PrimaryStorage,
                                                                 tools: CephTools) -> None:
    """The first sync of a new primary can run before every node has registered: an OSD whose
    CRUSH host is not a node yet is adopted without a node, and gets it once the node exists."""
    paths, cache = primary.view.paths, primary.view.cache
    tree = tools.json("ceph", "osd", "tree")["nodes"]
    host, osd = next((n["name"], n["children"][0]) for n in tree
                     if n["type"] == "host" and n.get("children"))
    primary.mirror_sync.run()
    assert host not in primary.view.node_names()
    assert cache.get(paths.storage_osd(osd))["node"] is None
    primary.store.commit([Op.create(paths.node(host), NodeSpec(host).to_doc())])
    primary.mirror_sync.run()
    assert cache.get(paths.storage_osd(osd))["node"] == host


def test_sync_reads_new_and_resized_volumes_and_the_rest_in_turn(primary: PrimaryStorage,
                                                                 tools: CephTools,
                                                                 pool_name: str) -> None:
    """A sync runs `rbd info` only for volumes it must (not one process per volume each
    round): new ones, resized ones (the listing's size differs), and a few others in turn."""
    paths, cache = primary.view.paths, primary.view.cache
    assert run(primary, "pool-add", pool=pool_name, pgs=8).state == "done"
    count = VOLUME_INFOS_PER_SYNC * 2 + 1
    for index in range(count):
        tools.run("rbd", "create", "--pool", pool_name, "--image", f"v{index}", "--size", "1M")
    time.sleep(2.5)  # past the margin after the pool-add request: adoption happens
    primary.mirror_sync.run()
    for index in range(count):
        assert cache.get(paths.storage_volume(pool_name, f"v{index}"))["stats"]["size"] == 1 << 20
    first = dict(primary.mirror_sync.volume_read_at)

    tools.run("rbd", "resize", "--pool", pool_name, "--image", "v3", "--size", "3M")
    primary.mirror_sync.run()
    assert cache.get(paths.storage_volume(pool_name, "v3"))["stats"]["size"] == 3 << 20
    reread = {key for key, at in primary.mirror_sync.volume_read_at.items()
              if key[0] == pool_name and at != first.get(key)}
    assert (pool_name, "v3") in reread
    assert len(reread) <= VOLUME_INFOS_PER_SYNC + 1, reread  # not all of them
    for _ in range(3):  # the others follow, oldest first
        primary.mirror_sync.run()
    assert all(primary.mirror_sync.volume_read_at[(pool_name, f"v{index}")] != first[(pool_name,
               f"v{index}")] for index in range(count))


def test_a_request_left_running_by_a_gone_executor_is_failed(primary: PrimaryStorage) -> None:
    request = StorageRequest(id=new_request_id(time.time), op="pool-add",
                             args={"pool": "never", "pgs": 8}, target=PRIMARY_TARGET,
                             state="running", executor="node9/1", created=time.time())
    path = primary.view.paths.storage_request(request.id)
    primary.store.commit([Op.create(path, request.to_doc())])
    primary.requests.reconcile(request_key(request.id))
    doc = primary.view.cache.get(path)
    assert doc["state"] == "failed" and "interrupted" in doc["message"]


def test_concurrent_requests_each_get_their_own_result(primary: PrimaryStorage,
                                                      tools: CephTools,
                                                      pool_name: str) -> None:
    assert run(primary, "pool-add", pool=pool_name, pgs=8).state == "done"
    ids = [submit(primary, "volume-add", pool=pool_name, volume=f"c{i}", size=(i + 1) << 20)
           for i in range(6)]
    ids.append(submit(primary, "volume-add", pool="nosuchpool", volume="x", size=1 << 20))
    threads = [threading.Thread(target=primary.requests.reconcile, args=(request_key(i),))
               for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    docs = [primary.view.cache.get(primary.view.paths.storage_request(i)) for i in ids]
    for index, doc in enumerate(docs[:-1]):
        assert doc["state"] == "done" and doc["result"]["volume"] == f"c{index}"
        info = tools.json("rbd", "info", "--pool", pool_name, "--image", f"c{index}")
        assert info["size"] == (index + 1) << 20
    assert docs[-1]["state"] == "failed" and docs[-1]["error"] == "NotFound"


def test_waiter_wakes_on_the_result_and_reports_a_timeout(primary: PrimaryStorage) -> None:
    cache = primary.view.cache
    request_id = submit(primary, "cluster-option", action="set", option="noscrub")
    path = primary.view.paths.storage_request(request_id)

    async def scenario() -> tuple[object, object, float]:
        unfinished = await wait_for_request(cache, path, 0.2)  # nobody executes it yet
        loop = asyncio.get_running_loop()
        started = loop.time()
        loop.call_later(0.1, lambda: threading.Thread(
            target=primary.requests.reconcile, args=(request_key(request_id),)).start())
        finished = await wait_for_request(cache, path, 30)
        return unfinished, finished, loop.time() - started

    unfinished, finished, seconds = asyncio.run(scenario())
    assert isinstance(unfinished, dict) and unfinished["state"] == "pending"
    assert isinstance(finished, dict) and finished["state"] == "done"
    assert seconds < 10
    assert run(primary, "cluster-option", action="unset", option="noscrub").state == "done"


def test_cephs_health_checks_are_mirrored_and_become_faults(primary: PrimaryStorage,
                                                            tools: CephTools) -> None:
    """A real HEALTH_WARN (the noout flag: OSDMAP_FLAGS) through the sync into a fault
    (extensions.md §8.4), which clears with the flag."""
    monitor = FaultMonitor(primary.view, primary.store, 1.0)
    monitor.active = True
    tools.run("ceph", "osd", "set", "noout")
    try:
        primary.mirror_sync.run()
        checks = {c["name"]: c for c in
                  primary.view.cache.get(primary.view.paths.storage_status)["checks"]}
        assert checks["OSDMAP_FLAGS"]["severity"] == "HEALTH_WARN"
        monitor.run_round()
        fault = read_faults(primary.view)["CEPH_WARN_OSDMAP_FLAGS"].fault
        assert fault.active and fault.health_delta == 10 and "noout" in fault.message
    finally:
        tools.run("ceph", "osd", "unset", "noout")
    primary.mirror_sync.run()
    monitor.run_round()
    assert not read_faults(primary.view)["CEPH_WARN_OSDMAP_FLAGS"].fault.active
