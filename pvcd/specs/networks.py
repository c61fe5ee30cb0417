"""The rules of client networks, their static leases and their ACLs: one home for both sides.

The API refuses a network, lease or ACL that breaks them (510, nothing written); the node
daemons check every document again before they act on it (`check_network_document`,
`check_static_lease_document`, `check_acl_document`), since anything that reaches ZooKeeper can
write one. The ACL rule itself is checked by `pvcd.drivers.nft_rules.validate_rule` (nft parses
it in a throw-away namespace); a daemon applies the body *it* got from the rule's text, never
the stored one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from pvcd.domain.errors import InvalidValue
from pvcd.domain.records import AclSpec, NetworkSpec, StaticLeaseSpec, from_dict
from pvcd.domain.states import ACL_DIRECTIONS, NETWORK_TYPES
from pvcd.drivers.dnsmasq import check_domain, check_hostname, check_mac

VNI_RANGES = {"managed": (1, 2**24 - 1), "bridged": (1, 4094)}  # VXLAN ids, vLAN ids
NAME_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,64}$")  # descriptions: also znode names




def check_name(value: str, what: str) -> str:
    if not NAME_RE.fullmatch(value) or value in (".", ".."):
        raise InvalidValue(f"{what} '{value}' is invalid: 1-64 characters without whitespace "
                           "(letters, digits and _ . : @ + -)")
    return value


def check_description(value: str) -> str:
    check_name(value, "description")
    if value.isdigit():
        raise InvalidValue(f"description '{value}' is invalid: it must not be a number "
                           "(a network is named by its VNI or its description)")
    return value


def parse_vni(value: str, nettype: str) -> int:
    low, high = VNI_RANGES[nettype]
    # (a length check first: int() of more than 4,300 digits raises, a 500 once)
    if not (value.isascii() and value.isdigit() and len(value) <= 8) or \
            not low <= int(value) <= high:
        kind = "VXLAN ID" if nettype == "managed" else "vLAN ID"
        shown = value if len(value) <= 40 else f"{value[:40]}..."
        raise InvalidValue(f"vni '{shown}' is invalid for a {nettype} network: a {kind} "
                           f"from {low} to {high}")
    return int(value)


def _network(value: str, version: int, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    example = "10.0.0.0/24" if version == 4 else "fd00:100::/64"
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise InvalidValue(f"{what} '{value}' is not an IPv{version} network in CIDR form "
                           f"(e.g. {example}, host bits zero)") from None
    if network.version != version:
        raise InvalidValue(f"{what} '{value}' is not an IPv{version} network (e.g. {example})")
    return network


def _address_in(value: str | None, network: ipaddress.IPv4Network | ipaddress.IPv6Network,
                what: str) -> str:
    if value is None or value == "":
        raise InvalidValue(f"{what} is required with {_net_name(network)} {network}")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidValue(f"{what} '{value}' is not an IP address") from None
    if address.version != network.version or address not in network:
        raise InvalidValue(f"{what} {value} is not inside {_net_name(network)} {network}")
    if network.num_addresses > 2 and address in (network.network_address,
                                                 network.broadcast_address):
        raise InvalidValue(f"{what} {value} is the network's "
                           f"{'network' if address == network.network_address else 'broadcast'} "
                           "address; use a host address")
    return str(address)


def _net_name(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return "ip4_network" if network.version == 4 else "ip6_network"


def check_network(spec: NetworkSpec) -> NetworkSpec:
    """Apply every rule of the manual to a complete network; return it normalised.

    - vni in range for its type; description whitespace-free (checked by the caller)
    - bridged: every address value is ignored
    - domain: a DNS name
    - ip4_network: CIDR; ip4_gateway required with it and inside it (else failure)
    - ip4_gateway, dhcp4 or a DHCP range without ip4_network: failure
    - ip6_network: CIDR; ip6_gateway missing or invalid → <ip6_network>::1 (as the manual says)
    - dhcp4: dhcp4_start and dhcp4_end required, inside ip4_network, start <= end
    """
    if spec.type == "bridged":
        return NetworkSpec(spec.vni, spec.description, "bridged")
    if spec.domain is not None:
        spec.domain = check_domain(spec.domain)
    if spec.ip4_network is not None:
        net4 = _network(spec.ip4_network, 4, "ip4_network")
        spec.ip4_network = str(net4)
        spec.ip4_gateway = _address_in(spec.ip4_gateway, net4, "ip4_gateway")
        for name in ("dhcp4_start", "dhcp4_end"):
            value = getattr(spec, name)
            if spec.dhcp4 or value is not None:
                setattr(spec, name, _address_in(value, net4, name))
        if spec.dhcp4_start and spec.dhcp4_end and \
                ipaddress.IPv4Address(spec.dhcp4_start) > ipaddress.IPv4Address(spec.dhcp4_end):
            raise InvalidValue(f"dhcp4_start {spec.dhcp4_start} is after dhcp4_end "
                               f"{spec.dhcp4_end}")
    else:
        for name in ("ip4_gateway", "dhcp4_start", "dhcp4_end"):
            if getattr(spec, name) is not None:
                raise InvalidValue(f"{name} needs ip4_network")
        if spec.dhcp4:
            raise InvalidValue("dhcp4 needs ip4_network (and dhcp4_start, dhcp4_end)")
    if spec.ip6_network is not None:
        net6 = _network(spec.ip6_network, 6, "ip6_network")
        spec.ip6_network = str(net6)
        try:
            spec.ip6_gateway = _address_in(spec.ip6_gateway, net6, "ip6_gateway")
        except InvalidValue:
            spec.ip6_gateway = str(net6.network_address + 1)  # the manual's default
    else:
        spec.ip6_gateway = None  # meaningless without ip6_network
    return spec


def check_static_lease(spec: NetworkSpec, mac: str, ip: str, hostname: str | None,
                       others: list[StaticLeaseSpec]) -> StaticLeaseSpec:
    if spec.type != "managed" or spec.ip4_network is None:
        raise InvalidValue(f"network {spec.vni} has no IPv4 network: no DHCP leases there")
    mac = check_mac(mac)
    network = ipaddress.ip_network(spec.ip4_network)
    address = _address_in(ip, network, "ipaddress")
    if address == spec.ip4_gateway:
        raise InvalidValue(f"ipaddress {address} is the network's gateway")
    if hostname is not None:
        check_hostname(hostname)
    for other in others:
        if other.mac == mac:
            raise InvalidValue(f"a static lease for {mac} already exists in network {spec.vni}")
        if other.ip == address:
            raise InvalidValue(f"{address} is already reserved for {other.mac} in network "
                               f"{spec.vni}")
    return StaticLeaseSpec(mac, address, hostname)


# --- documents as a daemon reads them ------------------------------------------------------

ADDRESS_FIELDS = ("domain", "ip4_network", "ip4_gateway", "dhcp4_start", "dhcp4_end",
                  "ip6_network", "ip6_gateway")


def check_network_document(vni: int, doc: Any) -> NetworkSpec:
    """The document at `networks/<vni>` by the API's rules: the network as the API would have
    stored it (normalised), or InvalidValue saying what is wrong."""
    spec = _record(NetworkSpec, doc, f"networks/{vni}", "network")
    if type(spec.vni) is not int or spec.vni != vni:
        raise InvalidValue(f"the document at networks/{vni} names the vni {spec.vni!r}")
    if spec.type not in NETWORK_TYPES:
        raise InvalidValue(f"invalid nettype {spec.type!r}; valid values are: "
                           f"{', '.join(NETWORK_TYPES)}")
    parse_vni(str(vni), spec.type)
    if not isinstance(spec.description, str):
        raise InvalidValue(f"description {spec.description!r} is not a text")
    check_description(spec.description)
    for name in ADDRESS_FIELDS:
        if getattr(spec, name) is not None and not isinstance(getattr(spec, name), str):
            raise InvalidValue(f"{name} {getattr(spec, name)!r} is not a text")
    if not isinstance(spec.dhcp4, bool):
        raise InvalidValue(f"dhcp4 {spec.dhcp4!r} is not true or false")
    return check_network(spec)


def check_static_lease_document(spec: NetworkSpec, mac: str, doc: Any,
                                others: list[StaticLeaseSpec]) -> StaticLeaseSpec:
    """The document at `networks/<vni>/static/<mac>` by the API's rules, against the network
    (already checked) and the leases accepted before it."""
    lease = _record(StaticLeaseSpec, doc, f"static lease {mac}", "static lease")
    for name in ("mac", "ip"):
        if not isinstance(getattr(lease, name), str):
            raise InvalidValue(f"{name} {getattr(lease, name)!r} is not a text")
    if lease.hostname is not None and not isinstance(lease.hostname, str):
        raise InvalidValue(f"hostname {lease.hostname!r} is not a text")
    checked = check_static_lease(spec, lease.mac, lease.ip, lease.hostname, others)
    if checked.mac != mac:
        raise InvalidValue(f"the document of static lease {mac} is for {checked.mac}")
    return checked


def check_acls_allowed(spec: NetworkSpec) -> None:
    if spec.type != "managed":
        raise InvalidValue(f"network {spec.vni} is bridged: ACLs apply to managed networks")


def check_acl_document(spec: NetworkSpec, direction: str, description: str, doc: Any,
                       rule_body: Callable[[str], dict[str, Any]]) -> AclSpec:
    """The document at `networks/<vni>/acl/<direction>/<description>` by the API's rules, with
    the body `rule_body` (`validate_rule`) made of its rule text: the only form to apply."""
    check_acls_allowed(spec)
    acl = _record(AclSpec, doc, f"ACL {description}", "ACL")
    if acl.direction != direction or direction not in ACL_DIRECTIONS:
        raise InvalidValue(f"the document of ACL {description} ({direction}) names the "
                           f"direction {acl.direction!r}")
    if acl.description != description:
        raise InvalidValue(f"the document of ACL {description} names the description "
                           f"{acl.description!r}")
    check_name(description, "description")
    if type(acl.order) is not int or acl.order < 0:
        raise InvalidValue(f"order {acl.order!r} is invalid: an integer from 0")
    if not isinstance(acl.rule, str):
        raise InvalidValue(f"rule {acl.rule!r} is not a text")
    return AclSpec(description, direction, acl.order, acl.rule.strip(), rule_body(acl.rule))


def _record(cls: type[Any], doc: Any, where: str, what: str) -> Any:
    if not isinstance(doc, dict):
        raise InvalidValue(f"{where} is not a {what} document")
    try:
        return from_dict(cls, doc)
    except TypeError:
        fields = ", ".join(f.name for f in dataclasses.fields(cls)
                           if f.default is dataclasses.MISSING and
                           f.default_factory is dataclasses.MISSING)
        raise InvalidValue(f"{where} lacks a {what}'s fields ({fields})") from None
