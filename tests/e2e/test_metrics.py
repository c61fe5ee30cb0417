"""`GET /metrics` on a lab: the families docs/operations.md lists, with values that agree with
the API (nodes, VMs, requests just made, reconciles, a fence, Ceph health)."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pvcd.lab.guest import tiny_guest_xml
from tests.e2e.labclient import LabClient, LabFactory, wait_until

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
HA_LAB = {"nodes": 3, "session_timeout": 10.0, "keepalive_interval": 1.0, "dead_threshold": 3}
FAMILIES = {
    "pvc_nodes": "gauge", "pvc_node_load1": "gauge", "pvc_node_cpus": "gauge",
    "pvc_node_vcpus_allocated": "gauge", "pvc_node_domains": "gauge",
    "pvc_node_running_domains": "gauge", "pvc_node_memory_total_bytes": "gauge",
    "pvc_node_memory_used_bytes": "gauge", "pvc_node_memory_free_bytes": "gauge",
    "pvc_node_memory_allocated_bytes": "gauge", "pvc_node_keepalive_timestamp_seconds": "gauge",
    "pvc_node_daemon_state": "gauge", "pvc_node_coordinator_state": "gauge",
    "pvc_node_domain_state": "gauge", "pvc_node_fence_state": "gauge",
    "pvc_maintenance": "gauge", "pvc_vms": "gauge", "pvc_networks": "gauge",
    "pvc_api_request_duration_seconds": "histogram", "pvc_api_requests_in_flight": "gauge",
    "pvc_reconciles": "counter", "pvc_reconcile_errors": "counter",
    "pvc_reconcile_duration_seconds": "histogram", "pvc_fences": "counter",
    "pvc_fence_failures": "counter",
}


class Scrape:
    """One scrape, parsed: families by name and samples by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def where(self, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
        wanted = set(labels.items())
        return {key: v for (n, key), v in self.samples.items() if n == name and wanted <= key}

    def total(self, name: str, **labels: str) -> float:
        return sum(self.where(name, **labels).values())


def scrape(api: LabClient) -> Scrape:
    response = api.session.get(api.base.removesuffix("/api/v1") + "/metrics", timeout=5,
                               verify=api.verify)  # no token: /metrics is public
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return Scrape(response.text)


def define(api: LabClient, name: str, node: str) -> None:
    response = api.post("/vm", data={"xml": tiny_guest_xml(name), "node": node})
    assert response.status_code == 200, response.text


def test_metrics_show_nodes_vms_requests_reconciles_and_fences(make_lab: LabFactory) -> None:
    lab, api = make_lab(**HA_LAB)
    primary = api.primary()
    assert primary is not None
    victim = next(n for n in ("node1", "node2", "node3") if n != primary)
    others = [n for n in ("node1", "node2", "node3") if n not in (primary, victim)]
    define(api, "m1", primary)
    define(api, "m2", others[0])
    assert api.post("/vm/m2/state", data={"state": "stop"}).status_code == 200
    assert api.get("/vm/nonexistent").status_code == 510
    # the VM controllers report their domains with the next keepalive
    wait_until(lambda: scrape(api).total("pvc_node_domains") == 2, timeout=10)
    m = scrape(api)

    for name, kind in FAMILIES.items():
        assert m.types.get(name) == kind, (name, m.types.get(name))
    assert m.value("pvc_nodes") == 3
    for name, node in api.nodes().items():
        assert m.value("pvc_node_memory_total_bytes", node=name) == node["memory"]["total"] * MIB
        assert m.value("pvc_node_memory_total_bytes", node=name) > 0
        assert m.value("pvc_node_cpus", node=name) == node["cpu_count"] >= 1
        assert m.value("pvc_node_load1", node=name) >= 0
        assert m.value("pvc_node_daemon_state", node=name, state="run") == 1
        assert m.total("pvc_node_daemon_state", node=name) == 1
        is_primary = 1 if name == primary else 0
        assert m.value("pvc_node_coordinator_state", node=name, state="primary") == is_primary
    assert m.value("pvc_node_memory_allocated_bytes", node=primary) == 64 * MIB
    assert m.value("pvc_vms", state="start") == 1 and m.value("pvc_vms", state="stop") == 1
    assert m.total("pvc_vms") == 2
    assert m.value("pvc_maintenance") == 0

    # the requests just made, by route template, method and status
    def count(route: str, method: str, status: str) -> float:
        return m.value("pvc_api_request_duration_seconds_count", route=route, method=method,
                       status=status)

    assert count("/api/v1/vm", "POST", "200") == 2
    assert count("/api/v1/vm/{vm}/state", "POST", "200") == 1
    assert count("/api/v1/vm/{vm}", "GET", "510") == 1
    assert m.value("pvc_api_request_duration_seconds_bucket", route="/api/v1/vm",
                   method="POST", status="200", le="+Inf") == 2
    assert 0 < m.value("pvc_api_request_duration_seconds_sum", route="/api/v1/vm",
                       method="POST", status="200") < 10
    assert m.value("pvc_api_requests_in_flight", node=primary) >= 1  # this scrape

    # this primary's controllers: the VM it runs was reconciled, nothing failed
    assert m.value("pvc_reconciles_total", node=primary, controller="vm") >= 1
    assert m.value("pvc_reconcile_duration_seconds_count", node=primary, controller="vm") >= 1
    assert m.total("pvc_reconcile_errors_total", node=primary) == 0
    assert _names(m.where("pvc_reconciles_total", node=primary)) >= {
        "node", "vm", "fencing", "coordinator"}
    assert m.value("pvc_fences_total", node=primary) == 0

    # a hung node is fenced: the primary counts it, the node shows its fence record
    lab.signal_node(victim, signal.SIGSTOP)
    # (the record lasts until the lab's node is "powered on" and runs again, a second or so)
    fenced = wait_until(lambda: (s := scrape(api)).value("pvc_fences_total", node=primary) == 1
                        and s, timeout=30)
    assert fenced.value("pvc_fence_failures_total", node=primary) == 0
    assert fenced.value("pvc_node_fence_state", node=victim, state="fenced") == 1
    # the lab fence restarted the victim's daemon: let `lab down` know its new pid
    wait_until(lambda: api.nodes()[victim]["daemon_state"] == "run", timeout=30)
    lab.refresh_pids()


@pytest.mark.ceph
def test_metrics_show_ceph_health_when_storage_is_configured(make_lab: LabFactory) -> None:
    _, api = make_lab(nodes=3, fencing="none", ceph=True)
    m = wait_until(lambda: (s := scrape(api)).total("pvc_ceph_health") == 1 and s, timeout=30)
    health = [dict(key)["status"] for key, v in m.where("pvc_ceph_health").items() if v == 1]
    assert health[0] in ("HEALTH_OK", "HEALTH_WARN")
    osds = api.get("/storage/ceph/osd").json()
    assert m.value("pvc_ceph_osds", state="all") == len(osds) >= 1
    assert m.value("pvc_ceph_osds", state="up") == len(osds)
    assert m.value("pvc_ceph_pools") == 0
    assert m.value("pvc_ceph_status_timestamp_seconds") > 0


def test_no_ceph_families_without_storage(make_lab: LabFactory) -> None:
    _, api = make_lab(nodes=1, fencing="none")
    m = scrape(api)
    assert not [name for name in m.types if name.startswith("pvc_ceph")]
    assert m.value("pvc_nodes") == 1


def _names(keys: Iterable[frozenset[tuple[str, str]]]) -> set[Any]:
    return {dict(key)["controller"] for key in keys}
