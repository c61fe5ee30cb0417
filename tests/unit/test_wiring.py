"""What the subsystem builders hand the composition root: which controllers, fed by which cache
paths, and which services run on the primary (built from explicit dependencies, no daemon)."""

from __future__ import annotations

from unittest import mock

from pvcd.config import NetworkDriverSection, NetworkSection, NetworksSection
from pvcd.controllers.base import Wiring
from pvcd.controllers.client_networks import build_networks
from pvcd.controllers.floating import build_floating_ips
from pvcd.state.schema import Paths
from pvcd.state.view import ClusterView

PATHS = Paths("/pvc")
UNDERLAY = NetworkDriverSection(underlay_device="eth0", underlay_address="10.0.0.1")


def view() -> ClusterView:
    return ClusterView(mock.MagicMock(), PATHS)


def networks(config: NetworkDriverSection, coordinator: bool) -> Wiring:
    return build_networks("hv1", view(), mock.MagicMock(), mock.MagicMock(), config, coordinator)


def keys_for(wiring: Wiring, path: str) -> dict[str, str]:
    """controller name → the key a change of `path` enqueues on it"""
    found = {}
    for controller, watches in wiring.controllers:
        for watch in watches:
            if path.startswith(watch.prefix) and (key := watch.key_of(path)) is not None:
                found[controller.name] = key
    return found


def test_a_node_without_underlay_or_uplink_carries_no_client_networks() -> None:
    wiring = networks(NetworkDriverSection(), coordinator=True)
    assert wiring.controllers == [] and wiring.services == []


def test_every_node_builds_interfaces_and_acls_a_coordinator_also_gateways() -> None:
    plain = networks(UNDERLAY, coordinator=False)
    assert [c.name for c, _ in plain.controllers] == ["network", "firewall"]
    assert plain.services == []
    coordinator = networks(UNDERLAY, coordinator=True)
    assert [c.name for c, _ in coordinator.controllers] == ["network", "firewall", "gateway",
                                                           "dns"]
    assert [s.name for s in coordinator.services] == ["gateways", "dns"]


def test_the_watches_route_each_change_to_the_controllers_that_care() -> None:
    wiring = networks(UNDERLAY, coordinator=True)
    assert keys_for(wiring, PATHS.network(100)) == {
        "network": "net/100", "firewall": "acl/100", "gateway": "gw/100", "dns": "dns"}
    assert keys_for(wiring, PATHS.network_acls(100) + "/in-1") == {"firewall": "acl/100"}
    # the primary's DNS servers: reported leases and VM documents (names, NICs)
    assert keys_for(wiring, PATHS.network_lease(100, "52:54:00:00:00:01")) == {"dns": "dns"}
    assert keys_for(wiring, PATHS.vm("3f2e")) == {"dns": "dns"}
    assert keys_for(wiring, PATHS.vm("3f2e") + "/status") == {}
    assert keys_for(wiring, PATHS.network_static_leases(100) + "/52:54:00:00:00:01") == {
        "gateway": "gw/100"}
    assert keys_for(wiring, PATHS.node_alive("hv2")) == {"network": "peers"}


def test_floating_ips_are_a_primary_service_only_when_configured() -> None:
    assert build_floating_ips(NetworksSection(), None).services == []
    configured = NetworksSection(cluster=NetworkSection(
        device="eth0", network="10.0.0.0/24", floating_ip="10.0.0.254/24"))
    wiring = build_floating_ips(configured, None)
    assert [s.name for s in wiring.services] == ["floating-ip"] and wiring.controllers == []
