"""Factories for the client-network controllers over fake host drivers (one place that knows
their constructors), for in-process tests.

The gateway service builds its dnsmasq instances, announces its addresses and switches routing on
through module-level functions rather than injected drivers, so `make_gateway` swaps those three
names in `pvcd.controllers.gateway` for the test's fakes (pytest's monkeypatch undoes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pvcd.config import NetworkDriverSection
from pvcd.controllers import gateway as gateway_module
from pvcd.controllers.dns import NetworkDns
from pvcd.controllers.firewall import FirewallController
from pvcd.controllers.gateway import GatewayService
from pvcd.controllers.network import NetworkController
from pvcd.controllers.node import NodeStatusWriter
from pvcd.controllers.refusals import Refusals
from pvcd.domain.records import NodeSpec
from pvcd.drivers.dnsmasq import DnsmasqConfig
from tests.fakes.drivers import FakeDnsmasq, FakeNetlink, FakeNftables
from tests.fakes.state import ClusterState

UNDERLAY, UPLINK = "eth1", "eth2"


def network_config(address: str = "10.0.0.1", state_dir: Path | None = None
                   ) -> NetworkDriverSection:
    return NetworkDriverSection(underlay_device=UNDERLAY, underlay_address=address,
                                uplink_device=UPLINK,
                                state_dir=str(state_dir or "/nonexistent/pvc-networks"))


def host_links() -> FakeNetlink:
    """A host with an underlay (MTU 9000) and an uplink (MTU 1500)."""
    return FakeNetlink({UNDERLAY: 9000, UPLINK: 1500})


def status_writer(name: str, state: ClusterState) -> NodeStatusWriter:
    """A node's status writer, for a controller built without a simulated node (its node
    document is made here if missing: the status is its child)."""
    if not state.cache.exists(state.paths.node(name)):
        state.put(state.paths.node(name), NodeSpec(name).to_doc())
    return NodeStatusWriter(state.store, state.paths.node_status(name))


def make_network_controller(name: str, state: ClusterState, links: FakeNetlink,
                            config: NetworkDriverSection, writer: NodeStatusWriter
                            ) -> NetworkController:
    return NetworkController(name, state.view, links, config, writer)  # type: ignore[arg-type]


def make_firewall(name: str, state: ClusterState, nft: FakeNftables) -> FirewallController:
    """With the real ACL rule check (`validate_rule`: nft in a throw-away namespace)."""
    return FirewallController(name, state.view, nft,  # type: ignore[arg-type]
                              Refusals(name, status_writer(name, state)))


@dataclass
class GatewayHost:
    """What the gateway service did on its host besides links: dnsmasq instances made,
    neighbour announcements sent."""

    dnsmasqs: list[FakeDnsmasq] = field(default_factory=list)
    announced: list[tuple[str, str]] = field(default_factory=list)  # (bridge, address)

    def running(self) -> list[FakeDnsmasq]:
        return [d for d in self.dnsmasqs if d.running()]


def make_gateway(name: str, state: ClusterState, links: FakeNetlink,
                 config: NetworkDriverSection, monkeypatch: pytest.MonkeyPatch
                 ) -> tuple[GatewayService, GatewayHost]:
    host = GatewayHost()

    def dnsmasq(config: DnsmasqConfig) -> FakeDnsmasq:
        instance = FakeDnsmasq(config)
        host.dnsmasqs.append(instance)
        return instance

    monkeypatch.setattr(gateway_module, "DnsmasqInstance", dnsmasq)
    monkeypatch.setattr(gateway_module, "announce",
                        lambda netns, bridge, address, router: host.announced.append(
                            (bridge, address)))
    monkeypatch.setattr(gateway_module, "run_in_netns", lambda netns, action: None)
    service = GatewayService(name, state.view, state.store, links,  # type: ignore[arg-type]
                             config, Refusals(name, status_writer(name, state)),
                             NetworkDns(state.view, lambda: ()))
    return service, host
