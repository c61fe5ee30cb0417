"""DNS across managed networks in a `--netns` lab (extensions.md §10.2): guests in their own
namespaces lease addresses from the primary's dnsmasq (busybox udhcpc) and ask real DNS
questions (dnspython) of their gateway and of the cluster floating IP, before and after a
primary handover. The times are printed against the spec's targets (1 s for a new lease, 2 s
for a network change or a handover); `bench/dns.py` prints the same numbers on their own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from pvcd.lab import netns
from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from pvcd.lab.netns import FLOATING_IP
from tests.dns_client import answers_rcode, ask, resolves
from tests.e2e.labclient import LabClient, wait_until
from tests.e2e.test_networks import NODES, add_network, dhcp, dnsmasq_pids, ok, ping, vm

pytestmark = [pytest.mark.slow, pytest.mark.needs_root]

NEW_LEASE, CHANGE, HANDOVER = 1.0, 2.0, 2.0  # seconds (extensions.md §10.2.5)


@pytest.fixture(scope="module")
def dnslab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabClient]]:
    lab = Lab(tmp_path_factory.mktemp("dnslab") / "lab")
    info = lab.up(nodes=3, network=True)
    try:
        yield lab, LabClient(info)
    finally:
        lab.down()


def guest(lab: Lab, node: str, vni: int, name: str, mac: str,
          hostname: str | None = None) -> tuple[str, str]:
    """A guest namespace on network `vni` with a lease (configured on its eth0)."""
    ns = vm(lab, node, vni, name, mac=mac)
    address = dhcp(ns, hostname=hostname)
    netns.run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    return ns, address


def define_vm(api: LabClient, name: str, mac: str, bridge: str) -> None:
    nic = (f"    <interface type='bridge'><mac address='{mac}'/><source bridge='{bridge}'/>"
           "<model type='virtio'/></interface>\n")
    xml = tiny_guest_xml(name).replace("  </devices>\n", nic + "  </devices>\n")
    ok(api.post("/vm", data={"xml": xml, "node": "node1"}))


def first_answers(questions: dict[str, tuple[str, str, str]], expected: str, since: float,
                  timeout: float = 10.0) -> dict[str, float]:
    """Seconds from `since` until each question (namespace, server, name) first answers
    `expected`, all asked in turn until every one has."""
    took: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(took) < len(questions) and time.monotonic() < deadline:
        for what, (ns, server, name) in questions.items():
            if what not in took and expected in ask(ns, server, name, timeout=0.2).values:
                took[what] = time.monotonic() - since
    assert len(took) == len(questions), f"never answered: {set(questions) - set(took)}"
    return took


# How much later than its target a change may show here before the test fails: the test proves
# that names follow every change; bench/dns.py measures how fast (on a quiet machine). A loaded
# CI machine delays every process of the lab, so the targets themselves are not asserted.
SLACK = 3.0


def report(what: str, took: float, target: float, limit: float | None = None) -> None:
    print(f"{what}: {took:.3f} s (target {target:.0f} s)")
    limit = SLACK * (target if limit is None else limit)
    assert took < limit, f"{what} took {took:.3f} s, more than {limit:.3f} s"


def test_names_resolve_across_networks_and_on_the_floating_ip_across_a_handover(
        dnslab: tuple[Lab, LabClient]) -> None:
    lab, api = dnslab
    for vni in (161, 162):
        add_network(api, vni, lab, domain=f"net{vni}.test", dhcp4="yes",
                    dhcp4_start=f"10.{vni}.0.50", dhcp4_end=f"10.{vni}.0.99")
    primary = api.primary()
    assert primary is not None
    other = next(n for n in NODES if n != primary)
    wait_until(lambda: len(dnsmasq_pids(lab, primary)) == 2, timeout=10)
    a, alpha = guest(lab, other, 161, "dns-a", "52:54:00:16:01:01", hostname="alpha")
    client = lab.network().add_client("dnsq", index=201)  # a machine on the cluster network
    define_vm(api, "webvm", "52:54:00:16:02:01", "vmbr162")
    started = time.monotonic()
    b, beta = guest(lab, other, 162, "dns-b", "52:54:00:16:02:01", hostname="beta")
    leased = time.monotonic()
    print(f"  (DHCP exchange itself: {leased - started:.3f} s)")
    took = first_answers({
        "new lease → its name from another network": (a, "10.161.0.1", "beta.net162.test"),
        "new lease → its VM's name from another network": (a, "10.161.0.1",
                                                           "webvm.net162.test"),
        "new lease → its name on the floating IP": (client, FLOATING_IP, "beta.net162.test"),
        "new lease → its VM's name on the floating IP": (client, FLOATING_IP,
                                                         "webvm.net162.test"),
    }, beta, leased)
    for what, seconds in took.items():
        report(what, seconds, NEW_LEASE)
    assert resolves(a, "10.161.0.1", beta, "beta.net162.test", rdtype="PTR") < NEW_LEASE
    assert resolves(b, "10.162.0.1", "alpha.net161.test", alpha) < NEW_LEASE
    assert all(ttl <= 60 for ttl in ask(a, "10.161.0.1", "beta.net162.test").ttls)
    # no upstream servers in the lab: other names are refused, not recursed
    assert ask(a, "10.161.0.1", "www.example.com").rcode == "REFUSED"

    # the floating IP: managed names, no recursion
    assert resolves(client, FLOATING_IP, alpha, "alpha.net161.test", rdtype="PTR") < NEW_LEASE
    assert ask(client, FLOATING_IP, "www.example.com").rcode == "REFUSED"
    assert ask(client, FLOATING_IP, "nobody.net161.test").rcode == "NXDOMAIN"

    # handover: the new primary answers all of it again
    pids = dnsmasq_pids(lab, primary)
    started = time.monotonic()
    ok(api.post(f"/node/{other}/coordinator-state", data={"coordinator-state": "primary"}))
    wait_until(lambda: dnsmasq_pids(lab, primary) != pids, timeout=10, interval=0.01)
    print(f"  old primary's dnsmasq changed: {time.monotonic() - started:.3f} s")
    wait_until(lambda: len(dnsmasq_pids(lab, other)) == 2, timeout=10, interval=0.01)
    print(f"  new primary's dnsmasq up: {time.monotonic() - started:.3f} s")
    wait_until(lambda: ping(a, "10.161.0.1", wait=0.2), timeout=10, interval=0.01)
    gateway_back = time.monotonic() - started
    print(f"  gateway pings: {gateway_back:.3f} s")
    # DNS must follow the gateway (whose handover is the coordinator's and the gateway
    # service's, tests/e2e/test_networks.py): within the target, or at once after the gateway
    # when a loaded machine made the gateway itself late
    limit = max(HANDOVER, gateway_back + 0.5)
    resolves(a, "10.161.0.1", "beta.net162.test", beta, timeout=10, interval=0.01)
    report("handover → a guest's gateway answers another network's name",
           time.monotonic() - started, HANDOVER, limit)
    resolves(a, "10.161.0.1", "webvm.net162.test", beta, timeout=10, interval=0.01)
    report("handover → a VM's name", time.monotonic() - started, HANDOVER, limit)
    resolves(client, FLOATING_IP, "beta.net162.test", beta, timeout=10, interval=0.01)
    report("handover → the floating IP answers", time.monotonic() - started, HANDOVER, limit)
    assert dnsmasq_pids(lab, primary) == []
    assert ask(client, FLOATING_IP, "www.example.com").rcode == "REFUSED"


def test_adding_redomaining_and_removing_a_network_reaches_the_others(
        dnslab: tuple[Lab, LabClient]) -> None:
    lab, api = dnslab
    add_network(api, 171, lab, domain="net171.test", dhcp4="yes",
                dhcp4_start="10.171.0.50", dhcp4_end="10.171.0.99")
    primary = api.primary()
    assert primary is not None
    other = next(n for n in NODES if n != primary)
    a, gamma = guest(lab, other, 171, "dns-c", "52:54:00:17:01:01", hostname="gamma")
    wait_until(lambda: ok(api.get("/network/net171/lease")), timeout=5)
    leases = ok(api.get("/network/net171/lease"))
    pids = dnsmasq_pids(lab, primary)

    started = time.monotonic()
    ok(api.post("/network", data={"vni": 172, "description": "net172", "nettype": "managed",
                                  "domain": "net172.test", "ip4_network": "10.172.0.0/24",
                                  "ip4_gateway": "10.172.0.1"}))
    ok(api.post("/network/net172/lease", data={"macaddress": "52:54:00:17:02:01",
                                               "ipaddress": "10.172.0.10",
                                               "hostname": "fixed"}))
    # (its own gateway first, asked from the primary's namespace: its dnsmasq starting is the
    # gateway's part; the other networks must follow at once)
    primary_ns = lab.network().node_ns(primary)
    resolves(primary_ns, "10.172.0.1", "fixed.net172.test", "10.172.0.10", timeout=5,
             interval=0.01)
    own = time.monotonic() - started
    resolves(a, "10.171.0.1", "fixed.net172.test", "10.172.0.10", timeout=5, interval=0.01)
    report("network added → its names from another network", time.monotonic() - started,
           CHANGE, max(CHANGE, own + 0.5))
    print(f"  (its own gateway answered after {own:.3f} s)")

    started = time.monotonic()
    ok(api.call("PUT", "/network/net172", data={"domain": "renamed172.test"}))
    resolves(primary_ns, "10.172.0.1", "fixed.renamed172.test", "10.172.0.10", timeout=5,
             interval=0.01)
    own = time.monotonic() - started
    resolves(a, "10.171.0.1", "fixed.renamed172.test", "10.172.0.10", timeout=5,
             interval=0.01)
    report("network re-domained → its new names", time.monotonic() - started, CHANGE,
           max(CHANGE, own + 0.5))
    print(f"  (its own gateway, restarted with the new domain, answered after {own:.3f} s)")
    assert ask(a, "10.171.0.1", "fixed.net172.test").rcode == "REFUSED"

    started = time.monotonic()
    ok(api.call("DELETE", "/network/net172"))
    answers_rcode(a, "10.171.0.1", "fixed.renamed172.test", "REFUSED", timeout=5,
                  interval=0.01)
    report("network removed → its names gone", time.monotonic() - started, CHANGE)

    # the other network's DHCP kept running all along, with its leases
    still: list[Any] = [p for p in pids if p in dnsmasq_pids(lab, primary)]
    assert len(still) >= 1
    assert ok(api.get("/network/net171/lease")) == leases
    assert resolves(a, "10.171.0.1", "gamma.net171.test", gamma) < 1.0
