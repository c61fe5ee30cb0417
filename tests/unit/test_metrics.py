"""Metrics from a cluster state held in memory: naming rules, values, the reconcile hook."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pvcd.api.metrics import Metrics
from pvcd.controllers.base import Controller
from pvcd.state.cache import Entry
from pvcd.state.schema import Paths
from pvcd.state.view import ClusterView

MIB = 1024 * 1024


class DictCache:
    """The read side of `StateCache` over a dict of path → document."""

    def __init__(self, docs: dict[str, Any]) -> None:
        self.docs = docs

    def get(self, path: str) -> Any:
        return self.docs.get(path)

    def entry(self, path: str) -> Entry | None:
        return Entry(self.docs[path], 0, 1, 1, 0) if path in self.docs else None

    def exists(self, path: str) -> bool:
        return path in self.docs

    def children(self, path: str) -> list[str]:
        prefix = path + "/"
        return sorted({p[len(prefix):].split("/", 1)[0] for p in self.docs
                       if p.startswith(prefix)})


def cluster() -> ClusterView:
    paths = Paths("/pvc")
    stats = {"cpu_count": 4, "load": 0.5, "memory_total": 2048, "memory_used": 512,
             "memory_free": 1536, "memory_allocated": 128, "vcpu_total": 4,
             "vcpu_allocated": 2, "domains_count": 1, "running_domains": ["u1"]}
    docs: dict[str, Any] = {
        paths.node("a"): {"name": "a", "coordinator": True},
        paths.node_status("a"): {"daemon_state": "run", "coordinator_state": "primary",
                                 "domain_state": "ready", "keepalive": 100.0, "stats": stats},
        paths.node_alive("a"): {},
        paths.node("b"): {"name": "b", "coordinator": True},
        paths.node_status("b"): {"daemon_state": "run", "coordinator_state": "secondary",
                                 "domain_state": "flushed", "stats": {}},  # not alive: dead
        paths.primary: {"node": "a"},
        paths.fence_record("b"): {"state": "fencing"},
        paths.vm("u1"): {"name": "one", "state": "start", "node": "a"},
        paths.vm("u2"): {"name": "two", "state": "stop", "node": "a"},
        paths.network(100): {"vni": 100, "description": "n", "type": "managed"},
        paths.storage_status: {"health": "HEALTH_WARN", "updated": 50.0},
        paths.storage_osd(0): {"id": 0, "stats": {"up": 1, "in": 1}},
        paths.storage_osd(1): {"id": 1, "stats": {"up": 0, "in": 1}},
    }
    return ClusterView(DictCache(docs), paths)  # type: ignore[arg-type]


def parse(metrics: Metrics) -> tuple[dict[str, str], dict[tuple[str, frozenset[Any]], float]]:
    types, samples = {}, {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return types, samples


def value(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_cluster_state_as_metrics() -> None:
    metrics = Metrics(cluster(), "a")
    _, s = parse(metrics)
    assert value(s, "pvc_nodes") == 2
    assert value(s, "pvc_node_memory_total_bytes", node="a") == 2048 * MIB
    assert value(s, "pvc_node_memory_allocated_bytes", node="a") == 128 * MIB
    assert value(s, "pvc_node_load1", node="a") == 0.5
    assert value(s, "pvc_node_running_domains", node="a") == 1
    assert value(s, "pvc_node_coordinator_state", node="a", state="primary") == 1
    assert value(s, "pvc_node_daemon_state", node="b", state="dead") == 1
    assert value(s, "pvc_node_domain_state", node="b", state="flushed") == 1
    assert value(s, "pvc_node_fence_state", node="b", state="fencing") == 1
    assert value(s, "pvc_vms", state="start") == 1 and value(s, "pvc_vms", state="stop") == 1
    assert value(s, "pvc_vms", state="failed") == 0
    assert value(s, "pvc_networks", type="managed") == 1
    assert value(s, "pvc_ceph_health", status="HEALTH_WARN") == 1
    assert value(s, "pvc_ceph_health", status="HEALTH_OK") == 0
    assert value(s, "pvc_ceph_osds", state="all") == 2
    assert value(s, "pvc_ceph_osds", state="up") == 1
    assert value(s, "pvc_ceph_osds", state="in") == 2


def test_names_follow_prometheus_rules() -> None:
    controller = Controller("vm", lambda key: None)
    controller._report(0.01)  # one reconcile's duration, as its worker reports it
    metrics = Metrics(cluster(), "a", sources=lambda: ([controller], None))
    metrics.observe_request("/api/v1/node", "GET", 200, 0.002)
    types, samples = parse(metrics)
    for name, kind in types.items():
        assert re.fullmatch(r"pvc_[a-z0-9_]+", name), name
        assert not name.endswith("_total"), name  # the parser strips it from counter families
        if kind == "counter":
            assert (name + "_total", frozenset({("node", "a"), ("controller", "vm")})) \
                in samples or not any(n.startswith(name) for n, _ in samples)
        if "memory" in name or "bytes" in name:
            assert name.endswith("_bytes"), name
        if "duration" in name or "timestamp" in name:
            assert name.endswith("_seconds"), name
    assert types["pvc_api_request_duration_seconds"] == "histogram"
    assert value(samples, "pvc_api_request_duration_seconds_count", route="/api/v1/node",
                 method="GET", status="200") == 1
    assert not [name for name, _ in samples if name.endswith("_created")]


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    metrics = Metrics(cluster(), "a")
    for seconds in (0.001, 0.0011, 0.3, 100.0):
        metrics.observe_request("/r", "GET", 200, seconds)
    _, s = parse(metrics)

    def bucket(le: str) -> float:
        return value(s, "pvc_api_request_duration_seconds_bucket", route="/r", method="GET",
                     status="200", le=le)

    assert (bucket("0.001"), bucket("0.0025"), bucket("0.5"), bucket("60.0"),
            bucket("+Inf")) == (1, 2, 3, 3, 4)
    assert value(s, "pvc_api_request_duration_seconds_sum", route="/r", method="GET",
                 status="200") == pytest.approx(100.3021)


def test_every_reconcile_is_timed_into_the_controllers_histogram() -> None:
    done = threading.Event()

    def reconcile(key: str) -> None:
        if key == "b":
            done.set()

    controller = Controller("things", reconcile)
    controller.start()
    try:
        controller.enqueue("a")
        controller.enqueue("b")
        assert done.wait(5)
    finally:
        controller.stop()
    assert controller.reconciles == 2 and controller.errors == 0
    _, s = parse(Metrics(cluster(), "n1", sources=lambda: ([controller], None)))
    assert value(s, "pvc_reconcile_duration_seconds_count", node="n1",
                 controller="things") == 2
    assert value(s, "pvc_reconcile_duration_seconds_bucket", node="n1", controller="things",
                 le="+Inf") == 2
    assert value(s, "pvc_reconcile_duration_seconds_sum", node="n1",
                 controller="things") >= 0
