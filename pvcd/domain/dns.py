"""DNS across the managed networks (extensions.md §10.2): which network publishes which domain,
and where each resolver sends a question. Pure rules, no I/O.

Each managed network that has a gateway address is a `DnsZone`: its domain (when it publishes
one), the address its resolver answers on (the gateway), and the address ranges whose reverse
zones it owns. Three kinds of resolver, all dnsmasq on the primary:

- a network's own (on its gateway, with its DHCP): answers its leases and static names itself;
  `network_forwarding` says where the rest goes: the rest of its own domain and reverse zones
  to the names server, every other network's domain and reverse zones to that network's
  gateway, everything else to the upstream servers (none: REFUSED);
- the names server (`NAMES_SERVER`, no DHCP): the `<vm name>.<domain>` records, answered last
  (`names_forwarding`: it never forwards). They cannot live in the network's own dnsmasq: it
  gives a hosts-file name of a leased address to the lease, replacing the name the guest sent;
- the floating addresses' (`floating_forwarding`): every published domain and reverse zone,
  asked of the networks' resolvers, nothing else (no recursion: no open resolver on the
  upstream side).

Domains are unique (§10.2.4): equal, containing or inside another's, compared case-insensitively,
is a conflict. The API refuses one (`check_unique_domain`); on a cluster that already has one
(written past the API, or from before this rule) the lowest VNI keeps its domain and the others
publish nothing (`DnsZones.conflicts` names them).

Names: `dns_label` is the one rule for a name that comes from a guest or a user and is to become
part of a record (a VM's name): an RFC 1123 label, letters, digits and '-', at most 63.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pvcd.domain.errors import InvalidValue
from pvcd.domain.records import NetworkSpec

LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
RECORD_TTL = 0  # seconds: dnsmasq's TTL for its leases and hosts (§10.2.1 asks for ≤ 60)
# the names server of the primary (a dnsmasq without DHCP, on a loopback address of the
# primary's network namespace): the VM names, which the networks' resolvers ask last
NAMES_SERVER = "127.0.0.153"


def dns_label(name: object) -> str | None:
    """`name` if it can be one label of a DNS name (RFC 1123), else None. Never raises."""
    if isinstance(name, str) and LABEL.fullmatch(name):
        return name
    return None


def domains_overlap(first: str, second: str) -> bool:
    """Whether two domains are equal or one lies inside the other (case-insensitive)."""
    a, b = first.lower().rstrip("."), second.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def check_unique_domain(vni: int, domain: str | None,
                        others: Iterable[NetworkSpec]) -> None:
    """InvalidValue when `domain` (of managed network `vni`) overlaps another managed
    network's domain."""
    if domain is None:
        return
    for other in others:
        if other.vni != vni and other.type == "managed" and other.domain and \
                domains_overlap(domain, other.domain):
            relation = ("is the domain of" if domain.lower() == other.domain.lower()
                        else "overlaps the domain of")
            raise InvalidValue(
                f"domain '{domain}' {relation} network '{other.description}' (vni {other.vni}, "
                f"'{other.domain}'): a managed network's domain may not equal, contain or lie "
                "inside another's")


@dataclass(frozen=True)
class DnsZone:
    """One managed network as DNS sees it."""

    vni: int
    domain: str | None  # published (None: none, or it lost a conflict)
    server: str  # the gateway address its resolver answers on
    networks: tuple[str, ...]  # its address ranges (CIDR): the reverse zones it owns


@dataclass(frozen=True)
class DnsZones:
    zones: tuple[DnsZone, ...]
    conflicts: dict[int, int]  # vni that lost its domain → vni that keeps it


