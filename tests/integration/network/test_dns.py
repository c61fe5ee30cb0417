"""DNS across managed networks with real dnsmasq (extensions.md §10.2): the networks' DHCP/DNS
servers, the names server and the floating server in one node namespace, guests in their own
namespaces asking over UDP (dnspython), leases from busybox udhcpc.

The forwarding comes from the same rules the gateway uses (`pvcd.domain.dns`); the daemon's
wiring of it is covered by tests/e2e/test_dns.py.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from pvcd.domain.dns import (
    NAMES_SERVER,
    dns_zones,
    floating_forwarding,
    names_forwarding,
    network_forwarding,
)
from pvcd.domain.records import NetworkSpec
from pvcd.drivers.dns_server import DnsServer, DnsServerConfig
from pvcd.drivers.dnsmasq import DnsmasqConfig, DnsmasqInstance
from pvcd.drivers.dnsmasq_dns import HostRecord
from pvcd.drivers.netlink import NetlinkDriver
from tests.dns_client import answers_rcode, ask, resolves

pytestmark = pytest.mark.needs_root

FLOATING, UPSTREAM = "192.0.2.10", "192.0.2.53"


def spec(vni: int, domain: str | None) -> NetworkSpec:
    return NetworkSpec(vni, f"net{vni}", "managed", domain, f"10.{vni}.0.0/24", f"10.{vni}.0.1",
                       True, f"10.{vni}.0.50", f"10.{vni}.0.99")


class Cluster:
    """The primary's namespace: a bridge per network, the floating address, an upstream."""

    def __init__(self, net, netns, state_root: Path) -> None:
        self.net = net
        self.node = netns("dns")
        self.state_root = state_root
        self.specs: dict[int, NetworkSpec] = {}
        self.dnsmasq: dict[int, DnsmasqInstance] = {}
        self.clients: dict[str, str] = {}
        self.upstream: tuple[str, ...] = (UPSTREAM,)
        self._netns = netns
        self._processes: list[subprocess.Popen[bytes]] = []
        with NetlinkDriver(self.node) as links:
            links.ensure_bridge("ext0", 1500)  # the cluster network: floating IP, upstream
            links.ensure_address("ext0", f"{FLOATING}/24")
            links.ensure_address("ext0", f"{UPSTREAM}/24")
        # an upstream resolver that knows one name (the rest of the world)
        self._processes.append(subprocess.Popen(
            ["ip", "netns", "exec", self.node, "dnsmasq", "--conf-file=/dev/null",
             "--no-resolv", "--no-hosts", "--keep-in-foreground", "--bind-interfaces",
             f"--listen-address={UPSTREAM}", "--address=/upstream.test/198.51.100.7"],
            stderr=subprocess.DEVNULL))
        net.in_ns(self.node, "ip", "link", "set", "lo", "up")  # (the names server is on lo)
        self.vm_names: list[HostRecord] = []
        self.names = DnsServer(DnsServerConfig(
            "names", (NAMES_SERVER,), state_root / "names", self.node, user="root"))
        self.floating = DnsServer(DnsServerConfig(
            "floating", (FLOATING,), state_root / "floating", self.node, user="root"))

    def add_network(self, vni: int, domain: str | None) -> None:
        with NetlinkDriver(self.node) as links:
            links.ensure_bridge(f"vmbr{vni}", 1500)
            links.ensure_address(f"vmbr{vni}", f"10.{vni}.0.1/24")
        self.specs[vni] = spec(vni, domain)
        self.dnsmasq[vni] = DnsmasqInstance(DnsmasqConfig(
            interface=f"vmbr{vni}", state_dir=self.state_root / str(vni), netns=self.node,
            domain=domain, ip4_network=f"10.{vni}.0.0/24", ip4_gateway=f"10.{vni}.0.1",
            dhcp4_start=f"10.{vni}.0.50", dhcp4_end=f"10.{vni}.0.99", user="root",
            dns_files=True))
        self.publish()
        self.dnsmasq[vni].start()

    def publish(self) -> None:
        """What the gateway's reconcile does for each network, and the "dns" service."""
        zones = dns_zones(self.specs.values())
        for vni, instance in self.dnsmasq.items():
            forwarding = network_forwarding(vni, self.specs[vni].domain, zones, self.upstream)
            if instance.dns_files().set_forwarding(forwarding):
                instance.reload()
        self.names.serve(names_forwarding(zones), self.vm_names)
        self.floating.serve(floating_forwarding(zones))

    def guest(self, vni: int, name: str, mac: str, hostname: str | None = None) -> str:
        """A guest namespace on vmbr<vni> that leased an address (configured on its eth0)."""
        client = self._netns(name)
        self.net.veth(self.node, f"tap{name}", client, "eth0", mac_b=mac)
        with NetlinkDriver(self.node) as links:
            links.ensure_port(f"vmbr{vni}", f"tap{name}")
        argv = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1",
                "-s", "/bin/true"] + (["-x", f"hostname:{hostname}"] if hostname else [])
        output = self.net.in_ns(client, *argv, timeout=30)
        found = re.search(r"lease of (\S+) obtained", output.stdout + output.stderr)
        assert found, output.stdout + output.stderr
        self.net.sh("ip", "-n", client, "addr", "add", f"{found.group(1)}/24", "dev", "eth0")
        self.clients[name] = found.group(1)
        return client

    def close(self) -> None:
        self.names.stop()
        self.floating.stop()
        for instance in self.dnsmasq.values():
            instance.stop()
        for process in self._processes:
            process.terminate()
            process.wait(5)


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def cluster(net, netns, state_root):
    made = Cluster(net, netns, state_root)
    yield made
    made.close()


