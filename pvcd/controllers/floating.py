"""The floating IPs: held by the primary, announced at once, released before a handover.

A primary service (`PrimaryServices`): `start` puts each configured floating address (cluster,
and upstream when set) on its device — inside the node's network namespace in the lab — and
broadcasts a gratuitous ARP so that clients and switches follow within milliseconds instead of
after their ARP caches expire; `stop` removes the addresses. The coordinator stops the old
primary's services before the new primary starts its own, so an address is never on two nodes.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from pvcd.config import NetworksSection
from pvcd.controllers.base import PrimaryService, Wiring
from pvcd.drivers.announce import announce
from pvcd.drivers.netlink import NetlinkDriver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FloatingIp:
    device: str
    cidr: str  # e.g. 10.0.0.254/24

    @property
    def address(self) -> str:
        return str(ipaddress.ip_interface(self.cidr).ip)


class FloatingIps:
    def __init__(self, addresses: list[FloatingIp], links: NetlinkDriver,
                 netns: str | None) -> None:
        self.addresses = addresses
        self.links = links
        self.netns = netns

    def start(self) -> None:
        for floating in self.addresses:
            self.links.ensure_address(floating.device, floating.cidr)
            announce(self.netns, floating.device, floating.address)
            log.info("event=floating-ip-up device=%s address=%s", floating.device, floating.cidr)

    def stop(self) -> None:
        for floating in self.addresses:
            try:
                self.links.remove_address(floating.device, floating.cidr)
                log.info("event=floating-ip-down device=%s address=%s", floating.device,
                         floating.cidr)
            except Exception as exc:  # must not stop the rest of the handover
                log.error("event=floating-ip-down-failed device=%s address=%s error=%r",
                          floating.device, floating.cidr, exc)


def build_floating_ips(networks: NetworksSection, netns: str | None,
                       links: NetlinkDriver | None = None) -> Wiring:
    """The "floating-ip" primary service for the cluster (and upstream) network's configured
    floating address; nothing when none is configured."""
    addresses = [FloatingIp(net.device, net.floating_ip)
                 for net in (networks.cluster, networks.upstream)
                 if net is not None and net.device and net.floating_ip]
    if not addresses:
        return Wiring()
    floating = FloatingIps(addresses, links or NetlinkDriver(netns), netns)
    return Wiring(services=[PrimaryService("floating-ip", floating.start, floating.stop)])
