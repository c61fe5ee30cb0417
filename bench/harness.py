"""Shared set-up of the API benchmarks: a real ZooKeeper, N synthetic nodes, the real API.

The API runs in-process exactly as in the daemon (its own thread and event loop, the watch-fed
cache, the store); requests go over real HTTP on loopback with keep-alive. kazoo's request
method is wrapped to count ZooKeeper round trips made while the benchmark runs.
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from pvcd.api.app import make_context
from pvcd.api.auth import Tokens
from pvcd.api.server import ApiServer
from pvcd.domain.records import NodeSpec, NodeStats, NodeStatus
from pvcd.lab.zookeeper import ZooKeeperEnsemble, free_port
from pvcd.state.cache import StateCache
from pvcd.state.codec import encode
from pvcd.state.schema import Paths, ensure_schema
from pvcd.state.store import Store
from pvcd.state.view import ClusterView

TOKEN = "bench-token-0123456789"


@dataclass
class Bench:
    client: KazooClient
    paths: Paths
    port: int
    zk_calls: list[int]
    zk_kinds: dict[str, int]
    server: ApiServer | None = None  # the API under test (its connection counts, its thread)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


@contextmanager
def zookeeper() -> Iterator[ZooKeeperEnsemble]:
    folder = Path(tempfile.mkdtemp(prefix="pvcd-bench-"))
    ensemble = ZooKeeperEnsemble(folder, 1)
    ensemble.start()
    try:
        yield ensemble
    finally:
        ensemble.stop()
        shutil.rmtree(folder, ignore_errors=True)


def populate_nodes(client: KazooClient, paths: Paths, count: int) -> None:
    """Write `count` synthetic nodes (spec + status + alive) in big transactions."""
    now = time.time()
    names = [f"hv{i:05d}" for i in range(count)]
    for start in range(0, count, 300):
        txn = client.transaction()
        for name in names[start:start + 300]:
            status = NodeStatus(daemon_state="run", coordinator_state="client",
                                keepalive=now, stats=NodeStats(cpu_count=32, kernel="6.1",
                                os="Debian", arch="x86_64", load=1.5, memory_total=262144,
                                memory_used=1024, memory_free=261120, vcpu_total=32))
            txn.create(paths.node(name), encode(NodeSpec(name).to_doc()))
            txn.create(paths.node_status(name), encode(status.to_doc()))
            txn.create(paths.node_alive(name), encode({"pid": 1}))
        results = txn.commit()
        assert not any(isinstance(r, Exception) for r in results), results


def populate_vms(client: KazooClient, paths: Paths, count: int, nodes: int = 3) -> None:
    """Write `count` synthetic VMs (spec + status + name index) spread over `nodes` nodes."""
    from pvcd.domain.records import VmSpec, VmStatus
    from pvcd.lab.guest import tiny_guest_xml
    from pvcd.vmxml import parse_domain_xml

    for start in range(0, count, 200):
        txn = client.transaction()
        for i in range(start, min(count, start + 200)):
            definition = parse_domain_xml(tiny_guest_xml(f"vm{i:05d}"))
            node = f"hv{i % nodes:05d}"
            spec = VmSpec(uuid=definition.uuid, name=definition.name, xml=definition.xml,
                          node=node, memory=definition.memory, vcpu=definition.vcpu,
                          info=definition.to_api_fields())
            txn.create(paths.vm(spec.uuid), encode(spec.to_doc()))
            txn.create(paths.vm_status(spec.uuid),
                       encode(VmStatus(node=node, state="running").to_doc()))
            txn.create(paths.vm_name(spec.name), encode({"uuid": spec.uuid}))
        results = txn.commit()
        assert not any(isinstance(r, Exception) for r in results), results


@contextmanager
def api(ensemble: ZooKeeperEnsemble, nodes: int, vms: int = 0) -> Iterator[Bench]:
    client = KazooClient(ensemble.connect_string, timeout=10)
    client.start()
    paths = Paths(f"/bench-{uuid.uuid4().hex[:8]}")
    ensure_schema(client, paths)
    populate_nodes(client, paths, nodes)
    populate_vms(client, paths, vms, max(1, min(nodes, 3)))
    cache = StateCache(client, paths.root)
    cache.start(timeout=120)
    calls = [0]
    kinds: dict[str, int] = {}
    original = client._call

    def counting_call(request: Any, async_object: Any) -> Any:
        calls[0] += 1
        kind = type(request).__name__
        kinds[kind] = kinds.get(kind, 0) + 1
        return original(request, async_object)

    client._call = counting_call  # type: ignore[method-assign]
    ctx = make_context(ClusterView(cache, paths), Store(client, cache), "bench", True,
                       Tokens.from_config([TOKEN]))
    port = free_port()
    server = ApiServer(ctx, "127.0.0.1", port, "s" * 32)
    server.start()
    try:
        yield Bench(client, paths, port, calls, kinds, server)
    finally:
        server.stop()
        cache.close()
        client.stop()
        client.close()


def timed_requests(bench: Bench, method: str, path: str, count: int,
                   body: str | None = None) -> list[float]:
    conn = bench.connection()
    headers = {"X-Api-Key": TOKEN}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        latencies.append(time.perf_counter() - start)
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
    conn.close()
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000,
            "req_per_s": len(ordered) / sum(ordered)}


def print_row(label: str, stats: dict[str, Any]) -> None:
    print(f"{label:<32} " + "  ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))


def body_size(bench: Bench, path: str) -> int:
    conn = bench.connection()
    conn.request("GET", path, headers={"X-Api-Key": TOKEN})
    data = conn.getresponse().read()
    conn.close()
    return len(json.loads(data))


def wait(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.001
         ) -> None:
    """Poll `predicate` until it is truthy; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError("condition not met")
