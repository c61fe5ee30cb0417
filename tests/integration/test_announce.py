"""Gratuitous ARP and unsolicited NA really move a neighbour's cache entry (real namespaces).

Three namespaces on one bridge: a client, an old holder and a new holder of an address. The
client learns the old holder's MAC, the address moves, `announce()` runs on the new holder, and
the client's neighbour entry must now show the new MAC without any traffic from the client.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from pvcd.drivers.announce import announce

pytestmark = pytest.mark.needs_root


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout


@pytest.fixture
def link() -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:6]
    names = {k: f"pvct-{tag}-{k}" for k in ("sw", "client", "old", "new")}
    try:
        for ns in names.values():
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", names["sw"], "link", "add", "br0", "type", "bridge")
        ip("-n", names["sw"], "link", "set", "br0", "up")
        for role in ("client", "old", "new"):
            ip("-n", names["sw"], "link", "add", f"p-{role}", "type", "veth", "peer", "name",
               "eth0", "netns", names[role])
            ip("-n", names["sw"], "link", "set", f"p-{role}", "master", "br0", "up")
            ip("-n", names[role], "link", "set", "eth0", "up")
        yield names
    finally:
        for ns in names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10,
                           check=False)


def mac_of(ns: str) -> str:
    return str(json.loads(ip("-n", ns, "-j", "link", "show", "eth0"))[0]["address"])


def neighbour(ns: str, address: str) -> str | None:
    for entry in json.loads(ip("-n", ns, "-j", "neigh", "show", address) or "[]"):
        return entry.get("lladdr")
    return None


@pytest.mark.parametrize("client_addr,moving,prefix", [
    ("10.77.0.1", "10.77.0.9", "24"),
    ("fd77::1", "fd77::9", "64"),
])
def test_announce_moves_the_neighbour_entry(link: dict[str, str], client_addr: str,
                                            moving: str, prefix: str) -> None:
    client, old, new = link["client"], link["old"], link["new"]
    nodad = ["nodad"] if ":" in moving else []
    ip("-n", client, "addr", "add", f"{client_addr}/{prefix}", "dev", "eth0", *nodad)
    ip("-n", old, "addr", "add", f"{moving}/{prefix}", "dev", "eth0", *nodad)
    ping = ["ip", "netns", "exec", client, "ping", "-c", "1", "-W", "2", moving]
    assert subprocess.run(ping, capture_output=True, timeout=10, check=False).returncode == 0
    assert neighbour(client, moving) == mac_of(old)
    # the address moves: off the old holder, onto the new one, announced from there
    ip("-n", old, "addr", "del", f"{moving}/{prefix}", "dev", "eth0")
    ip("-n", new, "addr", "add", f"{moving}/{prefix}", "dev", "eth0", *nodad)
    announce(new, "eth0", moving)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and neighbour(client, moving) != mac_of(new):
        time.sleep(0.01)
    assert neighbour(client, moving) == mac_of(new)
