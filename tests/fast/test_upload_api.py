"""The upload endpoint's refusals that a Ceph lab cannot show (extensions.md §2.1), in process:
Ceph not configured on the primary, and a primary without an upload service. Each answers 510
before the body, and no task is created. (On real Ceph: tests/e2e/test_volume_upload.py.)"""

from __future__ import annotations

from pvcd.state.store import Op
from tests.fakes.api import running_api
from tests.fakes.state import ClusterState, FakeClock

UPLOAD = "/storage/ceph/volume/pool/disk/upload"


def test_without_ceph_an_upload_is_refused_and_creates_nothing(
        cluster_state: ClusterState) -> None:
    with running_api(cluster_state, FakeClock()) as api:
        answer = api.post(UPLOAD, params={"image_format": "raw"}, data=b"x" * 100)
        assert answer.status_code == 510
        assert "Ceph storage is not configured" in answer.json()["message"]
    assert cluster_state.cache.children(cluster_state.paths.tasks) == []


def test_a_primary_without_an_upload_service_refuses_uploads(
        cluster_state: ClusterState) -> None:
    paths = cluster_state.paths
    cluster_state.store.commit([
        Op.create(paths.storage_pool("pool"), {"name": "pool", "pgs": 8}),
        Op.create(f"{paths.storage_volumes}/pool", {}),
        Op.create(paths.storage_volume("pool", "disk"),
                  {"name": "disk", "pool": "pool", "stats": {"size": 1 << 20}})])
    with running_api(cluster_state, FakeClock(), storage_request_timeout=5.0) as api:
        answer = api.post(UPLOAD, params={"image_format": "raw"}, data=b"x" * 100)
        assert answer.status_code == 510
        assert "uploads are not available" in answer.json()["message"]
    assert cluster_state.cache.children(paths.tasks) == []
