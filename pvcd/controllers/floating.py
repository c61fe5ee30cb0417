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
