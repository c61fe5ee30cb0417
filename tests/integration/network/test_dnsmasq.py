"""A real dnsmasq per network, with busybox udhcpc as the DHCP client, in throw-away namespaces."""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pvcd.domain.errors import InvalidValue
from pvcd.drivers.dnsmasq import DnsmasqConfig, DnsmasqInstance, Lease, StaticLease
from pvcd.drivers.dnsmasq_leasehook import guest_hostname
from pvcd.drivers.netlink import NetlinkDriver

pytestmark = pytest.mark.needs_root

CLIENT_MAC = "52:54:00:aa:00:01"


@pytest.fixture
def gateway(net, netns):
    """A node namespace with vmbr100 (gateway 10.100.0.1/24) and a client namespace on it."""
    node, client = netns("gw"), netns("cl")
    with NetlinkDriver(node) as links:
        links.ensure_bridge("vmbr100", 1500)
        links.ensure_address("vmbr100", "10.100.0.1/24")  # before dnsmasq starts
        net.veth(node, "tap1", client, "eth0", mac_b=CLIENT_MAC)
        links.ensure_port("vmbr100", "tap1")
    return node, client


@pytest.fixture
def instance(gateway, state_root: Path):
    node, _client = gateway
    dnsmasq = DnsmasqInstance(
        DnsmasqConfig(
            interface="vmbr100",
            state_dir=state_root / "net100",
            netns=node,
            domain="net100.test",
            ip4_network="10.100.0.0/24",
            ip4_gateway="10.100.0.1",
            dhcp4_start="10.100.0.50",
            dhcp4_end="10.100.0.99",
        )
    )
    yield dnsmasq
    dnsmasq.stop()


def dhcp(net, client: str, mac: str | None = None, hostname: str | bytes | None = None) -> str:
    """Ask for a lease with busybox udhcpc (it only reports; `-s /bin/true` configures nothing).
    A `hostname` given as bytes is sent as option 12 byte for byte."""
    if mac is not None:
        net.sh("ip", "-n", client, "link", "set", "eth0", "address", mac)
    argv = [
        "busybox",
        "udhcpc",
        "-i",
        "eth0",
        "-f",
        "-q",
        "-n",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        "/bin/true",
    ]
    if isinstance(hostname, bytes):
        argv += ["-x", f"0x0c:{hostname.hex()}"] if hostname else []
    elif hostname:
        argv += ["-x", f"hostname:{hostname}"]
    output = net.in_ns(client, *argv, timeout=30)
    found = re.search(r"lease of (\S+) obtained", output.stdout + output.stderr)
    assert found, f"no lease: {output.stdout} {output.stderr}"
    return found.group(1)


