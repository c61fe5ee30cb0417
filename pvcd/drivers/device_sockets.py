"""Listening TCP sockets that accept only what arrives on one network device.

The metadata service (extensions.md §4) must know which client network a request came from,
and must not answer anything else. A listener per bridge with `SO_BINDTODEVICE` lets the
kernel decide: its socket lookup matches a connection to the listener bound to the device the
SYN was received on (for an address on `lo`, the bridge the guest's frame arrived through), so
a request from another network, the cluster network or the host itself finds no listener at all
and is refused by the kernel. Accepted sockets inherit the binding. The alternatives were
weaker: a route or neighbour lookup of the source only says where the *claimed* address lives,
and IP_PKTINFO is not available per TCP connection.

Several listeners share one address and port, each on another device: the kernel allows that
because their bindings differ. The device's index is returned with the socket: a bridge that is
deleted and made again gets a new index, and a listener bound to the old one hears nothing (the
caller compares `device_index` and binds again).

Sockets keep the network namespace they were made in, so they are made on a thread inside the
node's namespace (`run_in_netns`) and served from anywhere afterwards.
"""

from __future__ import annotations

import socket

from pvcd.drivers.ifnames import check_ifname
from pvcd.drivers.netns import run_in_netns

BACKLOG = 128


def device_listener(netns: str | None, device: str, address: str,
                    port: int) -> tuple[socket.socket, int]:
    """A non-blocking listener on `address:port` for connections arriving on `device`, and the
    device's index at bind time. OSError when the device is missing or the port taken."""
    check_ifname(device)

    def make() -> tuple[socket.socket, int]:
        index = socket.if_nametoindex(device)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            sock.bind((address, port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock, index

    return run_in_netns(netns, make)


def device_index(netns: str | None, device: str) -> int | None:
    """The current index of `device` in `netns`, or None when it does not exist."""
    check_ifname(device)

    def lookup() -> int | None:
        try:
            return socket.if_nametoindex(device)
        except OSError:
            return None

    return run_in_netns(netns, lookup)
