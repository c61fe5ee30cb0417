"""Guest input on a real lab (issue 13, finding 4): guests of a managed network send DHCP host
names of every odd shape; then the primary hands over, and the new primary's dnsmasq must start
and give every guest its address back.

It once could not: the gateway stored `web_1` (which dnsmasq serves) as reported, and the next
primary refused it when it handed the known leases to its dnsmasq, so that network's DHCP
stopped. Lease documents that an older pvcd stored unchecked (written straight into ZooKeeper
here) must not stop it either.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from pvcd.drivers.dnsmasq_leasehook import guest_hostname
from pvcd.lab import netns
from pvcd.lab.lab import Lab
from pvcd.state.codec import encode
from pvcd.state.schema import Paths
from tests.e2e.labclient import LabClient, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.needs_root]

VNI = 131
# option 12 as raw bytes: names dnsmasq serves and names it drops (too long, non-ASCII,
# empty, with a space or a NUL, leading '-')
ODD_HOSTNAMES = [b"web_1", b"host-", b"a" * 64, b"b" * 200, "héllo".encode(), "日本".encode(),
                 b"", b"two words", b"nul\x00byte", b"-lead"]
# what an older pvcd stored for guests long gone: names no dnsmasq serves, a non-Ethernet MAC
STORED = {"52:54:00:31:01:01": {"ip": "10.131.0.30", "hostname": "x" * 70},
          "52:54:00:31:01:02": {"ip": "10.131.0.31", "hostname": "héllo wörld"},
          "52:54:00:31:01:03": {"ip": "10.131.0.32", "hostname": ""},
          "06-52:54:00:31:01:04": {"ip": "10.131.0.33", "hostname": "ib"}}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabClient]]:
    lab = Lab(tmp_path_factory.mktemp("guest-leases") / "lab")
    info = lab.up(nodes=2, network=True)
    try:
        yield lab, LabClient(info)
    finally:
        lab.down()


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def dhcp(ns: str, hostname: bytes) -> str:
    """A lease whose request carries `hostname` as option 12, byte for byte."""
    argv = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1",
            "-s", "/bin/true"]
    if hostname:
        argv += ["-x", f"0x0c:{hostname.hex()}"]
    out = netns.in_ns(ns, *argv, check=False, timeout=30)
    found = re.search(r"lease of (\S+) obtained", out.stdout + out.stderr)
    assert found, f"no lease: {out.stdout} {out.stderr}"
    return found.group(1)


def dnsmasq_pids(lab: Lab, node: str) -> list[int]:
    ns = lab.network().node_ns(node)
    pids = netns.run("ip", "netns", "pids", ns, check=False).stdout.split()
    found = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq":
                found.append(int(pid))
        except OSError:
            continue
    return found


def gateway_addresses(lab: Lab, node: str) -> list[str]:
    out = netns.run("ip", "-n", lab.network().node_ns(node), "-j", "addr", "show",
                    f"vmbr{VNI}").stdout
    return [a["local"] for a in json.loads(out)[0]["addr_info"] if a.get("scope") == "global"]


def store_old_leases(lab: Lab) -> None:
    """Lease documents as an older pvcd wrote them: unchecked (a plain ZooKeeper client)."""
    info = lab._info()
    paths = Paths(info.zk_root)
    client = KazooClient(hosts=info.zookeeper)
    client.start(timeout=10)
    try:
        for mac, doc in STORED.items():
            client.create(paths.network_lease(VNI, mac),
                          encode({"mac": mac, "expires": 0, **doc}))
    finally:
        client.stop()
        client.close()


def test_odd_guest_host_names_and_a_handover_leave_dhcp_serving(lab) -> None:
    lab, api = lab
    ok(api.post("/network", data={"vni": VNI, "description": f"net{VNI}", "nettype": "managed",
                                  "ip4_network": f"10.{VNI}.0.0/24",
                                  "ip4_gateway": f"10.{VNI}.0.1", "dhcp4": "yes",
                                  "dhcp4_start": f"10.{VNI}.0.50",
                                  "dhcp4_end": f"10.{VNI}.0.99"}))
    primary = api.primary()
    assert primary is not None
    other = next(n.name for n in lab._info().nodes if n.name != primary)
    wait_until(lambda: dnsmasq_pids(lab, primary), timeout=10)

    guests: dict[str, tuple[str, bytes]] = {}  # mac → (namespace, host name sent)
    addresses: dict[str, str] = {}
    for index, hostname in enumerate(ODD_HOSTNAMES):
        mac = f"52:54:00:31:00:{index:02x}"
        ns = lab.network().attach_vm(other, VNI, f"g{VNI}x{index}", mac=mac)
        guests[mac] = (ns, hostname)
        addresses[mac] = dhcp(ns, hostname)

    def reported() -> list[dict[str, Any]]:
        leases = ok(api.get(f"/network/{VNI}/lease"))
        return leases if {le["mac_address"] for le in leases} >= set(guests) else []

    leases = {le["mac_address"]: le for le in wait_until(reported, timeout=10)}
    assert {mac: leases[mac]["ip4_address"] for mac in guests} == addresses
    assert leases["52:54:00:31:00:00"]["hostname"] == "web_1"
    assert leases["52:54:00:31:00:01"]["hostname"] == "host-"
    for lease in leases.values():
        assert lease["hostname"] is None or guest_hostname(lease["hostname"]) == \
            lease["hostname"]

    store_old_leases(lab)
    started = time.monotonic()
    ok(api.post(f"/node/{other}/coordinator-state", data={"coordinator-state": "primary"}))
    wait_until(lambda: api.primary() == other, timeout=15)
    wait_until(lambda: dnsmasq_pids(lab, other) and f"10.{VNI}.0.1" in
               gateway_addresses(lab, other), timeout=10)
    print(f"handover → new primary's dnsmasq serving: {time.monotonic() - started:.2f} s")
    assert dnsmasq_pids(lab, primary) == []
    for mac, (ns, hostname) in guests.items():  # every guest gets its address back
        assert dhcp(ns, hostname) == addresses[mac]

    # the stored documents with bad names were handed over without their names (or dropped)
    def cleaned() -> bool:
        leases = ok(api.get(f"/network/{VNI}/lease"))
        return all(le["hostname"] is None or guest_hostname(le["hostname"]) ==
                   le["hostname"] for le in leases) and \
            "06-52:54:00:31:01:04" not in {le["mac_address"] for le in leases}

    wait_until(cleaned, timeout=10)
    for index in range(len(ODD_HOSTNAMES)):
        lab.network().detach_vm(f"g{VNI}x{index}")
    ok(api.call("DELETE", f"/network/{VNI}"))
