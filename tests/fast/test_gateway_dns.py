"""DNS across networks in the gateway's reconcile and in what the names server gets, in process
over the fake dnsmasq (tests/fakes/drivers.py) and the real store: the files each network's
dnsmasq reads, and that another network's change reaches it without a restart."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pvcd.controllers.dns import NetworkDns
from pvcd.controllers.dns_service import KEY, SUPERVISE_INTERVAL, DnsService
from pvcd.controllers.gateway import gw_key
from pvcd.domain.dns import NAMES_SERVER, Forwarding
from pvcd.domain.errors import BackendError
from pvcd.domain.records import NetworkSpec, StaticLeaseSpec
from pvcd.drivers.dns_server import DnsServerConfig
from pvcd.drivers.dnsmasq import Lease
from pvcd.drivers.dnsmasq_dns import HostRecord
from tests.fakes.networking import host_links, make_gateway, network_config
from tests.fakes.state import ClusterState
from tests.fast.test_network_controllers import add_network, delete_network


def network(state: ClusterState, vni: int, domain: str | None) -> None:
    add_network(state, vni, domain=domain, ip4_network=f"10.{vni}.0.0/24",
                ip4_gateway=f"10.{vni}.0.1", dhcp4=True, dhcp4_start=f"10.{vni}.0.100",
                dhcp4_end=f"10.{vni}.0.200")


def servers(dnsmasq) -> list[str]:
    return (dnsmasq.dns_files().servers_path).read_text().splitlines()


def test_another_networks_change_reaches_a_resolver_without_a_restart(
        cluster_state: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    network(cluster_state, 10, "a.test")
    network(cluster_state, 20, "b.test")
    links = host_links()
    for vni in (10, 20):
        links.ensure_bridge(f"vmbr{vni}", 1500)
    gateway, host = make_gateway("node1", cluster_state, links,
                                 network_config(state_dir=tmp_path), monkeypatch)
    gateway.start()
    for vni in (10, 20):
        gateway.reconcile(gw_key(vni))
    a, _b = host.running()
    assert servers(a) == [f"server=/a.test/{NAMES_SERVER}", "server=/b.test/10.20.0.1",
                          f"rev-server=10.10.0.0/24,{NAMES_SERVER}",
                          "rev-server=10.20.0.0/24,10.20.0.1"]
    assert a.config.dns_files
    a.active = [Lease("52:54:00:00:10:01", "10.10.0.100", "web", 0)]
    gateway.reconcile(gw_key(10))
    reloads = a.reloads

    # network 20 changes its domain: 10's resolver re-reads, keeps running and its leases
    spec = NetworkSpec(20, "net20", "managed", "c.test", "10.20.0.0/24", "10.20.0.1", True,
                       "10.20.0.100", "10.20.0.200")
    cluster_state.put(cluster_state.paths.network(20), spec.to_doc())
    gateway.reconcile(gw_key(10))
    assert "server=/c.test/10.20.0.1" in servers(a) and "server=/b.test/10.20.0.1" not in \
        servers(a)
    assert a.reloads == reloads + 1 and a.running() and host.running()[0] is a
    assert [le.mac for le in a.leases()] == ["52:54:00:00:10:01"]
    gateway.reconcile(gw_key(10))
    assert a.reloads == reloads + 1  # nothing changed: no signal

    # a network added, then removed
    network(cluster_state, 30, "d.test")
    gateway.reconcile(gw_key(10))
    assert "server=/d.test/10.30.0.1" in servers(a) and a.reloads == reloads + 2
    delete_network(cluster_state, 30)
    gateway.reconcile(gw_key(10))
    assert "server=/d.test/10.30.0.1" not in servers(a) and a.running()


def test_static_names_go_to_the_networks_own_hosts(
        cluster_state: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    network(cluster_state, 10, "a.test")
    links = host_links()
    links.ensure_bridge("vmbr10", 1500)
    gateway, host = make_gateway("node1", cluster_state, links,
                                 network_config(state_dir=tmp_path), monkeypatch)
    gateway.start()
    for mac, ip, name in (("52:54:00:00:10:05", "10.10.0.5", "db"),
                          ("52:54:00:00:10:06", "10.10.0.6", None)):
        cluster_state.put(cluster_state.paths.network_static_lease(10, mac),
                          StaticLeaseSpec(mac, ip, name).to_doc())
    gateway.reconcile(gw_key(10))
    [a] = host.running()
    assert (a.dns_files().names_dir / "hosts").read_text() == "10.10.0.5 db.a.test\n"


def test_vm_names_come_from_the_reported_leases_of_publishing_networks(
        cluster_state: ClusterState, caplog: pytest.LogCaptureFixture) -> None:
    network(cluster_state, 10, "a.test")
    network(cluster_state, 20, "x.a.test")  # written past the API: a conflict
    paths = cluster_state.paths
    network(cluster_state, 30, "c.test")
    for uuid, name, mac, bridge in (("u1", "web1", "52:54:00:00:10:01", "vmbr10"),
                                    ("u2", "bad_name", "52:54:00:00:10:02", "vmbr10"),
                                    ("u3", "db", "52:54:00:00:20:01", "vmbr20"),
                                    ("u4", "app", "52:54:00:00:30:01", "vmbr30")):
        cluster_state.put(paths.vm(uuid), {"uuid": uuid, "name": name, "info": {
            "networks": [{"type": "bridge", "mac": mac.upper(), "source": bridge}]}})
    for vni, mac, ip in ((10, "52:54:00:00:10:01", "10.10.0.100"),
                         (10, "52:54:00:00:10:02", "10.10.0.101"),
                         (10, "52:54:00:00:10:09", "10.10.0.102"),  # no VM's
                         (10, "52:54:00:00:30:01", "10.10.0.103"),  # a VM's MAC, copied
                         (20, "52:54:00:00:20:01", "10.20.0.100")):  # lost its domain
        cluster_state.put(paths.network_lease(vni, mac),
                          {"mac": mac, "ip": ip, "hostname": "guest", "expires": 0})
    dns = NetworkDns(cluster_state.view, lambda: ())
    with caplog.at_level(logging.WARNING):
        zones = dns.zones()
        dns.zones()
    assert dns.vm_names(zones) == [HostRecord("10.10.0.100", ("web1.a.test",))]
    conflicts = [r.getMessage() for r in caplog.records if "DNS_DOMAIN_CONFLICT" in
                 r.getMessage()]
    assert conflicts == ["event=dns-domain-conflict fault=DNS_DOMAIN_CONFLICT_20 vni=20 "
                         "kept_by=10"]  # once, not on every poll


class FakeDnsServer:
    """`DnsServer`: what it was told to serve, and whether it runs; `failing` makes `serve`
    fail as a dnsmasq that cannot bind does."""

    def __init__(self, name: str, failing: bool = False) -> None:
        self.config = DnsServerConfig(name, ("127.0.0.153",), Path("/nonexistent"))
        self.failing = failing
        self.running = False
        self.orphans_killed = 0
        self.served: tuple[Forwarding, list[HostRecord]] | None = None

    def serve(self, forwarding: Forwarding, names: list[HostRecord]) -> None:
        if self.failing:
            raise BackendError("dnsmasq for dns-names exited with 2 at start: address in use")
        self.served, self.running = (forwarding, list(names)), True

    def stop(self) -> None:
        self.running = False

    def kill_orphans(self) -> None:
        self.orphans_killed += 1


def test_the_dns_service_serves_while_primary_and_one_failing_server_holds_no_other_up(
        cluster_state: ClusterState) -> None:
    network(cluster_state, 10, "a.test")
    names, floating = FakeDnsServer("names", failing=True), FakeDnsServer("floating")
    service = DnsService(cluster_state.view, NetworkDns(cluster_state.view, lambda: ()),
                         names, floating, resync_interval=60)  # type: ignore[arg-type]
    service.reconcile(KEY)
    service.reconcile(KEY)
    assert not floating.running  # not primary: nothing runs
    assert floating.orphans_killed == names.orphans_killed == 1  # (once per daemon)
    service.start()
    with pytest.raises(BackendError):  # backed off and tried again
        service.reconcile(KEY)
    assert floating.running and floating.served is not None
    assert floating.served[0].domains == (("a.test", "10.10.0.1"),)
    assert floating.served[0].upstream == ()  # never recursion on the floating IPs
    names.failing = False
    assert service.reconcile(KEY).requeue_after == SUPERVISE_INTERVAL
    assert names.served is not None and names.served[0].local_domains == ("a.test",)
    service.stop()
    assert not names.running and not floating.running
    service.reconcile(KEY)
    assert not names.running and not floating.running
