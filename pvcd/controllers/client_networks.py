"""The client-network subsystem of a node daemon: interfaces, ACLs, gateways, DHCP and DNS.

One builder for the composition root (`pvcd.daemon`): the interfaces and the ACL chains of every
client network on every node, and on a coordinator the gateways and dnsmasq that act while it is
primary, and its DNS servers (`dns_service`). A node with neither an
underlay (VXLAN) nor an uplink (vLAN) configured carries no client networks at all.
"""

from __future__ import annotations

import logging

from pvcd.config import NetworkDriverSection, NetworksSection
from pvcd.controllers.base import Wiring
from pvcd.controllers.dns import NetworkDns, upstream_source
from pvcd.controllers.dns_service import build_dns_service
from pvcd.controllers.firewall import build_firewall
from pvcd.controllers.gateway import build_gateways
from pvcd.controllers.network import build_interfaces
from pvcd.controllers.node import NodeStatusWriter
from pvcd.drivers.netlink import NetlinkDriver
from pvcd.drivers.nftables import NftablesDriver
from pvcd.state.store import Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)


def build_networks(node: str, view: ClusterView, store: Store, writer: NodeStatusWriter,
                   config: NetworkDriverSection, coordinator: bool,
                   links: NetlinkDriver | None = None,
                   nft: NftablesDriver | None = None,
                   networks: NetworksSection | None = None) -> Wiring:
    """Everything client networks need on `node`; `links` and `nft` default to the host's
    drivers in `config.netns`; `networks` (the host networks: floating addresses, DNS
    upstream servers) to none."""
    if config.underlay_device is None and config.uplink_device is None:
        log.info("event=networks-disabled node=%s reason=no-underlay-or-uplink", node)
        return Wiring()
    links = links or NetlinkDriver(config.netns)
    wiring = build_interfaces(node, view, links, config, writer)
    wiring.extend(build_firewall(node, view, nft or NftablesDriver(config.netns),
                                 config.resync_interval, writer))
    if coordinator:
        networks = networks or NetworksSection()
        dns = NetworkDns(view, upstream_source(networks.dns.upstream_servers))
        wiring.extend(build_gateways(node, view, store, links, config, writer, dns))
        wiring.extend(build_dns_service(view, dns, networks, config))
    return wiring
