"""The API's `wait` against a real ZooKeeper, in one process: the real API server and cache; the
test plays the nodes by writing their observed-state documents, so each case controls exactly
what the waiting request sees, and when."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from kazoo.client import KazooClient

from pvcd.api.app import make_context
from pvcd.api.auth import Tokens
from pvcd.api.server import ApiServer
from pvcd.domain.records import NodeSpec, NodeStatus, VmSpec, VmStatus
from pvcd.state.cache import StateCache
from pvcd.state.schema import Paths, ensure_schema
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

UUID = "0b6f3d5e-1c1a-4d0e-9d59-6f1c2a3b4c5d"


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


class Cluster:
    """The API of node1 and the documents the nodes would write."""

    def __init__(self, view: ClusterView, store: Store, url: str) -> None:
        self.view, self.store, self.url = view, store, url
        self.pool = concurrent.futures.ThreadPoolExecutor(2)

    def put(self, path: str, doc: dict[str, Any]) -> None:
        entry = self.view.cache.entry(path)
        self.store.commit([Op.create(path, doc) if entry is None else
                           Op.set(path, doc, entry.version)])

    def vm_status(self, **fields: Any) -> None:
        self.put(self.view.paths.vm_status(UUID), VmStatus(**fields).to_doc())

    def node_status(self, name: str, **fields: Any) -> None:
        self.put(self.view.paths.node_status(name), NodeStatus(**fields).to_doc())

    def call(self, method: str, path: str, **values: Any) -> requests.Response:
        return requests.request(method, self.url + path, data=values, timeout=30)

    def open(self, method: str, path: str, **values: Any
             ) -> concurrent.futures.Future[requests.Response]:
        return self.pool.submit(self.call, method, path, **values)


@pytest.fixture
def cluster(zk: KazooClient, zk_root: str) -> Iterator[Cluster]:
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, zk_root)
    cache.start()
    store = Store(zk, cache)
    view = ClusterView(cache, paths)
    ctx = make_context(view, store, "node1", False, Tokens.from_config([]))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ApiServer(ctx, "127.0.0.1", port, "cookie")
    server.start()
    the_cluster = Cluster(view, store, f"http://127.0.0.1:{port}/api/v1")
    for name in ("node1", "node2"):
        the_cluster.put(paths.node(name), NodeSpec(name=name, coordinator=True).to_doc())
        the_cluster.node_status(name, daemon_state="run", coordinator_state="secondary")
    spec = VmSpec(uuid=UUID, name="web1", xml="<domain/>", node="node2", state="stop")
    store.commit([Op.create(paths.vm(UUID), spec.to_doc()),
                  Op.create(paths.vm_name("web1"), {"uuid": UUID})])
    the_cluster.vm_status(node="node2", state="stopped")
    try:
        yield the_cluster
    finally:
        the_cluster.pool.shutdown(wait=True)
        server.stop()
        cache.close()


def spec_of(cluster: Cluster) -> VmSpec:
    spec = cluster.view.vm_spec(UUID)
    assert spec is not None
    return spec


def test_a_start_with_wait_answers_once_the_node_reports_it_running(cluster: Cluster) -> None:
    answer = cluster.open("POST", "/vm/web1/state", state="start", wait="true")
    wait_for(lambda: spec_of(cluster).state_request == 1)  # accepted; the "node" acts now
    cluster.vm_status(node="node2", state="running", state_request_done=0)  # stale: not yet
    cluster.vm_status(node="node2", state="running", state_request_done=1)
    response = answer.result(10)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["message"] == "Setting VM 'web1' to state start"
    assert doc["wait"]["outcome"] == "settled" and doc["wait"]["seen"] == "running on node2"
    assert doc["wait"]["what"] == "VM 'web1' to run on node2"


def test_the_timeout_is_510_with_what_was_awaited_and_last_seen(cluster: Cluster) -> None:
    started = time.monotonic()
    response = cluster.call("POST", "/vm/web1/state", state="start", wait="1",
                            wait_timeout="0.3")
    assert 0.3 <= time.monotonic() - started < 5
    assert response.status_code == 510
    assert response.json()["message"] == (
        "Timed out after 0.3 s waiting for VM 'web1' to run on node2; last seen: stopped on "
        "node2, node2 has not handled the request yet. The request was accepted: Setting VM "
        "'web1' to state start. It is still being carried out.")
    assert response.json()["wait"]["outcome"] == "timeout"
    assert spec_of(cluster).state == "start"  # accepted indeed


def test_a_failure_ends_the_wait_with_its_reason(cluster: Cluster) -> None:
    answer = cluster.open("POST", "/vm/web1/state", state="start", wait="true")
    wait_for(lambda: spec_of(cluster).state_request == 1)
    cluster.vm_status(node="node2", state="failed", failed_reason="no such disk",
                      state_request_done=1)
    response = answer.result(10)
    assert response.status_code == 510
    assert response.json()["message"].startswith(
        "VM 'web1' failed on node2: no such disk. The request was accepted")


@pytest.mark.parametrize("values", [{"wait_timeout": "soon"}, {"wait_timeout": "-1"},
                                    {"wait_timeout": "3601"}, {"wait_timeout": "nan"}])
def test_a_bad_wait_timeout_is_refused_before_anything_changes(cluster: Cluster,
                                                               values: dict[str, str]) -> None:
    response = cluster.call("POST", "/vm/web1/state", state="start", wait="true", **values)
    assert response.status_code == 510
    assert response.json()["message"].startswith(
        f"invalid wait_timeout '{values['wait_timeout']}': a number of seconds from 0 to 3600")
    assert spec_of(cluster).state_request == 0 and spec_of(cluster).state == "stop"


def test_a_flush_with_wait_answers_once_the_node_reports_flushed(cluster: Cluster) -> None:
    answer = cluster.open("POST", "/node/node2/domain-state", **{"domain-state": "flush"},
                          wait="true")
    spec = cluster.view.node_spec
    wait_for(lambda: (s := spec("node2")) is not None and s.domain_request == 1)
    cluster.node_status("node2", daemon_state="run", domain_state="flush")
    cluster.node_status("node2", daemon_state="run", domain_state="flushed",
                        domain_request_done=1)
    response = answer.result(10)
    assert response.status_code == 200, response.text
    assert response.json()["wait"]["what"] == "node node2 to be flushed"
    # asking again at the state (as the CLI does after a handover) answers at once now
    again = cluster.call("GET", "/node/node2/domain-state", wait="true")
    assert again.json()["domain_state"] == "flushed"
    assert again.json()["wait"]["outcome"] == "settled"


def test_a_handover_of_the_api_node_ends_the_wait_with_503_moved(cluster: Cluster) -> None:
    answer = cluster.open("GET", "/vm/web1/state", wait="true")  # VM stopped: settled at once
    assert answer.result(10).json()["wait"]["outcome"] == "settled"
    cluster.call("POST", "/vm/web1/state", state="start")
    waiting = cluster.open("GET", "/vm/web1/state", wait="true")
    cluster.node_status("node1", daemon_state="run", coordinator_state="relinquish")
    response = waiting.result(10)
    assert response.status_code == 503
    assert response.json()["wait"]["outcome"] == "moved"
    assert "ask the new primary" in response.json()["message"]
