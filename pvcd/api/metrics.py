"""Prometheus metrics, served by the primary's API at `GET /metrics` (no authentication).

Two sources, one registry per daemon (no prometheus_client global state):
- the cluster as the watch-fed cache shows it (nodes, VMs, networks, fence records, Ceph health),
  read at scrape time by `ClusterCollector`: never stale, nothing to keep up to date between
  scrapes, and the same for whichever coordinator is primary;
- this process's own activity: API request latency (`observe_request`, called from
  `BaseHandler.on_finish`), its controllers' reconcile counts, errors and durations, and the
  fences it carried out (the `sources` the daemon gives, read at scrape time). These carry a `node`
  label: after a handover the new primary's series continue under its name.

Names follow Prometheus' rules: `pvc_` prefix, base units (`_bytes`, `_seconds`), `_total` for
counters. docs/operations.md lists every family.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pvcd.api.base import BaseHandler
from pvcd.api.nodes import node_object
from pvcd.api.routing import Route
from pvcd.domain.faults import cluster_health
from pvcd.domain.health import FAULT_STATUSES
from pvcd.domain.states import (
    COORDINATOR_STATES,
    DAEMON_STATES,
    DOMAIN_STATES,
    NETWORK_TYPES,
    VM_STATES,
    vm_state,
)
from pvcd.state.health import read_faults, read_node_health
from pvcd.state.view import ClusterView

MIB = 1024 * 1024
CEPH_HEALTH = ("HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR")
# API answers are served from memory (≈ 1 ms); Ceph writes wait for Ceph (seconds)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)


class ReconcileCounters(Protocol):
    """What metrics read of a controller (`pvcd.controllers.base.Controller`)."""

    name: str
    reconciles: int
    errors: int

    def durations(self) -> tuple[list[tuple[float, int]], float]: ...


class FenceCounters(Protocol):
    """What metrics read of the fencing controller."""

    fences: int
    failed_fences: int


class LabelledHistogram(Collector):
    """A histogram family with labels, thread-safe (observed from the API's event loop and the
    controllers' workers). Ours rather than prometheus_client's `Histogram`: no `_created`
    series, and no process-wide state."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.labels = list(labels)
        self.bounds = sorted(buckets)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, labels: Sequence[str], value: float) -> None:
        key = tuple(labels)
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * (len(self.bounds) + 1), [0.0]))
            counts[bisect.bisect_left(self.bounds, value)] += 1
            total[0] += value

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        with self._lock:
            series = [(key, list(counts), total[0])
                      for key, (counts, total) in sorted(self._series.items())]
        for key, counts, total in series:
            cumulative, buckets = 0, []
            for bound, count in zip([*self.bounds, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric(list(key), buckets, total)
        yield family


# what a daemon's metrics read at every scrape: its controllers, and its fencing controller
Sources = Callable[[], tuple[Sequence[ReconcileCounters], "FenceCounters | None"]]


class Metrics:
    """One daemon's metrics registry. `sources` and `in_flight` are read at every scrape."""

    def __init__(self, view: ClusterView, node_name: str,
                 clock: Callable[[], float] = time.time,
                 sources: Sources = lambda: ((), None),
                 in_flight: Callable[[], int] = lambda: 0) -> None:
        self.node_name = node_name
        self.registry = CollectorRegistry()  # collectors are read at scrape time only
        self.request_seconds = LabelledHistogram(
            "pvc_api_request_duration_seconds",
            "API requests served by this node, by route, method and HTTP status",
            ["route", "method", "status"], REQUEST_BUCKETS)
        self.sources = sources
        self.in_flight = in_flight
        for collector in (self.request_seconds, ClusterCollector(view, clock),
                          _ProcessCollector(self)):
            self.registry.register(collector)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.request_seconds.observe((route, method, str(status)), seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ProcessCollector(Collector):
    """This daemon's counters, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        node = self.metrics.node_name
        in_flight = GaugeMetricFamily("pvc_api_requests_in_flight",
                                      "API requests being served by this node", labels=["node"])
        in_flight.add_metric([node], self.metrics.in_flight())
        yield in_flight
        reconciles = CounterMetricFamily("pvc_reconciles", "Reconciles run by this node's "
                                         "controllers", labels=["node", "controller"])
        errors = CounterMetricFamily("pvc_reconcile_errors", "Reconciles that raised an "
                                     "unexpected error (each backs its key off)",
                                     labels=["node", "controller"])
        durations = HistogramMetricFamily("pvc_reconcile_duration_seconds",
                                          "Reconcile durations of this node's controllers",
                                          labels=["node", "controller"])
        controllers, fencing = self.metrics.sources()
        for controller in controllers:
            reconciles.add_metric([node, controller.name], controller.reconciles)
            errors.add_metric([node, controller.name], controller.errors)
            buckets, total = controller.durations()
            if buckets[-1][1]:  # a controller that has not reconciled yet has no series
                durations.add_metric([node, controller.name], [
                    ("+Inf" if bound == float("inf") else repr(bound), count)
                    for bound, count in buckets], total)
        yield reconciles
        yield errors
        yield durations
        if fencing is not None:
            fences = CounterMetricFamily("pvc_fences", "Fences confirmed by this node (as "
                                         "primary)", labels=["node"])
            fences.add_metric([node], fencing.fences)
            failed = CounterMetricFamily("pvc_fence_failures", "Fences that failed on this "
                                         "node (as primary)", labels=["node"])
            failed.add_metric([node], fencing.failed_fences)
            yield fences
            yield failed


class ClusterCollector(Collector):
    """The cluster's state from the cache, as the API shows it."""

    def __init__(self, view: ClusterView, clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        yield from self._nodes()
        yield from self._vms()
        yield from self._networks()
        yield from self._ceph()
        yield from self._health()

    def _nodes(self) -> Iterator[Metric]:
        view = self.view
        primary = view.primary()
        nodes = [n for n in (node_object(view, name, primary) for name in view.node_names())
                 if n is not None]
        labels = ["node"]
        gauges = {
            "load1": GaugeMetricFamily("pvc_node_load1", "1-minute load average", labels=labels),
            "cpus": GaugeMetricFamily("pvc_node_cpus", "CPU threads (vCPUs the node offers)",
                                      labels=labels),
            "vcpus_allocated": GaugeMetricFamily("pvc_node_vcpus_allocated",
                                                 "vCPUs of the VMs assigned to the node",
                                                 labels=labels),
            "domains": GaugeMetricFamily("pvc_node_domains", "VMs (libvirt domains) on the node",
                                         labels=labels),
            "running": GaugeMetricFamily("pvc_node_running_domains",
                                         "Running VMs on the node", labels=labels),
            "keepalive": GaugeMetricFamily("pvc_node_keepalive_timestamp_seconds",
                                           "Unix time of the node's last keepalive",
                                           labels=labels),
        }
        memory = {part: GaugeMetricFamily(f"pvc_node_memory_{part}_bytes", text, labels=labels)
                  for part, text in (("total", "Memory of the node"),
                                     ("used", "Memory in use on the node"),
                                     ("free", "Free memory on the node"),
                                     ("allocated", "Memory of the VMs assigned to the node"))}
        states = {
            "daemon_state": (GaugeMetricFamily("pvc_node_daemon_state", "1 for the node's "
                                               "daemon state", labels=["node", "state"]),
                             DAEMON_STATES),
            "coordinator_state": (GaugeMetricFamily(
                "pvc_node_coordinator_state", "1 for the node's coordinator state",
                labels=["node", "state"]), COORDINATOR_STATES),
            "domain_state": (GaugeMetricFamily("pvc_node_domain_state", "1 for the node's "
                                               "domain state", labels=["node", "state"]),
                             DOMAIN_STATES),
        }
        fence = GaugeMetricFamily("pvc_node_fence_state", "1 for the state of the node's "
                                  "fence record (fencing, fenced, failed)",
                                  labels=["node", "state"])
        for n in nodes:
            name = [n["name"]]
            gauges["load1"].add_metric(name, _number(n["load"]))
            gauges["cpus"].add_metric(name, _number(n["vcpu"]["total"]))
            gauges["vcpus_allocated"].add_metric(name, _number(n["vcpu"]["allocated"]))
            gauges["domains"].add_metric(name, _number(n["domains_count"]))
            gauges["running"].add_metric(name, len(n["running_domains"] or ()))
            if n.get("keepalive") is not None:
                gauges["keepalive"].add_metric(name, _number(n["keepalive"]))
            for part, family in memory.items():
                family.add_metric(name, _number(n["memory"][part]) * MIB)
            for key, (family, values) in states.items():
                for value in values:
                    family.add_metric([n["name"], value], 1.0 if n[key] == value else 0.0)
            if n.get("fence_state"):
                fence.add_metric([n["name"], str(n["fence_state"])], 1.0)
        yield GaugeMetricFamily("pvc_nodes", "Nodes in the cluster", value=len(nodes))
        yield from gauges.values()
        yield from memory.values()
        for family, _ in states.values():
            yield family
        yield fence
        maintenance = view.cache.get(view.paths.maintenance) or {}
        yield GaugeMetricFamily("pvc_maintenance", "1 while maintenance mode suspends fencing",
                                value=1.0 if isinstance(maintenance, dict) and
                                maintenance.get("enabled") else 0.0)

    def _vms(self) -> Iterator[Metric]:
        view = self.view
        counts = dict.fromkeys(VM_STATES, 0)
        for uuid in view.vm_uuids():
            spec = view.cache.get(view.paths.vm(uuid))
            if not isinstance(spec, dict):
                continue
            state = vm_state(spec, view.cache.get(view.paths.vm_status(uuid)) or {})
            counts[state] = counts.get(state, 0) + 1
        family = GaugeMetricFamily("pvc_vms", "VMs by state", labels=["state"])
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family

    def _networks(self) -> Iterator[Metric]:
        counts = dict.fromkeys(NETWORK_TYPES, 0)
        for vni in self.view.network_vnis():
            spec = self.view.network(vni)
            if spec is not None:
                counts[spec.type] = counts.get(spec.type, 0) + 1
        family = GaugeMetricFamily("pvc_networks", "Client networks by type", labels=["type"])
        for kind, count in counts.items():
            family.add_metric([kind], count)
        yield family

    def _ceph(self) -> Iterator[Metric]:
        """Only when the cluster has Ceph (the primary has mirrored its status)."""
        view, cache = self.view, self.view.cache
        status = cache.get(view.paths.storage_status)
        if not isinstance(status, dict):
            return
        health = status.get("health")
        family = GaugeMetricFamily("pvc_ceph_health", "1 for Ceph's health status (all 0: not "
                                   "known)", labels=["status"])
        for value in CEPH_HEALTH:
            family.add_metric([value], 1.0 if health == value else 0.0)
        yield family
        if isinstance(status.get("updated"), (int, float)):
            yield GaugeMetricFamily("pvc_ceph_status_timestamp_seconds", "Unix time the "
                                    "primary last read Ceph's status", value=status["updated"])
        osds = [doc for name in cache.children(view.paths.storage_osds)
                if isinstance(doc := cache.get(f"{view.paths.storage_osds}/{name}"), dict)]
        osd_family = GaugeMetricFamily("pvc_ceph_osds", "OSDs, and how many are up and in",
                                       labels=["state"])
        osd_family.add_metric(["all"], len(osds))
        for key in ("up", "in"):
            osd_family.add_metric([key], sum(1 for doc in osds
                                             if _truthy((doc.get("stats") or {}).get(key))))
        yield osd_family
        pools = cache.children(view.paths.storage_pools)
        yield GaugeMetricFamily("pvc_ceph_pools", "RBD pools", value=len(pools))
        volumes = sum(len(cache.children(f"{view.paths.storage_volumes}/{pool}"))
                      for pool in cache.children(view.paths.storage_volumes))
        yield GaugeMetricFamily("pvc_ceph_volumes", "RBD volumes", value=volumes)


    def _health(self) -> Iterator[Metric]:
        """Cluster health, each running node's health and check deltas, faults by status
        (extensions.md §8.2)."""
        view = self.view
        faults = [stored.fault for stored in read_faults(view).values()]
        yield GaugeMetricFamily("pvc_cluster_health", "Cluster health: 100 minus the deltas of "
                                "the unacknowledged faults", value=cluster_health(faults))
        health = GaugeMetricFamily("pvc_node_health", "Node health: 100 minus its checks' "
                                   "deltas (no series while not known)", labels=["node"])
        deltas = GaugeMetricFamily("pvc_node_health_check_delta", "What one health check of "
                                   "the node takes off its health", labels=["node", "check"])
        for name in view.node_names():
            node = read_node_health(view, name)
            if node is None:
                continue
            if node.health is not None:
                health.add_metric([name], node.health)
            for check in node.checks:
                deltas.add_metric([name, check.name], check.health_delta)
        yield health
        yield deltas
        by_status = GaugeMetricFamily("pvc_faults", "Faults by status (new: unacknowledged)",
                                      labels=["status"])
        for status in FAULT_STATUSES:
            by_status.add_metric([status], sum(1 for f in faults if f.status == status))
        yield by_status
        active = GaugeMetricFamily("pvc_faults_active", "Faults whose condition was seen in the "
                                   "latest round of checks", value=sum(1 for f in faults
                                                                       if f.active))
        yield active


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, (int, float)) and value > 0)


def metrics_of(handler: BaseHandler) -> Metrics:
    metrics = handler.ctx.metrics
    if not isinstance(metrics, Metrics):
        raise RuntimeError("the API context has no Metrics")
    return metrics


class MetricsHandler(BaseHandler):
    """GET /metrics: public, like `GET /api/v1` (counts and names only, no secrets)."""

    public = True

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(metrics_of(self).render())


ROUTES = [Route("/metrics", r"/metrics/?$", MetricsHandler)]
