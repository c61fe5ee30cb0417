"""The storage request executors re-validate every request they claim (docs/security.md,
"Daemons re-validate"): a request written straight into ZooKeeper, past the API, that the API
would refuse fails with the reason, and nothing reaches Ceph (`FakeCeph`) or the node's disks."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pvcd.config import CephDriverSection
from pvcd.controllers.storage.osds import NodeStorage
from pvcd.controllers.storage.requests import request_key
from pvcd.domain.records import StorageRequest, from_dict
from pvcd.domain.states import PRIMARY_TARGET
from tests.fakes.attacker import write_past_the_api
from tests.fakes.drivers import FakeCeph
from tests.fakes.state import ClusterState
from tests.fakes.storage import make_primary_storage


def forged(state: ClusterState, request_id: str, op: Any, args: Any,
           target: str = PRIMARY_TARGET) -> str:
    request = StorageRequest(id=request_id, op=op, args=args, target=target, created=time.time())
    write_past_the_api(state, state.paths.storage_request(request_id), request.to_doc())
    return request_key(request_id)


def outcome(state: ClusterState, request_id: str) -> StorageRequest:
    return from_dict(StorageRequest, state.doc(state.paths.storage_request(request_id)))


@pytest.mark.parametrize(("op", "args", "reason"), [
    ("pool-add", {"pool": "../../etc", "pgs": 8}, "pool name '../../etc' is invalid"),
    ("pool-add", {"pool": "p", "pgs": 8, "size": 100}, "takes no size"),
    ("pool-add", {"pool": "p"}, "needs pgs"),
    ("volume-add", {"pool": "p", "volume": "v", "size": "1G; rm -rf /"}, "not a number"),
    ("cluster-option", {"action": "set", "option": "pause --yes-i-really-mean-it"},
     "OSD flag"),
    ("volume-clone", {"pool": "p", "volume": "v", "new_volume": "../x"},
     "volume name '../x' is invalid"),
    ("volume-clone", {"pool": "p", "volume": "v", "new_volume": "c", "force": "yes"},
     "not true or false"),
    ("snapshot-rename", {"pool": "p", "volume": "v", "snapshot": "s", "new_name": "a@b"},
     "snapshot name 'a@b' is invalid"),
    ("snapshot-rollback", {"pool": "p", "volume": "v"}, "needs snapshot"),
    ("shell", {"command": "id"}, "unknown storage operation 'shell'"),
    ("pool-remove", ["p"], "must be a mapping"),
])
def test_a_forged_request_fails_with_the_reason_and_ceph_is_untouched(
        cluster_state: ClusterState, op: str, args: Any, reason: str) -> None:
    ceph = FakeCeph()
    ceph.pools["p"] = {}
    service = make_primary_storage(cluster_state, ceph)
    service.requests.reconcile(forged(cluster_state, "r1", op, args))
    result = outcome(cluster_state, "r1")
    assert (result.state, result.error) == ("failed", "InvalidValue")
    assert "refused by node node1" in result.message and reason in result.message
    assert ceph.pools == {"p": {}}


def test_a_document_that_is_no_request_is_left_alone(cluster_state: ClusterState) -> None:
    ceph = FakeCeph()
    service = make_primary_storage(cluster_state, ceph)
    write_past_the_api(cluster_state, cluster_state.paths.storage_request("junk"),
                       {"target": PRIMARY_TARGET, "state": "pending"})
    service.requests.reconcile(request_key("junk"))  # no exception, nothing done
    assert cluster_state.doc(cluster_state.paths.storage_request("junk"))["state"] == "pending"
    assert ceph.pools == {}


class RecordingOsds:
    """A node's OSD provisioner that records the devices it was asked to use."""

    def __init__(self) -> None:
        self.devices: list[str] = []

    def create(self, device: str, weight: float) -> int:
        self.devices.append(device)
        return 0

    def ensure(self, osd_id: int) -> bool:
        return False

    def stop(self, osd_id: int) -> None: ...

    def release(self, osd_id: int) -> None: ...


@pytest.mark.parametrize("args", [{"device": "/etc/passwd", "weight": 1.0},
                                  {"device": "/dev/../etc/shadow", "weight": 1.0},
                                  {"device": "/dev/sdb", "weight": "1e308"}])
def test_a_forged_osd_add_never_reaches_the_disks(cluster_state: ClusterState,
                                                  args: dict[str, Any]) -> None:
    osds = RecordingOsds()
    node = NodeStorage("node1", cluster_state.view, cluster_state.store,
                       FakeCeph(), osds, CephDriverSection(enabled=True))  # type: ignore[arg-type]
    node.requests.reconcile(forged(cluster_state, "r1", "osd-add", args, target="node1"))
    result = outcome(cluster_state, "r1")
    assert (result.state, result.error) == ("failed", "InvalidValue")
    assert osds.devices == []