def wait_for(predicate, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_client_gets_a_lease_from_the_range(net, gateway, instance) -> None:
    _node, client = gateway
    started = time.monotonic()
    instance.start()
    print(f"dnsmasq start: {(time.monotonic() - started) * 1000:.1f} ms")
    assert instance.running()

    started = time.monotonic()
    address = dhcp(net, client, hostname="vm1")
    print(f"DHCP discover..ack: {(time.monotonic() - started) * 1000:.1f} ms")
    assert 50 <= int(address.rsplit(".", 1)[1]) <= 99

    def leased() -> bool:
        return any(le.ip == address for le in instance.leases())

    print(f"lease visible in leases() after the ACK: {wait_for(leased) * 1000:.1f} ms")
    (lease,) = instance.leases()
    assert lease.mac == CLIENT_MAC and lease.hostname == "vm1"
    assert time.time() + 3000 < lease.expires <= time.time() + 3600 + 5


def test_a_static_lease_is_honoured_without_restart(net, gateway, instance) -> None:
    _node, client = gateway
    instance.start()
    pid = instance.pid
    instance.set_static_leases([StaticLease("52:54:00:AA:00:02", "10.100.0.10", "fixed")])
    assert instance.static_leases() == [StaticLease("52:54:00:aa:00:02", "10.100.0.10", "fixed")]
    assert dhcp(net, client, mac="52:54:00:aa:00:02") == "10.100.0.10"

    # a changed reservation needs dnsmasq to forget the old one: SIGHUP, still no restart
    instance.set_static_leases([StaticLease("52:54:00:aa:00:02", "10.100.0.11", "fixed")])
    assert dhcp(net, client, mac="52:54:00:aa:00:02") == "10.100.0.11"
    assert instance.pid == pid
    wait_for(
        lambda: any(le.ip == "10.100.0.11" and le.hostname == "fixed" for le in instance.leases())
    )

    with pytest.raises(InvalidValue):
        instance.set_static_leases([StaticLease("52:54:00:aa:00:03", "10.200.0.1")])
    with pytest.raises(InvalidValue):
        instance.set_static_leases([StaticLease("not-a-mac", "10.100.0.12")])
    with pytest.raises(InvalidValue):
        instance.set_static_leases([StaticLease("52:54:00:aa:00:03", "10.100.0.12", "a b")])
    with pytest.raises(InvalidValue):
        instance.set_static_leases(
            [
                StaticLease("52:54:00:aa:00:03", "10.100.0.12"),
                StaticLease("52:54:00:aa:00:03", "10.100.0.13"),
            ]
        )


def test_supervise_restarts_a_dead_dnsmasq(net, gateway, instance) -> None:
    _node, client = gateway
    instance.start()
    address = dhcp(net, client)
    wait_for(lambda: len(instance.leases()) == 1)
    assert instance.supervise() is False

    os.kill(instance.pid, signal.SIGKILL)
    wait_for(lambda: not instance.running())
    started = time.monotonic()
    assert instance.supervise() is True
    print(f"supervise() restart: {(time.monotonic() - started) * 1000:.1f} ms")
    assert instance.running() and instance.restarts == 1
    # the lease came back through the hook's `init`, so the client keeps its address
    assert [le.ip for le in instance.leases()] == [address]
    assert dhcp(net, client) == address


def test_known_leases_are_handed_to_dnsmasq_at_start(net, gateway, instance) -> None:
    _node, client = gateway
    known = Lease(mac="52:54:00:aa:00:09", ip="10.100.0.77", hostname="old", expires=0)
    instance.set_known_leases([known])
    instance.start()
    assert dhcp(net, client, mac="52:54:00:aa:00:09") == "10.100.0.77"
    assert [le.ip for le in instance.leases()] == ["10.100.0.77"]


def test_stop_leaves_no_process(gateway, instance) -> None:
    instance.start()
    assert len(instance.processes()) == 2  # dnsmasq and its root script helper
    instance.stop()
    assert not instance.running()
    wait_for(lambda: instance.processes() == [])
    instance.stop()  # already stopped: no error


def test_start_replaces_an_orphaned_dnsmasq(gateway, instance) -> None:
    instance.start()
    orphan = DnsmasqInstance(instance.config)  # as if a crashed pvcd had left one behind
    orphan.start()
    assert orphan.running() and not instance.running()
    orphan.stop()


def test_two_networks_in_one_namespace(net, gateway, state_root: Path, instance) -> None:
    node, _client = gateway
    with NetlinkDriver(node) as links:
        links.ensure_bridge("vmbr200", 1500)
        links.ensure_address("vmbr200", "10.200.0.1/24")
        links.ensure_address("vmbr200", "fd00:200::1/64")
    other = DnsmasqInstance(
        DnsmasqConfig(
            interface="vmbr200",
            state_dir=state_root / "net200",
            netns=node,
            ip4_network="10.200.0.0/24",
            ip4_gateway="10.200.0.1",
            ip6_network="fd00:200::/64",
            ip6_gateway="fd00:200::1",
        )
    )
    instance.start()
    try:
        other.start()
        assert instance.running() and other.running()
        assert "--enable-ra" in other.argv()
    finally:
        other.stop()


def test_config_values_are_validated(state_root: Path) -> None:
    good = DnsmasqConfig(
        interface="vmbr100",
        state_dir=state_root,
        ip4_network="10.0.0.0/24",
        ip4_gateway="10.0.0.1",
        dhcp4_start="10.0.0.10",
        dhcp4_end="10.0.0.20",
    )
    assert "--dhcp-range=10.0.0.10,10.0.0.20,255.255.255.0,3600" in DnsmasqInstance(good).argv()
    bad: list[dict[str, Any]] = [
        {"domain": "bad domain"},
        {"domain": "x;rm -rf"},
        {"ip4_gateway": "10.0.1.1"},
        {"ip4_network": "10.0.0.1/24"},
        {"dhcp4_start": "10.0.0.30"},
        {"dhcp4_end": None},
        {"interface": "a-very-long-interface"},
        {"interface": "vmbr1 --foo"},
        {"ip6_network": "10.0.0.0/24"},
        {"user": "nobody --foo"},
    ]
    for change in bad:
        with pytest.raises(InvalidValue):
            DnsmasqInstance(replace(good, **change))


# host names a guest may send in its DHCP request (option 12), as raw bytes: the ones dnsmasq
# serves (`web_1`, `host-`: a stored one once kept the next primary's dnsmasq from starting)
# and the ones it drops (too long, non-ASCII, empty, spaces, a NUL)
ODD_HOSTNAMES = [b"web_1", b"host-", b"a" * 64, b"b" * 200, "héllo".encode(), "日本".encode(),
                 b"", b"two words", b"nul\x00byte", b"-lead", b"dot.ted"]


def test_odd_guest_host_names_never_keep_the_next_dnsmasq_from_serving(
        net, gateway, instance, state_root: Path) -> None:
    """Every odd name a guest can send is leased and recorded (without the name when dnsmasq
    would not serve it); the next primary's dnsmasq, handed those leases and older stored ones
    with worse names, starts and gives every client its address back."""
    _node, client = gateway
    instance.start()
    addresses = {}
    for index, hostname in enumerate(ODD_HOSTNAMES):
        mac = f"52:54:00:bb:00:{index:02x}"
        addresses[mac] = dhcp(net, client, mac, hostname)
    wait_for(lambda: len(instance.leases()) == len(ODD_HOSTNAMES))
    leases = instance.leases()
    assert {le.mac: le.ip for le in leases} == addresses
    names = {le.hostname for le in leases}
    assert {"web_1", "host-"} <= names
    assert all(name is None or guest_hostname(name) == name for name in names)
    instance.stop()

    # the next primary: the cluster's copy, plus documents an older pvcd stored unchecked
    free = [f"10.100.0.{n}" for n in range(50, 100) if f"10.100.0.{n}" not in
            addresses.values()]  # in the DHCP range, leased to none of the guests above
    stored = [*leases,
              Lease("52:54:00:bb:01:01", free[0], "x" * 70, 0),
              Lease("52:54:00:bb:01:02", free[1], "héllo wörld", 0),
              Lease("52:54:00:bb:01:03", free[2], "", 0),
              Lease("06-52:54:00:bb:01:04", free[3], "ib", 0)]
    successor = DnsmasqInstance(replace(instance.config, state_dir=state_root / "next"))
    successor.set_known_leases(stored)
    successor.start()
    try:
        assert successor.running()
        for index, hostname in enumerate(ODD_HOSTNAMES):
            mac = f"52:54:00:bb:00:{index:02x}"
            assert dhcp(net, client, mac, hostname) == addresses[mac]
        assert dhcp(net, client, mac="52:54:00:bb:01:01") == free[0]  # kept, without its name
    finally:
        successor.stop()
