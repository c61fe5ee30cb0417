"""Network endpoints: networks, their DHCP leases and their ACLs.

Every write is checked completely first (the manual's rules, listed in
`pvcd.specs.networks.check_network`: the daemons apply them again before they act), then
recorded as desired state in one compare-and-set transaction; the network, gateway and firewall
controllers carry it out. A refused value answers 510 with a message and writes nothing.

`<network>` is a VNI or a network's description. Leases are served under both
`/network/<network>/lease[/<mac>]` and the manual's `/network/<network>/dhcp[/<mac>]` (the same
handlers, extensions.md §10.1).

A managed network's domain may not equal, contain or lie inside another managed network's
(`pvcd.domain.dns.check_unique_domain`, extensions.md §10.2.4): DNS across the networks could not
tell them apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from typing import Any

from pvcd.api.base import BaseHandler
from pvcd.api.routing import route
from pvcd.api.values import Value, accepts, choice, flag, integer, limit, text, value
from pvcd.domain.dns import check_unique_domain
from pvcd.domain.errors import Conflict, InvalidValue, NotFound
from pvcd.domain.records import AclSpec, NetworkSpec
from pvcd.domain.states import ACL_DIRECTIONS, NETWORK_TYPES
from pvcd.drivers.dnsmasq import check_mac
from pvcd.drivers.nft_rules import validate_rule
from pvcd.specs.networks import (
    check_acls_allowed,
    check_description,
    check_name,
    check_network,
    check_static_lease,
    parse_vni,
)
from pvcd.state.store import Op
from pvcd.state.view import ClusterView

DELETE_ATTEMPTS = 5  # a network delete that races the gateway's lease reports


# --- objects (objects.md) ------------------------------------------------------------------


def network_object(spec: NetworkSpec) -> dict[str, Any]:
    return {
        "vni": spec.vni,
        "description": spec.description,
        "type": spec.type,
        "domain": spec.domain,
        "ip4": {"network": spec.ip4_network, "gateway": spec.ip4_gateway,
                "dhcp_flag": spec.dhcp4, "dhcp_start": spec.dhcp4_start,
                "dhcp_end": spec.dhcp4_end},
        "ip6": {"network": spec.ip6_network, "gateway": spec.ip6_gateway,
                "dhcp_flag": spec.ip6_network is not None},
    }


def lease_objects(view: ClusterView, vni: int, static_only: bool) -> list[dict[str, Any]]:
    """Static reservations (`timestamp: "static"`) and the active dynamic leases."""
    statics = view.static_leases(vni)
    result: list[dict[str, Any]] = [
        {"hostname": s.hostname, "ip4_address": s.ip, "mac_address": s.mac,
         "timestamp": "static"} for s in statics]
    if not static_only:
        reserved = {s.mac for s in statics}
        result += [{"hostname": le.hostname, "ip4_address": le.ip, "mac_address": le.mac,
                    "timestamp": le.expires} for le in view.dhcp_leases(vni)
                   if le.mac not in reserved]
    return sorted(result, key=lambda le: le["mac_address"])


def other_networks(view: ClusterView, vni: int) -> list[NetworkSpec]:
    return [spec for spec in (view.network(other) for other in view.network_vnis()
                              if other != vni) if spec is not None]


def acl_object(acl: AclSpec) -> dict[str, Any]:
    return {"description": acl.description, "direction": acl.direction, "order": acl.order,
            "rule": acl.rule}


# --- handlers ------------------------------------------------------------------------------


class NetworkBaseHandler(BaseHandler):
    def network(self, name: str) -> NetworkSpec:
        view = self.ctx.view
        vni = view.resolve_network(name)
        spec = None if vni is None else view.network(vni)
        if spec is None:
            raise NotFound(f"Network '{name}' not found")
        return spec


def _address(name: str, help: str) -> Value[str | None]:
    """A value that configures addresses: stripped; empty clears it (in PUT)."""
    return value(name, help, str.strip)


# the values of POST and PUT that configure addresses (ignored for bridged networks), named as
# the fields of NetworkSpec
DOMAIN = _address("domain", "DNS domain of the network's hosts.")
IP4_NETWORK = _address("ip4_network", "IPv4 network in CIDR form, e.g. 10.100.0.0/24.")
IP4_GATEWAY = _address("ip4_gateway", "The primary's gateway address inside ip4_network "
                       "(required with it).")
IP6_NETWORK = _address("ip6_network", "IPv6 network in CIDR form, e.g. fd00:100::/64.")
IP6_GATEWAY = _address("ip6_gateway", "The gateway inside ip6_network (default: "
                       "<ip6_network>::1).")
DHCP4 = flag("dhcp4", "Serve DHCPv4 (needs dhcp4_start and dhcp4_end).")
ADDRESS_VALUES: tuple[Value[Any], ...] = (
    DOMAIN, IP4_NETWORK, IP4_GATEWAY, IP6_NETWORK, IP6_GATEWAY, DHCP4,
    _address("dhcp4_start", "First address of the DHCPv4 pool."),
    _address("dhcp4_end", "Last address of the DHCPv4 pool."))
NETWORK_LIMIT = limit("descriptions (and VNIs)")
VNI = value("vni", "VXLAN id (managed, 1-16777215) or vLAN id (bridged, 1-4094).", str,
            required=True, schema={"type": "integer", "minimum": 1, "maximum": 2**24 - 1})
DESCRIPTION = text("description", "A whitespace-free name, not a number.", required=True)
NETTYPE = choice("nettype", NETWORK_TYPES, "managed (VXLAN, with gateway/DHCP) or bridged "
                 "(vLAN; every other value is ignored).", required=True)


class NetworkListHandler(NetworkBaseHandler):
    @accepts(NETWORK_LIMIT)
    def get(self) -> None:
        view = self.ctx.view
        limit = self.values[NETWORK_LIMIT]
        result = []
        for vni in view.network_vnis():
            spec = view.network(vni)
            if spec is not None and (limit is None or limit.search(spec.description) or
                                     limit.search(str(vni))):
                result.append(network_object(spec))
        self.reply(result)

    @accepts(VNI, DESCRIPTION, NETTYPE, *ADDRESS_VALUES)
    async def post(self) -> None:
        view = self.ctx.view
        nettype = self.values[NETTYPE]
        vni = parse_vni(self.values[VNI], nettype)
        description = check_description(self.values[DESCRIPTION])
        if view.network(vni) is not None:
            raise InvalidValue(f"a network with vni {vni} already exists")
        if view.resolve_network(description) is not None:
            raise InvalidValue(f"a network with description '{description}' already exists")
        spec = check_network(NetworkSpec(
            vni=vni, description=description, type=nettype,
            **{address.name: self.values[address] for address in ADDRESS_VALUES}))
        check_unique_domain(vni, spec.domain, other_networks(view, vni))
        paths = view.paths
        ops = [Op.create(paths.network(vni), spec.to_doc())]
        ops += [Op.create(path, {}) for path in paths.network_containers(vni)]
        ops.append(Op.create(paths.network_name(description), {"vni": vni}))
        await self.commit(ops)
        self.message(f"Network '{description}' (vni {vni}) added")


class NetworkHandler(NetworkBaseHandler):
    def get(self, name: str) -> None:
        self.reply([network_object(self.network(name))])

    @accepts(*ADDRESS_VALUES)
    async def put(self, name: str) -> None:
        view = self.ctx.view
        spec = self.network(name)
        changed = dataclasses.replace(spec)
        for address in ADDRESS_VALUES:
            if self.values.given(address):
                setattr(changed, address.name, self.values[address])
        if self.values.given(IP6_NETWORK) and not self.values.given(IP6_GATEWAY):
            changed.ip6_gateway = None  # a new ip6 network gets the default gateway
        changed = check_network(changed)
        check_unique_domain(spec.vni, changed.domain, other_networks(view, spec.vni))
        if changed.ip4_network is not None:
            network = ipaddress.ip_network(changed.ip4_network)
            for lease in view.static_leases(spec.vni):
                if ipaddress.ip_address(lease.ip) not in network:
                    raise InvalidValue(f"static lease {lease.mac} ({lease.ip}) would be outside "
                                       f"ip4_network {network}; delete it first")
        elif view.static_leases(spec.vni):
            raise InvalidValue("the network has static leases: it needs its ip4_network")
        entry = view.cache.entry(view.paths.network(spec.vni))
        assert entry is not None
        await self.commit([Op.set(view.paths.network(spec.vni), changed.to_doc(),
                                  entry.version)])
        self.message(f"Network '{spec.description}' modified")

    async def delete(self, name: str) -> None:
        """One transaction deletes the network with everything under it. The primary's gateway
        writes `leases/<mac>` whenever dnsmasq hands one out, so the cache's list of them may
        be stale by the time the transaction arrives ("has children"): then the children are
        read again from ZooKeeper itself and the whole delete is retried. Once the network
        document is gone no lease can be written under it (its parent is gone too)."""
        spec = self.network(name)
        for attempt in range(DELETE_ATTEMPTS):
            try:
                await self.commit(await self._removal(spec, exact=attempt > 0))
            except Conflict:
                spec = self.network(name)  # NotFound if another delete won the race
                continue
            self.message(f"Network '{spec.description}' (vni {spec.vni}) removed")
            return
        raise Conflict(f"network '{spec.description}': its leases kept changing while it was "
                       f"removed ({DELETE_ATTEMPTS} tries); try again")

    async def _removal(self, spec: NetworkSpec, exact: bool) -> list[Op]:
        """Deletes of the network's documents, leaves first; the children listed from the
        cache, or from ZooKeeper when `exact`."""
        paths, cache, store = self.ctx.view.paths, self.ctx.view.cache, self.ctx.store
        acls = paths.network_acls(spec.vni)
        ops: list[Op] = []
        for container in reversed(paths.network_containers(spec.vni)):
            children = (await asyncio.wrap_future(store.children_async(container)) if exact
                        else cache.children(container))
            ops += [Op.delete(f"{container}/{child}") for child in children
                    if child not in ("in", "out") or container != acls]
            ops.append(Op.delete(container))
        ops.append(Op.delete(paths.network(spec.vni)))
        ops.append(Op.delete(paths.network_name(spec.description)))
        return ops


LEASE_LIMIT = limit("MAC addresses")
STATIC = flag("static", "Only static leases.")
MACADDRESS = text("macaddress", "The MAC address.", required=True)
IPADDRESS = text("ipaddress", "An address in the network's ip4_network.", required=True)
HOSTNAME = value("hostname", "A host name for the lease.", str.strip)


class LeaseListHandler(NetworkBaseHandler):
    @accepts(LEASE_LIMIT, STATIC)
    def get(self, name: str) -> None:
        spec = self.network(name)
        limit = self.values[LEASE_LIMIT]
        leases = lease_objects(self.ctx.view, spec.vni, self.values[STATIC])
        self.reply([le for le in leases if limit is None or limit.search(le["mac_address"])])

    @accepts(MACADDRESS, IPADDRESS, HOSTNAME)
    async def post(self, name: str) -> None:
        view = self.ctx.view
        spec = self.network(name)
        lease = check_static_lease(spec, self.values[MACADDRESS],
                                   self.values[IPADDRESS], self.values[HOSTNAME],
                                   view.static_leases(spec.vni))
        await self.commit([Op.create(view.paths.network_static_lease(spec.vni, lease.mac),
                                     lease.to_doc())])
        self.message(f"Static lease {lease.mac} → {lease.ip} added to network "
                     f"'{spec.description}'")


class LeaseHandler(NetworkBaseHandler):
    def lease(self, spec: NetworkSpec, mac: str) -> dict[str, Any]:
        try:
            mac = check_mac(mac)
        except InvalidValue:
            raise NotFound(f"Lease '{mac}' not found in network '{spec.description}'") from None
        for lease in lease_objects(self.ctx.view, spec.vni, static_only=False):
            if lease["mac_address"] == mac:
                return lease
        raise NotFound(f"Lease '{mac}' not found in network '{spec.description}'")

    def get(self, name: str, mac: str) -> None:
        spec = self.network(name)
        self.reply([self.lease(spec, mac)])

    async def delete(self, name: str, mac: str) -> None:
        view = self.ctx.view
        spec = self.network(name)
        lease = self.lease(spec, mac)
        if lease["timestamp"] != "static":
            raise InvalidValue(f"lease {lease['mac_address']} is dynamic; only static leases "
                               "can be removed")
        path = view.paths.network_static_lease(spec.vni, lease["mac_address"])
        entry = view.cache.entry(path)
        await self.commit([Op.delete(path, entry.version if entry is not None else -1)])
        self.message(f"Static lease {lease['mac_address']} removed from network "
                     f"'{spec.description}'")


ACL_LIMIT = limit("ACL descriptions")
DIRECTION_FILTER = choice("direction", ACL_DIRECTIONS, "Only this direction.")
ACL_DESCRIPTION = text("description", "A whitespace-free name.", required=True)
DIRECTION = choice("direction", ACL_DIRECTIONS, "in (into the network) or out.", required=True)
RULE = text("rule", "An nftables rule.", required=True)
ORDER = integer("order", "Position in the chain, from 0 (default: the end).", minimum=0)


class AclListHandler(NetworkBaseHandler):
    @accepts(ACL_LIMIT, DIRECTION_FILTER)
    def get(self, name: str) -> None:
        spec = self.network(name)
        limit = self.values[ACL_LIMIT]
        direction = self.values[DIRECTION_FILTER]
        result = []
        for each in ACL_DIRECTIONS:
            if direction is not None and each != direction:
                continue
            result += [acl_object(acl) for acl in self.ctx.view.acls(spec.vni, each)
                       if limit is None or limit.search(acl.description)]
        self.reply(result)

    @accepts(ACL_DESCRIPTION, DIRECTION, RULE, ORDER)
    async def post(self, name: str) -> None:
        view = self.ctx.view
        spec = self.network(name)
        check_acls_allowed(spec)
        description = check_name(self.values[ACL_DESCRIPTION], "description")
        direction = self.values[DIRECTION]
        rule = self.values[RULE]
        order = self.values[ORDER]
        existing = view.acls(spec.vni, direction)
        if any(acl.description == description for acl in existing):
            raise InvalidValue(f"an ACL '{description}' already exists in direction "
                               f"{direction} of network '{spec.description}'")
        body = await asyncio.to_thread(validate_rule, rule)  # a throw-away namespace, ≈ 10 ms
        position = len(existing) if order is None else min(order, len(existing))
        new = AclSpec(description, direction, position, rule.strip(), body)
        chain = [*existing[:position], new, *existing[position:]]
        await self.commit(_renumber_ops(view, spec.vni, direction, chain, new))
        self.message(f"ACL '{description}' added to network '{spec.description}' "
                     f"({direction}, position {position})")


ACL_DIRECTION = choice("direction", ACL_DIRECTIONS, "The ACL's direction.", required=True)


class AclHandler(NetworkBaseHandler):
    def get(self, name: str, description: str) -> None:
        spec = self.network(name)
        found = [acl_object(acl) for direction in ACL_DIRECTIONS
                 for acl in self.ctx.view.acls(spec.vni, direction)
                 if acl.description == description]
        self.reply(found if found else {})  # the manual: an unknown ACL is an empty document

    @accepts(ACL_DIRECTION)
    async def delete(self, name: str, description: str) -> None:
        view = self.ctx.view
        spec = self.network(name)
        direction = self.values[ACL_DIRECTION]
        existing = view.acls(spec.vni, direction)
        if not any(acl.description == description for acl in existing):
            raise NotFound(f"ACL '{description}' not found in direction {direction} of network "
                           f"'{spec.description}'")
        chain = [acl for acl in existing if acl.description != description]
        path = view.paths.network_acl(spec.vni, direction, description)
        entry = view.cache.entry(path)
        ops = [Op.delete(path, entry.version if entry is not None else -1)]
        await self.commit(ops + _renumber_ops(view, spec.vni, direction, chain, None))
        self.message(f"ACL '{description}' removed from network '{spec.description}'")


def _renumber_ops(view: ClusterView, vni: int, direction: str, chain: list[AclSpec],
                  new: AclSpec | None) -> list[Op]:
    """Ops that store `chain` with orders 0..n-1: create `new`, set the ACLs that moved (with
    their cached versions, so a concurrent change of the chain fails the whole write)."""
    ops: list[Op] = []
    for position, acl in enumerate(chain):
        path = view.paths.network_acl(vni, direction, acl.description)
        if acl is new:
            acl.order = position
            ops.append(Op.create(path, acl.to_doc()))
        elif acl.order != position:
            entry = view.cache.entry(path)
            if entry is None:
                raise Conflict(f"ACL '{acl.description}' changed concurrently; try again")
            acl.order = position
            ops.append(Op.set(path, acl.to_doc(), entry.version))
    return ops


ROUTES = [
    route("/network", NetworkListHandler),
    route("/network/<network>", NetworkHandler),
    route("/network/<network>/lease", LeaseListHandler),
    route("/network/<network>/lease/<lease>", LeaseHandler),
    route("/network/<network>/dhcp", LeaseListHandler),  # extensions.md §10.1: an alias
    route("/network/<network>/dhcp/<lease>", LeaseHandler),
    route("/network/<network>/acl", AclListHandler),
    route("/network/<network>/acl/<acl>", AclHandler),
]