def test_names_resolve_across_networks_and_on_the_floating_address(cluster) -> None:
    cluster.add_network(100, "net100.test")
    cluster.add_network(200, "net200.test")
    a = cluster.guest(100, "ga", "52:54:00:dd:00:01", hostname="alpha")
    started = time.monotonic()
    b = cluster.guest(200, "gb", "52:54:00:dd:00:02", hostname="beta")
    beta = cluster.clients["gb"]
    took = resolves(a, "10.100.0.1", "beta.net200.test", beta)
    print(f"new lease → resolves from the other network: {time.monotonic() - started:.3f} s "
          f"after udhcpc began (poll {took:.3f} s)")
    assert resolves(a, "10.100.0.1", beta, "beta.net200.test", rdtype="PTR") < 1.0
    assert resolves(b, "10.200.0.1", "alpha.net100.test", cluster.clients["ga"]) < 1.0
    assert ask(a, "10.100.0.1", "beta.net200.test").ttls == (0,)  # TTL ≤ 60 s

    # the floating address: the managed names and reverse zones, nothing else
    assert resolves(cluster.node, FLOATING, "beta.net200.test", beta) < 1.0
    assert resolves(cluster.node, FLOATING, beta, "beta.net200.test", rdtype="PTR") < 1.0
    assert ask(cluster.node, FLOATING, "www.upstream.test").rcode == "REFUSED"
    # a guest's resolver recurses through the upstream servers ...
    assert resolves(a, "10.100.0.1", "www.upstream.test", "198.51.100.7") < 1.0
    # ... but never for the managed networks' reverse zones, answered locally
    assert ask(a, "10.100.0.1", "10.100.0.77", "PTR").rcode == "NXDOMAIN"
    assert ask(a, "10.100.0.1", "nobody.net200.test").rcode == "NXDOMAIN"

    # without upstream servers, other names are REFUSED (no restart: the leases stay)
    pid = cluster.dnsmasq[100].pid
    cluster.upstream = ()
    cluster.publish()
    assert answers_rcode(a, "10.100.0.1", "www.upstream.test", "REFUSED") < 1.0
    assert cluster.dnsmasq[100].pid == pid
    assert [le.ip for le in cluster.dnsmasq[100].leases()] == [cluster.clients["ga"]]


