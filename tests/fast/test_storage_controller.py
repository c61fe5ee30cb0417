"""The primary's storage requests in process, over `FakeCeph` and the real store: each request
changes Ceph first and then the mirror in ZooKeeper, or fails with nothing mirrored. (The same
requests against a real throwaway Ceph: tests/integration/test_storage_controller.py.)"""

from __future__ import annotations

from tests.fakes.drivers import FakeCeph
from tests.fakes.state import ClusterState
from tests.fakes.storage import make_primary_storage, run_request


def test_requests_change_ceph_then_the_mirror(cluster_state: ClusterState) -> None:
    ceph = FakeCeph()
    service = make_primary_storage(cluster_state, ceph)
    paths, cache = cluster_state.paths, cluster_state.cache
    assert run_request(cluster_state, service, "pool-add", pool="p", pgs=8).state == "done"
    assert "p" in ceph.pools and cache.exists(paths.storage_pool("p"))
    done = run_request(cluster_state, service, "volume-add", pool="p", volume="v1", size=4 << 20)
    assert done.state == "done" and done.executor and done.finished is not None
    assert ceph.pools["p"]["v1"]["size"] == 4 << 20
    assert cache.get(paths.storage_volume("p", "v1"))["stats"]["size"] == 4 << 20
    assert run_request(cluster_state, service, "snapshot-add", pool="p", volume="v1",
                       snapshot="s").state == "done"
    renamed = run_request(cluster_state, service, "volume-modify", pool="p", volume="v1",
                          name="v2", size=8 << 20)
    assert renamed.state == "done", renamed.message
    assert list(ceph.pools["p"]) == ["v2"] and ceph.pools["p"]["v2"]["size"] == 8 << 20
    assert not cache.exists(paths.storage_volume("p", "v1"))
    assert cache.get(paths.storage_snapshot("p", "v2", "s"))["volume"] == "v2"


def test_a_refused_request_fails_and_mirrors_nothing(cluster_state: ClusterState) -> None:
    ceph = FakeCeph()
    service = make_primary_storage(cluster_state, ceph)
    paths, cache = cluster_state.paths, cluster_state.cache
    run_request(cluster_state, service, "pool-add", pool="p", pgs=8)
    run_request(cluster_state, service, "volume-add", pool="p", volume="v", size=1 << 20)
    run_request(cluster_state, service, "snapshot-add", pool="p", volume="v", snapshot="s")
    failed = run_request(cluster_state, service, "volume-remove", pool="p", volume="v")
    assert (failed.state, failed.error) == ("failed", "Conflict")
    assert "has snapshots" in failed.message
    assert "v" in ceph.pools["p"] and cache.exists(paths.storage_volume("p", "v"))
    shrink = run_request(cluster_state, service, "volume-modify", pool="p", volume="v",
                         size=1024)
    assert (shrink.state, shrink.error) == ("failed", "InvalidValue")
    assert ceph.pools["p"]["v"]["size"] == 1 << 20
    gone = run_request(cluster_state, service, "volume-add", pool="nope", volume="v", size=1)
    assert (gone.state, gone.error) == ("failed", "NotFound")
    assert run_request(cluster_state, service, "pool-remove", pool="p").state == "done"
    assert ceph.pools == {} and not cache.exists(paths.storage_pool("p"))


def test_a_request_left_running_by_a_lost_executor_is_failed_not_repeated(
        cluster_state: ClusterState) -> None:
    from pvcd.controllers.storage.requests import request_key
    from pvcd.domain.records import StorageRequest
    from pvcd.domain.states import PRIMARY_TARGET
    from pvcd.state.store import Op

    ceph = FakeCeph()
    service = make_primary_storage(cluster_state, ceph)
    request = StorageRequest(id="r-old", op="pool-add", args={"pool": "p", "pgs": 8},
                             target=PRIMARY_TARGET, created=1.0, state="running",
                             executor="node2/4242")
    path = cluster_state.paths.storage_request(request.id)
    cluster_state.store.commit([Op.create(path, request.to_doc())])
    service.requests.reconcile(request_key(request.id))
    doc = cluster_state.doc(path)
    assert doc["state"] == "failed" and "interrupted" in doc["message"]
    assert ceph.pools == {}  # not carried out a second time behind the operator's back
