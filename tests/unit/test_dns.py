"""DNS across the managed networks: the pure rules (`pvcd.domain.dns`) and the dnsmasq files
they become (`pvcd.drivers.dnsmasq_dns`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pvcd.domain.dns import (
    NAMES_SERVER,
    Forwarding,
    check_unique_domain,
    dns_label,
    dns_zones,
    domains_overlap,
    floating_forwarding,
    names_forwarding,
    network_forwarding,
)
from pvcd.domain.errors import InvalidValue
from pvcd.domain.records import NetworkSpec
from pvcd.drivers.dnsmasq import DnsmasqConfig, DnsmasqInstance
from pvcd.drivers.dnsmasq_dns import (
    DnsFiles,
    HostRecord,
    hosts_text,
    resolv_conf_servers,
    servers_text,
)


def managed(vni: int, domain: str | None = None, ip4: bool = True,
            ip6: bool = False) -> NetworkSpec:
    return NetworkSpec(vni, f"net{vni}", "managed", domain,
                       ip4_network=f"10.{vni}.0.0/24" if ip4 else None,
                       ip4_gateway=f"10.{vni}.0.1" if ip4 else None,
                       ip6_network=f"fd00:{vni}::/64" if ip6 else None,
                       ip6_gateway=f"fd00:{vni}::1" if ip6 else None)


@pytest.mark.parametrize("a,b,overlap", [
    ("a.test", "a.test", True), ("A.Test", "a.test.", True), ("x.a.test", "a.test", True),
    ("a.test", "x.a.test", True), ("ba.test", "a.test", False), ("a.test", "b.test", False),
])
def test_domains_overlap_when_equal_containing_or_inside(a: str, b: str, overlap: bool) -> None:
    assert domains_overlap(a, b) is overlap


def test_a_domain_overlapping_another_managed_network_is_refused() -> None:
    others = [managed(10, "net.example.org"), NetworkSpec(20, "vlan", "bridged")]
    check_unique_domain(11, "other.example.org", others)
    check_unique_domain(10, "net.example.org", others)  # its own
    check_unique_domain(11, None, others)
    for domain in ("NET.example.org", "example.org", "x.net.example.org"):
        with pytest.raises(InvalidValue, match="net10") as refused:
            check_unique_domain(11, domain, others)
        assert "may not equal, contain or lie inside" in str(refused.value)


def test_on_a_conflict_the_lowest_vni_keeps_the_domain() -> None:
    zones = dns_zones([managed(30, "b.example.org"), managed(20, "example.org"),
                       managed(10, "a.test"), managed(40, "A.TEST")])
    assert {z.vni: z.domain for z in zones.zones} == {10: "a.test", 20: "example.org",
                                                      30: None, 40: None}
    assert zones.conflicts == {30: 20, 40: 10}


def test_bridged_and_gatewayless_networks_take_no_part() -> None:
    zones = dns_zones([NetworkSpec(5, "vlan", "bridged"), managed(6, "x.test", ip4=False),
                       managed(7, "y.test", ip4=False, ip6=True)])
    assert [(z.vni, z.server, z.networks) for z in zones.zones] == \
        [(7, "fd00:7::1", ("fd00:7::/64",))]


def test_a_network_forwards_the_others_and_asks_the_names_server_last() -> None:
    zones = dns_zones([managed(10, "a.test"), managed(20, "b.test", ip6=True),
                       managed(30)])  # no domain: publishes nothing
    forwarding = network_forwarding(10, "a.test", zones, ["192.0.2.53"])
    assert forwarding == Forwarding(
        domains=(("a.test", NAMES_SERVER), ("b.test", "10.20.0.1")),
        reverse=(("10.10.0.0/24", NAMES_SERVER), ("10.20.0.0/24", "10.20.0.1"),
                 ("fd00:20::/64", "10.20.0.1")),
        local_reverse=("10.30.0.0/24",),
        upstream=("192.0.2.53",))
    # a network without a domain still resolves the others; its addresses stay local
    assert network_forwarding(30, None, zones, []) == Forwarding(
        domains=(("a.test", "10.10.0.1"), ("b.test", "10.20.0.1")),
        reverse=(("10.10.0.0/24", "10.10.0.1"), ("10.20.0.0/24", "10.20.0.1"),
                 ("fd00:20::/64", "10.20.0.1")),
        local_reverse=("10.30.0.0/24",))
    # the names server answers the published zones from its own records, nothing else
    assert names_forwarding(zones) == Forwarding(
        local_domains=("a.test", "b.test"),
        local_reverse=("10.10.0.0/24", "10.20.0.0/24", "fd00:20::/64"))
    # the floating addresses: every published zone, from the gateways, no upstream
    floating = floating_forwarding(zones)
    assert floating.domains == (("a.test", "10.10.0.1"), ("b.test", "10.20.0.1"))
    assert floating.upstream == () and floating.local_domains == ()


def test_a_losing_network_keeps_its_domain_to_itself() -> None:
    zones = dns_zones([managed(10, "a.test"), managed(20, "x.a.test")])
    forwarding = network_forwarding(20, "x.a.test", zones, [])
    assert forwarding.domains == (("a.test", "10.10.0.1"),)
    assert forwarding.local_domains == ("x.a.test",)
    assert forwarding.local_reverse == ("10.20.0.0/24",)
    assert network_forwarding(10, "a.test", zones, []).domains == (("a.test", NAMES_SERVER),)


@pytest.mark.parametrize("name,label", [
    ("web1", "web1"), ("Web-1", "Web-1"), ("web_1", None), ("-web", None), ("web-", None),
    ("a" * 63, "a" * 63), ("a" * 64, None), ("web.evil", None), ("web\nserver=8.8.8.8", None),
    ("", None), (None, None), (7, None),
])
def test_only_dns_labels_become_names(name: object, label: str | None) -> None:
    assert dns_label(name) == label


def test_the_files_hold_only_checked_values() -> None:
    forwarding = Forwarding(domains=(("B.test", "10.20.0.1"),),
                            reverse=(("10.20.0.0/24", "10.20.0.1"),),
                            local_domains=("c.test",),
                            local_reverse=("10.10.0.0/24",), upstream=("2001:db8::53",))
    assert servers_text(forwarding) == ("server=/b.test/10.20.0.1\n"
                                        "rev-server=10.20.0.0/24,10.20.0.1\n"
                                        "server=/c.test/\n"
                                        "rev-server=10.10.0.0/24\n"
                                        "server=2001:db8::53\n")
    for bad in (Forwarding(domains=(("b.test/8.8.8.8\nserver=", "10.0.0.1"),)),
                Forwarding(upstream=("8.8.8.8\nserver=1.1.1.1",)),
                Forwarding(reverse=(("10.20.0.1/24", "10.20.0.1"),))):
        with pytest.raises(InvalidValue):
            servers_text(bad)
    assert hosts_text([HostRecord("10.0.0.9", ("vm2.a.test",)),
                       HostRecord("10.0.0.5", ("fixed.a.test", "vm1.a.test")),
                       HostRecord("10.0.0.7", ())]) == \
        "10.0.0.5 fixed.a.test vm1.a.test\n10.0.0.9 vm2.a.test\n"
    with pytest.raises(InvalidValue):
        hosts_text([HostRecord("10.0.0.5", ("a b.test",))])


def test_files_are_rewritten_only_when_they_change(tmp_path: Path) -> None:
    files = DnsFiles(tmp_path / "dns")
    forwarding = Forwarding(domains=(("b.test", "10.20.0.1"),))
    assert files.set_forwarding(forwarding) is True
    assert files.set_forwarding(forwarding) is False
    assert files.set_names([HostRecord("10.0.0.5", ("vm1.a.test",))]) is True
    assert files.set_names([HostRecord("10.0.0.5", ("vm1.a.test",))]) is False
    assert (tmp_path / "dns" / "names" / "hosts").stat().st_mode & 0o777 == 0o644


def test_upstream_servers_default_to_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# generated\nsearch example.org\nnameserver 192.0.2.53\n"
                    "nameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n")
    assert resolv_conf_servers(conf) == ("192.0.2.53",)
    assert resolv_conf_servers(tmp_path / "missing") == ()


def test_a_networks_dnsmasq_reads_the_files_instead_of_answering_its_domain_alone(
        tmp_path: Path) -> None:
    config = DnsmasqConfig(interface="vmbr10", state_dir=tmp_path, domain="a.test",
                           ip4_network="10.10.0.0/24", ip4_gateway="10.10.0.1")
    assert "--local=/a.test/" in DnsmasqInstance(config).argv()
    argv = DnsmasqInstance(replace(config, dns_files=True)).argv()
    assert "--local=/a.test/" not in argv and "--domain=a.test" in argv
    assert f"--servers-file={tmp_path}/dns/servers" in argv
    assert f"--hostsdir={tmp_path}/dns/names" in argv and "--no-negcache" in argv
    assert "--local-ttl=0" in argv
