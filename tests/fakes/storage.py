"""The primary's storage service over `FakeCeph`: the ONE place that knows its constructor."""

from __future__ import annotations

import time

from pvcd.config import CephDriverSection
from pvcd.controllers.storage.primary import PrimaryStorage
from pvcd.controllers.storage.requests import request_key
from pvcd.domain.records import StorageRequest, from_dict
from pvcd.domain.states import PRIMARY_TARGET
from pvcd.state.store import Op
from tests.fakes.drivers import FakeCeph
from tests.fakes.state import ClusterState


def make_primary_storage(state: ClusterState, ceph: FakeCeph) -> PrimaryStorage:
    service = PrimaryStorage("node1", state.view, state.store, ceph,  # type: ignore[arg-type]
                             CephDriverSection(enabled=True, request_timeout=5.0))
    service.start()
    return service


def run_request(state: ClusterState, service: PrimaryStorage, op: str,
                **args: object) -> StorageRequest:
    """Write a request as the API does, reconcile it, return it as it ended."""
    count = len(state.cache.children(state.paths.storage_requests))
    request = StorageRequest(id=f"r{count:04d}", op=op, args=dict(args), target=PRIMARY_TARGET,
                             created=time.time())
    state.store.commit([Op.create(state.paths.storage_request(request.id), request.to_doc())])
    service.requests.reconcile(request_key(request.id))
    return from_dict(StorageRequest, state.doc(state.paths.storage_request(request.id)))
