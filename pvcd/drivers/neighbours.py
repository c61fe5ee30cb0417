"""The kernel's neighbour (ARP) table of one network namespace: whom an address really is.

The metadata service (extensions.md §4) identifies a guest by its source address. That address
is only a claim; the neighbour entry is what the host itself resolved it to when it answered
the guest's TCP handshake (the SYN-ACK went to that MAC). `mac_of` returns it, so a guest that
took another guest's address is told apart by its own MAC.

Threading: pyroute2's synchronous `IPRoute` runs a private asyncio loop and fails inside a
running one, so call this from a worker thread, never from an event loop. Calls are serialized
by a lock; one netlink socket is kept open (made again after a socket error).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from typing import TYPE_CHECKING

from pvcd.domain.errors import BackendError, NotFound
from pvcd.drivers.ifnames import check_ifname, check_netns
from pvcd.drivers.rtnl import netlink_error, open_iproute

if TYPE_CHECKING:
    from pyroute2 import IPRoute

_ENOENT = 2
# NUD states whose link-layer address is one the kernel uses to send: reachable, stale, delay,
# probe, noarp, permanent (not incomplete, failed or none)
RESOLVED_STATES = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80


class NeighbourTable:
    """IPv4 neighbour lookups in `netns` (None: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        if netns is not None:
            check_netns(netns)
        self.netns = netns
        self._lock = threading.Lock()
        self._ipr: IPRoute | None = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def mac_of(self, device: str, address: str) -> str | None:
        """The lower-case MAC the kernel resolved IPv4 `address` to on `device`, or None when
        it has no resolved entry (or the device is gone)."""
        check_ifname(device)
        target = str(ipaddress.IPv4Address(address))
        with self._lock:
            try:
                ipr = self._open()
                found = ipr.link_lookup(ifname=device)
                if not found:
                    return None
                entries = ipr.neigh("get", dst=target, ifindex=found[0], family=socket.AF_INET)
            except netlink_error() as exc:
                if exc.code == _ENOENT:
                    return None
                raise BackendError(f"netlink: neighbour {target} on {device}: {exc}") from exc
            except OSError as exc:  # the socket itself failed: a fresh one next time
                self._close()
                raise BackendError(f"netlink socket (netns {self.netns or '-'}): {exc}") from exc
        for entry in entries:
            mac = entry.get_attr("NDA_LLADDR")
            if entry["state"] & RESOLVED_STATES and isinstance(mac, str):
                return mac.lower()
        return None

    def _open(self) -> IPRoute:
        if self._ipr is None:
            if self.netns is not None and not os.path.exists(f"/run/netns/{self.netns}"):
                raise NotFound(f"network namespace {self.netns} does not exist")
            self._ipr = open_iproute(self.netns)
        return self._ipr