def test_vm_names_come_and_go_beside_the_guests_own_name(cluster) -> None:
    cluster.add_network(100, "net100.test")
    cluster.add_network(200, "net200.test")
    a = cluster.guest(100, "ga", "52:54:00:dd:00:01")
    cluster.guest(200, "gb", "52:54:00:dd:00:02", hostname="beta")
    cluster.guest(200, "gn", "52:54:00:dd:00:03")  # sends no host name
    beta, nameless = cluster.clients["gb"], cluster.clients["gn"]
    started = time.monotonic()
    cluster.vm_names = [HostRecord(beta, ("vm-b.net200.test",)),
                        HostRecord(nameless, ("vm-n.net200.test",))]
    cluster.publish()
    resolves(a, "10.100.0.1", "vm-b.net200.test", beta)
    print(f"VM name written → resolves from the other network: "
          f"{time.monotonic() - started:.3f} s")
    assert resolves(a, "10.100.0.1", "beta.net200.test", beta) < 1.0  # the guest's name stays
    assert resolves(a, "10.100.0.1", "vm-n.net200.test", nameless) < 1.0
    assert resolves(a, "10.100.0.1", nameless, "vm-n.net200.test", rdtype="PTR") < 1.0
    assert resolves(cluster.node, FLOATING, "vm-b.net200.test", beta) < 1.0
    # the leases keep the names the guests sent (none for one of them)
    assert wait_for(lambda: sorted((le.mac, le.hostname or "")
                                   for le in cluster.dnsmasq[200].leases()) ==
                    [("52:54:00:dd:00:02", "beta"), ("52:54:00:dd:00:03", "")])
    # removed names vanish; the guest's stays
    cluster.vm_names = []
    cluster.publish()
    assert answers_rcode(a, "10.100.0.1", "vm-b.net200.test", "NXDOMAIN") < 1.0
    assert ask(a, "10.100.0.1", "beta.net200.test").values == (beta,)


def test_a_guest_cannot_take_a_static_leases_name(cluster) -> None:
    cluster.add_network(100, "net100.test")
    cluster.add_network(200, "net200.test")
    a = cluster.guest(100, "ga", "52:54:00:dd:00:01")
    # the gateway writes the static names to the network's own hosts directory
    cluster.dnsmasq[200].dns_files().set_names([HostRecord("10.200.0.10",
                                                           ("fixed.net200.test",))])
    assert resolves(a, "10.100.0.1", "fixed.net200.test", "10.200.0.10") < 1.0
    cluster.guest(200, "gc", "52:54:00:dd:00:03", hostname="fixed")
    assert wait_for(lambda: len(cluster.dnsmasq[200].leases()) == 1)
    assert ask(a, "10.100.0.1", "fixed.net200.test").values == ("10.200.0.10",)


def test_adding_and_renaming_a_network_needs_no_restart_of_the_others(cluster) -> None:
    cluster.add_network(100, "net100.test")
    a = cluster.guest(100, "ga", "52:54:00:dd:00:01", hostname="alpha")
    pid = cluster.dnsmasq[100].pid
    started = time.monotonic()
    cluster.add_network(200, "net200.test")
    cluster.guest(200, "gb", "52:54:00:dd:00:02", hostname="beta")
    resolves(a, "10.100.0.1", "beta.net200.test", cluster.clients["gb"])
    print(f"network added → its names resolve elsewhere: {time.monotonic() - started:.3f} s "
          "(including its dnsmasq start and a DHCP exchange)")
    # re-domained: the new name answers, the old one does not
    cluster.specs[200] = spec(200, "renamed.test")
    cluster.dnsmasq[200].stop()  # (the gateway restarts only the re-domained network's)
    cluster.dnsmasq[200] = DnsmasqInstance(
        DnsmasqConfig(**{**cluster.dnsmasq[200].config.__dict__, "domain": "renamed.test"}))
    cluster.publish()
    cluster.dnsmasq[200].start()
    started = time.monotonic()
    resolves(a, "10.100.0.1", "beta.renamed.test", cluster.clients["gb"])
    print(f"network re-domained → resolves: {time.monotonic() - started:.3f} s")
    assert ask(a, "10.100.0.1", "beta.net200.test").rcode == "REFUSED"  # (upstream: no such)
    assert cluster.dnsmasq[100].pid == pid
    assert [le.ip for le in cluster.dnsmasq[100].leases()] == [cluster.clients["ga"]]
