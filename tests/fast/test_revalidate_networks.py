"""The network, firewall and gateway controllers re-validate every document they read
(docs/security.md, "Daemons re-validate"): networks, ACLs and static leases written straight
into ZooKeeper, past the API, that the API would refuse change nothing on the (fake) host, and
the node's status says why (`NodeStatus.refused`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvcd.controllers.firewall import acl_key
from pvcd.controllers.gateway import gw_key
from pvcd.controllers.network import net_key
from pvcd.domain.records import AclSpec, NetworkSpec, StaticLeaseSpec
from pvcd.drivers.nft_rules import validate_rule
from pvcd.state.store import Op
from tests.fakes.attacker import write_past_the_api
from tests.fakes.drivers import FakeNftables
from tests.fakes.networking import (
    host_links,
    make_firewall,
    make_gateway,
    make_network_controller,
    network_config,
    status_writer,
)
from tests.fakes.state import ClusterState

MANAGED = {"ip4_network": "10.1.0.0/24", "ip4_gateway": "10.1.0.1"}


def refused(state: ClusterState, node: str = "node1") -> dict[str, str]:
    status = state.view.node_status(node)
    return {} if status is None else status.refused


def add_network(state: ClusterState, vni: int, **fields: object) -> None:
    """As `POST /network` writes it."""
    spec = NetworkSpec(vni=vni, description=f"net{vni}", type="managed", **fields)  # type: ignore[arg-type]
    paths = state.paths
    state.store.commit([Op.create(paths.network(vni), spec.to_doc()),
                        *(Op.create(p, {}) for p in paths.network_containers(vni)),
                        Op.create(paths.network_name(spec.description), {"vni": vni})])


@pytest.mark.parametrize(("doc", "reason"), [
    ({"vni": 100, "description": "net100", "type": "managed", "ip4_network": "10.1.0.0/16x",
      "ip4_gateway": "10.1.0.1"}, "ip4_network '10.1.0.0/16x' is not an IPv4 network"),
    ({"vni": 7, "description": "net100", "type": "managed"}, "names the vni 7"),
    ({"vni": 100, "description": "a b", "type": "managed"}, "description 'a b' is invalid"),
    ({"vni": 100, "description": "net100", "type": "vxlan"}, "invalid nettype 'vxlan'"),
    ({"vni": 100}, "lacks a network's fields"),
    (["not", "a", "network"], "is not a network document"),
])
def test_an_invalid_network_gets_no_interfaces_and_the_node_says_why(
        cluster_state: ClusterState, doc: object, reason: str) -> None:
    links = host_links()
    net = make_network_controller("node1", cluster_state, links, network_config(),
                                  status_writer("node1", cluster_state))
    write_past_the_api(cluster_state, cluster_state.paths.network(100), doc)
    net.reconcile(net_key(100))
    assert sorted(links.links) == ["eth1", "eth2"]
    assert reason in refused(cluster_state)["network/100"]


def test_a_network_made_invalid_keeps_its_interfaces_until_it_is_valid_again(
        cluster_state: ClusterState) -> None:
    links = host_links()
    net = make_network_controller("node1", cluster_state, links, network_config(),
                                  status_writer("node1", cluster_state))
    add_network(cluster_state, 100, **MANAGED)
    net.reconcile(net_key(100))
    assert links.links["vxlan100"].master == "vmbr100"
    path = cluster_state.paths.network(100)
    good = cluster_state.doc(path)
    write_past_the_api(cluster_state, path, {**good, "vni": "100; rm -rf /"})
    net.reconcile(net_key(100))
    assert links.links["vxlan100"].master == "vmbr100"  # not removed, not changed
    assert "names the vni '100; rm -rf /'" in refused(cluster_state)["network/100"]
    write_past_the_api(cluster_state, path, good)
    net.reconcile(net_key(100))
    assert refused(cluster_state) == {}


def write_acl(state: ClusterState, description: str, rule: str, body: dict[str, object],
              order: int = 0, direction: str = "in") -> None:
    acl = AclSpec(description, direction, order, rule, body)
    write_past_the_api(state, state.paths.network_acl(100, direction, description), acl.to_doc())


def test_the_firewall_applies_only_bodies_it_made_of_allowed_rule_texts(
        cluster_state: ClusterState) -> None:
    nft = FakeNftables()
    firewall = make_firewall("node1", cluster_state, nft)
    add_network(cluster_state, 100, **MANAGED)
    write_acl(cluster_state, "ssh", "tcp dport 22 accept", validate_rule("tcp dport 22 accept"))
    # a forged body: the text says accept, the body jumps out of the network's chain
    write_acl(cluster_state, "forged", "accept", {"expr": [{"jump": {"target": "input"}}]},
              order=1)
    write_acl(cluster_state, "mark", "meta mark set 1 accept", {"expr": [{"accept": None}]},
              order=2)
    write_acl(cluster_state, "inject", "drop; flush ruleset", {"expr": [{"drop": None}]},
              order=3)
    firewall.reconcile(acl_key(100))
    # the ACLs: after pvcd's own rules (direction guard, metadata replies), which carry "pvc:"
    applied = [rule for rule in nft.chains[100]["in"]
               if not str(rule.get("comment", "")).startswith("pvc:")]
    assert [rule["comment"] for rule in applied] == ["ssh", "forged"]
    assert applied[1]["expr"] == [{"accept": None}]  # made of its text, not the stored body
    reasons = refused(cluster_state)
    assert sorted(reasons) == ["acl/100/in/inject", "acl/100/in/mark"]
    assert "statement 'mangle' is not allowed" in reasons["acl/100/in/mark"]
    assert "';'" in reasons["acl/100/in/inject"]


def test_an_invalid_network_keeps_its_chains(cluster_state: ClusterState) -> None:
    nft = FakeNftables()
    firewall = make_firewall("node1", cluster_state, nft)
    add_network(cluster_state, 100, **MANAGED)
    write_acl(cluster_state, "ssh", "tcp dport 22 accept", validate_rule("tcp dport 22 accept"))
    firewall.reconcile(acl_key(100))
    before = nft.chains[100]
    path = cluster_state.paths.network(100)
    write_past_the_api(cluster_state, path, {**cluster_state.doc(path), "ip4_network": "::/0"})
    write_acl(cluster_state, "web", "tcp dport 80 accept", validate_rule("tcp dport 80 accept"),
              order=1)
    firewall.reconcile(acl_key(100))
    assert nft.chains[100] == before


def test_the_gateway_hands_dnsmasq_only_valid_static_leases_and_keeps_a_refused_network(
        cluster_state: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_network(cluster_state, 100, dhcp4=True, dhcp4_start="10.1.0.100",
                dhcp4_end="10.1.0.200", **MANAGED)
    links = host_links()
    links.ensure_bridge("vmbr100", 1500)
    gateway, host = make_gateway("node1", cluster_state, links,
                                 network_config(state_dir=tmp_path), monkeypatch)
    gateway.start()
    paths = cluster_state.paths
    good = StaticLeaseSpec("52:54:00:00:00:01", "10.1.0.50", "db")
    cluster_state.put(paths.network_static_lease(100, good.mac), good.to_doc())
    for lease in (StaticLeaseSpec("52:54:00:00:00:02", "192.168.9.9", "outside"),
                  StaticLeaseSpec("52:54:00:00:00:03", "10.1.0.51", "bad host\nname"),
                  StaticLeaseSpec("52:54:00:00:00:04", "10.1.0.50", "twin")):
        write_past_the_api(cluster_state, paths.network_static_lease(100, lease.mac),
                           lease.to_doc())
    gateway.reconcile(gw_key(100))
    [dnsmasq] = host.running()
    assert [(s.mac, s.ip) for s in dnsmasq.statics] == [(good.mac, good.ip)]
    assert sorted(refused(cluster_state)) == [f"static-lease/100/52:54:00:00:00:0{i}"
                                              for i in (2, 3, 4)]
    assert "not inside ip4_network" in refused(cluster_state)["static-lease/100/52:54:00:00:00:02"]
    path = paths.network(100)
    write_past_the_api(cluster_state, path, {**cluster_state.doc(path), "ip4_gateway": "8.8.8.8"})
    gateway.reconcile(gw_key(100))
    assert host.running() == [dnsmasq] and dnsmasq.config.ip4_gateway == "10.1.0.1"
    assert links.addresses("vmbr100") == ["10.1.0.1/24"]
