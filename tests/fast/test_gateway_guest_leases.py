"""The gateway hands the cluster's leases to the next dnsmasq: lease documents of every odd
shape (guest host names dnsmasq serves or not, documents an older pvcd stored unchecked,
broken ones) never keep it from starting, and the next lease report cleans them. In process,
over the real store and a fake dnsmasq (tests/fakes/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pvcd.controllers.gateway import gw_key
from pvcd.domain.records import NetworkSpec
from pvcd.drivers.dnsmasq import Lease
from pvcd.state.store import Op
from tests.fakes.networking import host_links, make_gateway, network_config
from tests.fakes.state import ClusterState

STORED: dict[str, Any] = {
    "52:54:00:00:00:01": {"mac": "52:54:00:00:00:01", "ip": "10.1.0.101", "hostname": "web_1",
                          "expires": 0},
    "52:54:00:00:00:02": {"mac": "52:54:00:00:00:02", "ip": "10.1.0.102", "hostname": "host-",
                          "expires": 0},
    "52:54:00:00:00:03": {"mac": "52:54:00:00:00:03", "ip": "10.1.0.103", "hostname": "x" * 64,
                          "expires": 0},
    "52:54:00:00:00:04": {"mac": "52:54:00:00:00:04", "ip": "10.1.0.104", "hostname": "日本",
                          "expires": 0},
    "52:54:00:00:00:05": {"mac": "52:54:00:00:00:05", "ip": "10.1.0.105", "hostname": "",
                          "expires": "4000000000"},
    "52:54:00:00:00:06": {},  # no fields at all
    "52:54:00:00:00:07": ["not", "a", "lease"],
    "06-52:54:00:00:00:08": {"mac": "06-52:54:00:00:00:08", "ip": "10.1.0.108",
                             "hostname": "ib", "expires": 0},
    "52:54:00:00:00:09": {"mac": "52:54:00:00:00:09", "ip": "10.1.0.109/24", "expires": 0},
}


@pytest.fixture
def stored_leases(cluster_state: ClusterState) -> ClusterState:
    spec = NetworkSpec(vni=100, description="net100", type="managed",
                       ip4_network="10.1.0.0/24", ip4_gateway="10.1.0.1", dhcp4=True,
                       dhcp4_start="10.1.0.100", dhcp4_end="10.1.0.200")
    paths = cluster_state.paths
    cluster_state.store.commit([
        Op.create(paths.network(100), spec.to_doc()),
        *(Op.create(p, {}) for p in paths.network_containers(100)),
        Op.create(paths.network_name("net100"), {"vni": 100}),
        *(Op.create(paths.network_lease(100, mac), doc) for mac, doc in STORED.items())])
    return cluster_state


def test_odd_stored_leases_never_keep_the_next_dnsmasq_from_starting(
        stored_leases: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links = host_links()
    links.ensure_bridge("vmbr100", 1500)
    gateway, host = make_gateway("node2", stored_leases, links,
                                 network_config(state_dir=tmp_path), monkeypatch)
    gateway.start()
    gateway.reconcile(gw_key(100))
    [dnsmasq] = host.running()
    assert dnsmasq.known == [
        Lease("52:54:00:00:00:01", "10.1.0.101", "web_1", 0),
        Lease("52:54:00:00:00:02", "10.1.0.102", "host-", 0),
        Lease("52:54:00:00:00:03", "10.1.0.103", None, 0),
        Lease("52:54:00:00:00:04", "10.1.0.104", None, 0),
        Lease("52:54:00:00:00:05", "10.1.0.105", None, 4000000000),
    ]
    # the report after the start makes ZooKeeper hold exactly what was kept
    path = stored_leases.paths.network_leases(100)
    assert sorted(stored_leases.cache.children(path)) == [f"52:54:00:00:00:0{i}"
                                                          for i in range(1, 6)]
    assert stored_leases.cache.get(f"{path}/52:54:00:00:00:04")["hostname"] is None