def dns_zones(specs: Iterable[NetworkSpec]) -> DnsZones:
    """The zones of the managed networks that have a gateway; on a domain conflict the lowest
    VNI keeps the domain."""
    zones: list[DnsZone] = []
    conflicts: dict[int, int] = {}
    kept: list[tuple[int, str]] = []
    for spec in sorted(specs, key=lambda s: s.vni):
        if spec.type != "managed":
            continue
        server = spec.ip4_gateway if spec.ip4_network else None
        if server is None and spec.ip6_network:
            server = spec.ip6_gateway or str(ipaddress.ip_network(spec.ip6_network)
                                             .network_address + 1)
        if server is None:
            continue  # no gateway: no resolver to ask
        domain = spec.domain.lower().rstrip(".") if spec.domain else None
        if domain is not None:
            winner = next((vni for vni, kept_domain in kept
                           if domains_overlap(domain, kept_domain)), None)
            if winner is not None:
                conflicts[spec.vni] = winner
                domain = None
            else:
                kept.append((spec.vni, domain))
        networks = tuple(n for n in (spec.ip4_network, spec.ip6_network) if n)
        zones.append(DnsZone(spec.vni, domain, server, networks))
    return DnsZones(tuple(zones), conflicts)


@dataclass(frozen=True)
class Forwarding:
    """Where one resolver sends the questions it has no record for. Longest match wins (as in
    dnsmasq); a resolver's own records (leases, hosts) always answer first."""

    domains: tuple[tuple[str, str], ...] = ()  # (domain, server)
    reverse: tuple[tuple[str, str], ...] = ()  # (CIDR, server)
    local_domains: tuple[str, ...] = ()  # answered from local records only (else NXDOMAIN)
    local_reverse: tuple[str, ...] = ()  # CIDRs answered from local records only
    upstream: tuple[str, ...] = ()  # recursion for every other name; none: REFUSED


def network_forwarding(vni: int, own_domain: str | None, zones: DnsZones,
                       upstream: Iterable[str]) -> Forwarding:
    """What the resolver of network `vni` forwards. It answers its own leases and static
    names itself; the rest of its own domain and reverse zones (the VM names) it asks the
    names server, when it publishes its domain."""
    own = next((zone for zone in zones.zones if zone.vni == vni), None)
    others = [zone for zone in zones.zones if zone.vni != vni and zone.domain is not None]
    silent = [zone for zone in zones.zones if zone.vni != vni and zone.domain is None]
    mine = own_domain.lower().rstrip(".") if own_domain else None
    publishes = own is not None and own.domain is not None
    domains = [(zone.domain, zone.server) for zone in others
               if zone.domain is not None and zone.domain != mine]
    reverse = [(network, zone.server) for zone in others for network in zone.networks]
    local_reverse = [network for zone in silent for network in zone.networks]
    if own is not None and own.domain is not None:
        domains.insert(0, (own.domain, NAMES_SERVER))
        reverse[0:0] = [(network, NAMES_SERVER) for network in own.networks]
    elif own is not None:
        local_reverse[0:0] = list(own.networks)
    return Forwarding(
        domains=tuple(domains),
        reverse=tuple(reverse),
        # a domain it does not publish (none, or lost to a conflict) stays its own
        local_domains=(mine,) if mine is not None and not publishes else (),
        # addresses of networks that publish nothing: never asked upstream
        local_reverse=tuple(local_reverse),
        upstream=tuple(upstream),
    )


def names_forwarding(zones: DnsZones) -> Forwarding:
    """The names server: its own records for every published domain and reverse zone, nothing
    else (it never forwards: the networks' resolvers ask it last)."""
    published = [zone for zone in zones.zones if zone.domain is not None]
    return Forwarding(
        local_domains=tuple(zone.domain for zone in published if zone.domain is not None),
        local_reverse=tuple(network for zone in published for network in zone.networks),
    )


def floating_forwarding(zones: DnsZones) -> Forwarding:
    """What the floating addresses answer: every published domain and its reverse zones, by
    asking the network's resolver; no upstream (no recursion)."""
    published = [zone for zone in zones.zones if zone.domain is not None]
    return Forwarding(
        domains=tuple((zone.domain, zone.server) for zone in published
                      if zone.domain is not None),
        reverse=tuple((network, zone.server) for zone in published
                      for network in zone.networks),
    )
