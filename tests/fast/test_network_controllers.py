"""The network, firewall and gateway controllers, in process, over fake netlink, nftables and
dnsmasq (tests/fakes/drivers.py) and the real store. Each test checks what is on the fake host
afterwards: interfaces, peers, chains, addresses, dnsmasq instances, lease documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvcd.controllers.firewall import FirewallController, acl_key
from pvcd.controllers.gateway import gw_key
from pvcd.controllers.network import PEERS_KEY, NetworkController, net_key
from pvcd.domain.records import AclSpec, NetworkSpec, StaticLeaseSpec
from pvcd.drivers.dnsmasq import Lease
from pvcd.drivers.nft_rules import validate_rule
from tests.fakes.drivers import FakeNftables
from tests.fakes.networking import (
    UNDERLAY,
    host_links,
    make_firewall,
    make_gateway,
    make_network_controller,
    network_config,
)
from tests.fakes.nodes import SimCluster
from tests.fakes.state import ClusterState


def add_network(state: ClusterState, vni: int, nettype: str = "managed", **fields: object) -> None:
    """As `POST /network` writes it: the document, its child folders, the name index."""
    spec = NetworkSpec(vni=vni, description=f"net{vni}", type=nettype, **fields)  # type: ignore[arg-type]
    paths = state.paths
    from pvcd.state.store import Op

    state.store.commit([Op.create(paths.network(vni), spec.to_doc()),
                        *(Op.create(p, {}) for p in paths.network_containers(vni)),
                        Op.create(paths.network_name(spec.description), {"vni": vni})])


def delete_network(state: ClusterState, vni: int) -> None:
    from pvcd.state.store import Op

    paths = state.paths
    ops = [Op.delete(f"{paths.network_acls(vni, d)}/{name}")
           for d in ("in", "out") for name in state.cache.children(paths.network_acls(vni, d))]
    ops += [Op.delete(p) for p in reversed(paths.network_containers(vni))]
    ops += [Op.delete(paths.network_name(f"net{vni}")), Op.delete(paths.network(vni))]
    state.store.commit(ops)


def add_acl(state: ClusterState, vni: int, description: str, direction: str, order: int,
            rule: str) -> None:
    """As `POST /network/<vni>/acl` writes it: the rule text and the body nft made of it."""
    acl = AclSpec(description, direction, order, rule, validate_rule(rule))
    state.put(state.paths.network_acl(vni, direction, description), acl.to_doc())


def resync(controller: NetworkController | FirewallController) -> None:
    """What the periodic resync does: reconcile every key the controller knows."""
    keys = controller.keys()
    for key in keys:
        controller.reconcile(key)


# network controller
def test_a_managed_network_gets_bridge_and_tunnel_to_the_live_peers(sim: SimCluster) -> None:
    node1, node2 = sim.add_node("node1"), sim.add_node("node2")
    sim.add_node("node3")
    links1, links2 = host_links(), host_links()
    net1 = make_network_controller("node1", sim.state, links1, network_config("10.0.0.1"),
                                   node1.writer)
    net2 = make_network_controller("node2", sim.state, links2, network_config("10.0.0.2"),
                                   node2.writer)
    net1.reconcile(PEERS_KEY)
    net2.reconcile(PEERS_KEY)  # each publishes its underlay address
    add_network(sim.state, 100)
    net1.reconcile(net_key(100))
    bridge, tunnel = links1.links["vmbr100"], links1.links["vxlan100"]
    assert (bridge.kind, bridge.mtu, bridge.up) == ("bridge", 8950, True)
    assert (tunnel.master, tunnel.mtu, tunnel.settings["vni"]) == ("vmbr100", 8950, 100)
    assert tunnel.settings["local"] == "10.0.0.1" and tunnel.settings["dev"] == UNDERLAY
    assert tunnel.peers == {"10.0.0.2"}  # node3 published no address
    sim.nodes["node2"].power_off()  # its session goes: no more frames for it
    net1.reconcile(net_key(100))
    assert links1.links["vxlan100"].peers == set()


def test_a_bridged_network_enslaves_the_vlan_and_a_deleted_one_is_removed(
        cluster_state: ClusterState, sim: SimCluster) -> None:
    node1 = sim.add_node("node1")
    links = host_links()
    net = make_network_controller("node1", cluster_state, links, network_config(), node1.writer)
    add_network(cluster_state, 200, "bridged")
    net.reconcile(net_key(200))
    assert links.links["eth2.200"].master == "vmbr200"
    assert links.links["vmbr200"].mtu == 1500
    delete_network(cluster_state, 200)
    resync(net)
    assert sorted(links.links) == ["eth1", "eth2"]


def test_an_interface_deleted_by_hand_comes_back_at_the_resync(sim: SimCluster) -> None:
    node1 = sim.add_node("node1")
    links = host_links()
    net = make_network_controller("node1", sim.state, links, network_config(), node1.writer)
    add_network(sim.state, 100)
    net.reconcile(net_key(100))
    links.delete_link("vxlan100")
    resync(net)
    assert links.links["vxlan100"].master == "vmbr100"


# firewall controller
def test_acls_are_applied_in_order_behind_the_direction_guards(cluster_state: ClusterState
                                                                ) -> None:
    nft = FakeNftables()
    firewall = make_firewall("node1", cluster_state, nft)
    add_network(cluster_state, 100, ip4_network="10.1.0.0/24", ip4_gateway="10.1.0.1")
    add_acl(cluster_state, 100, "second", "in", 1, "drop")
    add_acl(cluster_state, 100, "first", "in", 0, "accept")
    firewall.reconcile(acl_key(100))
    chains = nft.chains[100]
    assert chains["bridge"] == "vmbr100"
    # (the metadata service's rules first: docs/provisioning.md)
    assert [rule["comment"] for rule in chains["in"]] == [
        "pvc: the metadata service", "pvc: only traffic into the network", "first", "second"]
    assert [rule["comment"] for rule in chains["out"]] == [
        "pvc: the metadata service", "pvc: only traffic out of the network"]


def test_a_network_without_acls_has_empty_chains_and_a_deleted_one_none(
        cluster_state: ClusterState) -> None:
    nft = FakeNftables()
    firewall = make_firewall("node1", cluster_state, nft)
    add_network(cluster_state, 100, ip4_network="10.1.0.0/24", ip4_gateway="10.1.0.1")
    firewall.reconcile(acl_key(100))
    assert nft.chains[100]["in"] == [] and nft.chains[100]["out"] == []
    delete_network(cluster_state, 100)
    resync(firewall)
    assert nft.networks() == []


# gateway service
@pytest.fixture
def gateway_net(cluster_state: ClusterState) -> ClusterState:
    add_network(cluster_state, 100, ip4_network="10.1.0.0/24", ip4_gateway="10.1.0.1",
                dhcp4=True, dhcp4_start="10.1.0.100", dhcp4_end="10.1.0.200",
                ip6_network="fd00:100::/64")
    return cluster_state


def test_the_primary_serves_gateways_and_dhcp_and_reports_leases(
        gateway_net: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links = host_links()
    links.ensure_bridge("vmbr100", 1500)  # made by the network controller
    gateway, host = make_gateway("node1", gateway_net, links, network_config(state_dir=tmp_path),
                                 monkeypatch)
    gateway.reconcile(gw_key(100))
    assert host.running() == [] and links.addresses("vmbr100") == []  # not primary: nothing
    gateway.start()
    gateway_net.put(gateway_net.paths.network_static_lease(100, "52:54:00:00:00:01"),
                    StaticLeaseSpec("52:54:00:00:00:01", "10.1.0.50", "db").to_doc())
    gateway.reconcile(gw_key(100))
    assert sorted(links.addresses("vmbr100")) == ["10.1.0.1/24", "fd00:100::1/64"]
    [dnsmasq] = host.running()
    assert (dnsmasq.config.dhcp4_start, dnsmasq.config.dhcp4_end) == ("10.1.0.100", "10.1.0.200")
    assert [s.ip for s in dnsmasq.statics] == ["10.1.0.50"]
    dnsmasq.active = [Lease("52:54:00:00:00:02", "10.1.0.101", "web", 0)]
    gateway.reconcile(gw_key(100))
    leases = gateway_net.cache.children(gateway_net.paths.network_leases(100))
    assert leases == ["52:54:00:00:00:02"]


def test_stop_hands_the_leases_over_and_the_next_primary_starts_with_them(
        gateway_net: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_links, new_links = host_links(), host_links()
    for links in (old_links, new_links):
        links.ensure_bridge("vmbr100", 1500)
    old, old_host = make_gateway("node1", gateway_net, old_links,
                                 network_config(state_dir=tmp_path / "a"), monkeypatch)
    old.start()
    old.reconcile(gw_key(100))
    old_host.running()[0].active = [Lease("52:54:00:00:00:02", "10.1.0.101", "web", 0)]
    old.stop()
    assert old_host.running() == [] and old_links.addresses("vmbr100") == []
    new, new_host = make_gateway("node2", gateway_net, new_links,
                                 network_config(state_dir=tmp_path / "b"), monkeypatch)
    new.start()
    new.reconcile(gw_key(100))
    [dnsmasq] = new_host.running()
    assert [(le.mac, le.ip) for le in dnsmasq.known] == [("52:54:00:00:00:02", "10.1.0.101")]


def test_a_gateway_waits_for_its_bridge(gateway_net: ClusterState, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from pvcd.controllers.base import TemporaryError

    gateway, host = make_gateway("node1", gateway_net, host_links(),
                                 network_config(state_dir=tmp_path), monkeypatch)
    gateway.start()
    with pytest.raises(TemporaryError, match="vmbr100"):
        gateway.reconcile(gw_key(100))
    assert host.dnsmasqs == []
