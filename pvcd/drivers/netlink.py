"""Kernel network objects of one node: bridges, VXLAN tunnels, vLAN uplinks, addresses.

This driver owns the rtnetlink side of a client network; it knows nothing of ZooKeeper. Every
`ensure_*` method is idempotent: it reads the kernel's current state and changes only what
differs, so a controller can call it on every reconcile.

Layout of a network (names from `pvcd.drivers.ifnames`: `bridge_name`, `vxlan_name`,
`vlan_name`):

    managed (VXLAN)   vmbr<vni>  <- vxlan<vni> (VNI <vni>, local <node ip>, dev <underlay>)
                                 <- VM taps
    bridged (vLAN)    vmbr<vni>  <- <uplink>.<vni> (802.1Q) <- VM taps

VXLAN uses unicast head-end replication: one all-zero-MAC FDB entry per peer node, so
broadcast/unknown frames are copied to every peer; the peer set comes from the cluster's node
list (`set_vxlan_peers`), no multicast or BGP/EVPN needed. The tunnel adds 50 bytes, so the
VXLAN device and its bridge get MTU = underlay MTU - 50; larger frames vanish without an error.

Threading: the driver blocks. pyroute2's synchronous `IPRoute` runs a private asyncio loop and
fails with "Cannot run the event loop while another loop is running" when called from a thread
that runs a loop, so call these methods from a worker thread (`asyncio.to_thread`) or a
controller thread, never from the event loop itself; doing so raises RuntimeError at once. One
driver may be shared by several threads: calls are serialized by a lock.

Namespaces: with `netns="name"` every call acts inside `/run/netns/name` (pyroute2 creates the
netlink socket there in a short-lived child process once, at first use). The namespace must
exist; the driver never creates one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Self

from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound
from pvcd.drivers.ifnames import check_ifname, check_netns, check_vni, vxlan_mtu
from pvcd.drivers.rtnl import netlink_error, open_iproute

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

ZERO_MAC = "00:00:00:00:00:00"
_ENODEV = 19
_EOPNOTSUPP = 95
_EEXIST = 17
_EADDRNOTAVAIL = 99


def _ensure_not_in_event_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "NetlinkDriver blocks and pyroute2's IPRoute cannot run inside a running asyncio loop: "
        "call it from a worker thread (asyncio.to_thread)"
    )


@contextmanager
def _netlink_errors(action: str) -> Iterator[None]:
    try:
        yield
    except netlink_error() as exc:
        raise BackendError(f"netlink: cannot {action}: {exc.args[-1]} (errno {exc.code})") from exc


class NetlinkDriver:
    """rtnetlink operations in one network namespace (`None`: the caller's own)."""

    def __init__(self, netns: str | None = None) -> None:
        if netns is not None:
            check_netns(netns)
        self.netns = netns
        self._lock = threading.RLock()
        self._ipr: IPRoute | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _rtnl(self) -> Iterator[IPRoute]:
        _ensure_not_in_event_loop()
        with self._lock:
            if self._ipr is None:
                if self.netns is not None and not os.path.exists(f"/run/netns/{self.netns}"):
                    raise NotFound(f"network namespace {self.netns} does not exist")
                self._ipr = open_iproute(self.netns)
            try:
                yield self._ipr
            except OSError as exc:  # the socket itself failed: open a fresh one next time
                self.close()
                raise BackendError(f"netlink socket (netns {self._where()}): {exc}") from exc

    def _where(self) -> str:
        return self.netns or "-"

    # -- queries ---------------------------------------------------------------------------

    def _index(self, ipr: IPRoute, name: str) -> int | None:
        found = ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def _require_index(self, ipr: IPRoute, name: str) -> int:
        index = self._index(ipr, name)
        if index is None:
            raise NotFound(f"interface {name} does not exist (netns {self._where()})")
        return index

    def _link(self, ipr: IPRoute, index: int) -> Any:
        return ipr.link("get", index=index)[0]

    def link_exists(self, name: str) -> bool:
        with self._rtnl() as ipr:
            return self._index(ipr, check_ifname(name)) is not None

    def link_kind(self, name: str) -> str | None:
        """The link's kind (`bridge`, `vxlan`, `veth`, ...), None for a plain device."""
        with self._rtnl() as ipr:
            link = self._link(ipr, self._require_index(ipr, check_ifname(name)))
            kind = link.get(("linkinfo", "kind"))
            return str(kind) if kind is not None else None

    def link_master(self, name: str) -> str | None:
        """Name of the bridge `name` is enslaved to, or None."""
        with self._rtnl() as ipr:
            link = self._link(ipr, self._require_index(ipr, check_ifname(name)))
            master = link.get("IFLA_MASTER")
            if not master:
                return None
            return str(self._link(ipr, master).get("IFLA_IFNAME"))

    def link_mtu(self, name: str) -> int:
        with self._rtnl() as ipr:
            return int(
                self._link(ipr, self._require_index(ipr, check_ifname(name))).get("IFLA_MTU")
            )

    def list_links(self, prefix: str = "") -> list[str]:
        """Names of the interfaces starting with `prefix`, sorted."""
        with self._rtnl() as ipr:
            names = (str(link.get("IFLA_IFNAME")) for link in ipr.get_links())
            return sorted(n for n in names if n.startswith(prefix))

    # -- links -----------------------------------------------------------------------------

    def set_up(self, name: str) -> None:
        with self._rtnl() as ipr, _netlink_errors(f"set {name} up"):
            index = self._require_index(ipr, check_ifname(name))
            if not self._link(ipr, index)["flags"] & 1:  # IFF_UP
                ipr.link("set", index=index, state="up")
                log.info("link up name=%s netns=%s", name, self._where())

    def _set_mtu(self, ipr: IPRoute, name: str, index: int, mtu: int) -> None:
        if int(self._link(ipr, index).get("IFLA_MTU")) != mtu:
            with _netlink_errors(f"set MTU {mtu} on {name}"):
                ipr.link("set", index=index, mtu=mtu)
            log.info("link mtu name=%s mtu=%d netns=%s", name, mtu, self._where())

    def ensure_bridge(self, name: str, mtu: int) -> None:
        """A bridge `name` exists, is up, and has MTU `mtu`."""
        check_ifname(name)
        with self._rtnl() as ipr:
            index = self._index(ipr, name)
            if index is None:
                with _netlink_errors(f"create bridge {name}"):
                    ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
                log.info("created bridge name=%s mtu=%d netns=%s", name, mtu, self._where())
                index = self._require_index(ipr, name)
            else:
                kind = self._link(ipr, index).get(("linkinfo", "kind"))
                if kind != "bridge":
                    raise Conflict(
                        f"interface {name} exists but is a {kind or 'device'}, not a bridge"
                    )
                self._set_mtu(ipr, name, index, mtu)
            self.set_up(name)

    def ensure_vxlan(
        self,
        name: str,
        vni: int,
        local_ip: str,
        underlay_dev: str,
        dstport: int = 4789,
        mtu: int | None = None,
    ) -> None:
        """A VXLAN device `name` for `vni` from `local_ip` over `underlay_dev` exists and is up.

        `mtu` defaults to the underlay's MTU - 50. A device of that name with other settings
        (VNI, local address, underlay, port) is deleted and created anew; the caller then
        re-enslaves it (`ensure_port`) and re-sets its peers (`set_vxlan_peers`), as every
        reconcile does anyway.
        """
        check_ifname(name)
        check_vni(vni)
        local = _parse_ip(local_ip, "VXLAN local address")
        if not 1 <= dstport <= 65535:
            raise InvalidValue(f"VXLAN port {dstport} is out of range: allowed 1-65535")
        with self._rtnl() as ipr:
            underlay = self._require_index(ipr, check_ifname(underlay_dev))
            if mtu is None:
                mtu = vxlan_mtu(int(self._link(ipr, underlay).get("IFLA_MTU")))
            wanted = {
                "IFLA_VXLAN_ID": vni,
                "IFLA_VXLAN_LINK": underlay,
                "IFLA_VXLAN_PORT": dstport,
                "IFLA_VXLAN_LOCAL6" if local.version == 6 else "IFLA_VXLAN_LOCAL": str(local),
            }
            index = self._index(ipr, name)
            if index is not None:
                link = self._link(ipr, index)
                data = link.get(("linkinfo", "data"))
                current = {k: (data.get(k) if data is not None else None) for k in wanted}
                if link.get(("linkinfo", "kind")) != "vxlan":
                    raise Conflict(f"interface {name} exists but is not a VXLAN device")
                if _normalize(current) != _normalize(wanted):
                    log.info(
                        "recreating vxlan name=%s have=%s want=%s netns=%s",
                        name,
                        current,
                        wanted,
                        self._where(),
                    )
                    with _netlink_errors(f"delete stale VXLAN {name}"):
                        ipr.link("del", index=index)
                    index = None
            if index is None:
                local_key = "vxlan_local6" if local.version == 6 else "vxlan_local"
                spec: dict[str, Any] = {
                    "ifname": name,
                    "kind": "vxlan",
                    "vxlan_id": vni,
                    "vxlan_link": underlay,
                    "vxlan_port": dstport,
                    local_key: str(local),
                    "vxlan_learning": 1,
                    "mtu": mtu,
                }
                with _netlink_errors(f"create VXLAN {name} (VNI {vni})"):
                    ipr.link("add", **spec)
                log.info(
                    "created vxlan name=%s vni=%d local=%s dev=%s port=%d mtu=%d netns=%s",
                    name,
                    vni,
                    local,
                    underlay_dev,
                    dstport,
                    mtu,
                    self._where(),
                )
                index = self._require_index(ipr, name)
            else:
                self._set_mtu(ipr, name, index, mtu)
            self.set_up(name)

    def ensure_port(self, bridge: str, port: str) -> None:
        """`port` is enslaved to `bridge` and up."""
        with self._rtnl() as ipr:
            bridge_index = self._require_index(ipr, check_ifname(bridge))
            port_index = self._require_index(ipr, check_ifname(port))
            if self._link(ipr, port_index).get("IFLA_MASTER") != bridge_index:
                with _netlink_errors(f"enslave {port} to {bridge}"):
                    ipr.link("set", index=port_index, master=bridge_index)
                log.info("enslaved port=%s bridge=%s netns=%s", port, bridge, self._where())
            self.set_up(port)

    def ensure_vlan(self, name: str, uplink: str, vlan_id: int) -> None:
        """A vLAN device `name` (id `vlan_id` on `uplink`) exists and is up.

        An existing interface called `name` is adopted as it is, whatever its kind. That is the
        emulated uplink used where the kernel lacks 802.1Q (CONFIG_VLAN_8021Q; creating a vLAN
        then fails with errno 95, EOPNOTSUPP): the lab or test creates, e.g., a veth named
        `vlan_name(uplink, vni)` whose peer plays the switch, and the daemon enslaves it like a
        real vLAN. That exercises the bridge wiring but not 802.1Q tagging itself. A real vLAN
        device of that name with another id or parent is a Conflict, not silently rewired.
        Without the device and without 802.1Q support this raises BackendError.
        """
        check_ifname(name)
        if not 1 <= vlan_id <= 4094:
            raise InvalidValue(f"vLAN id {vlan_id} is out of range: allowed 1-4094")
        with self._rtnl() as ipr:
            uplink_index = self._require_index(ipr, check_ifname(uplink))
            index = self._index(ipr, name)
            if index is not None:
                link = self._link(ipr, index)
                if link.get(("linkinfo", "kind")) == "vlan":
                    data = link.get(("linkinfo", "data"))
                    have_id = data.get("IFLA_VLAN_ID") if data is not None else None
                    if have_id != vlan_id or link.get("IFLA_LINK") != uplink_index:
                        raise Conflict(
                            f"vLAN {name} exists with id {have_id} on another "
                            f"parent; wanted id {vlan_id} on {uplink}"
                        )
                else:
                    log.info(
                        "adopting emulated vlan name=%s kind=%s netns=%s",
                        name,
                        link.get(("linkinfo", "kind")),
                        self._where(),
                    )
            else:
                try:
                    ipr.link("add", ifname=name, kind="vlan", link=uplink_index, vlan_id=vlan_id)
                except netlink_error() as exc:
                    if exc.code == _EOPNOTSUPP:
                        raise BackendError(
                            f"cannot create vLAN {name} (id {vlan_id} on {uplink}): this kernel "
                            "has no 802.1Q support (CONFIG_VLAN_8021Q, module 8021q); load it, "
                            f"or create an interface named {name} beforehand to be adopted"
                        ) from exc
                    raise BackendError(
                        f"netlink: cannot create vLAN {name}: {exc.args[-1]} (errno {exc.code})"
                    ) from exc
                log.info(
                    "created vlan name=%s uplink=%s id=%d netns=%s",
                    name,
                    uplink,
                    vlan_id,
                    self._where(),
                )
            self.set_up(name)

    def delete_link(self, name: str) -> None:
        """Delete interface `name`; nothing happens if it does not exist."""
        with self._rtnl() as ipr:
            index = self._index(ipr, check_ifname(name))
            if index is None:
                return
            try:
                ipr.link("del", index=index)
            except netlink_error() as exc:
                if exc.code != _ENODEV:  # raced with another deleter: fine
                    raise BackendError(f"netlink: cannot delete {name}: {exc.args[-1]}") from exc
            log.info("deleted link name=%s netns=%s", name, self._where())

    # -- VXLAN peers -----------------------------------------------------------------------

    def vxlan_peers(self, vxlan_name: str) -> set[str]:
        """Peers that get a copy of broadcast/unknown frames (all-zero-MAC FDB entries)."""
        with self._rtnl() as ipr:
            return self._peers(ipr, self._require_index(ipr, check_ifname(vxlan_name)))

    def _peers(self, ipr: IPRoute, index: int) -> set[str]:
        peers = set()
        for entry in ipr.fdb("dump", ifindex=index):
            dst = entry.get("NDA_DST")
            if entry.get("ifindex") == index and entry.get("NDA_LLADDR") == ZERO_MAC and dst:
                peers.add(str(ipaddress.ip_address(dst)))
        return peers

    def set_vxlan_peers(self, vxlan_name: str, peers: set[str]) -> None:
        """Make the head-end replication list of `vxlan_name` exactly `peers` (IP addresses).

        Missing peers are appended (a second all-zero entry needs append, not add), stale ones
        deleted; entries already right are left alone so traffic to them never stops.
        """
        wanted = {str(_parse_ip(p, "VXLAN peer address")) for p in peers}
        with self._rtnl() as ipr:
            index = self._require_index(ipr, check_ifname(vxlan_name))
            current = self._peers(ipr, index)
            for peer in sorted(wanted - current):
                with _netlink_errors(f"add VXLAN peer {peer} to {vxlan_name}"):
                    ipr.fdb("append", ifindex=index, lladdr=ZERO_MAC, dst=peer)
                log.info(
                    "vxlan peer added dev=%s peer=%s netns=%s", vxlan_name, peer, self._where()
                )
            for peer in sorted(current - wanted):
                try:
                    ipr.fdb("del", ifindex=index, lladdr=ZERO_MAC, dst=peer)
                except netlink_error() as exc:
                    if exc.code != 2:  # ENOENT: already gone
                        raise BackendError(
                            f"netlink: cannot remove VXLAN peer {peer} from "
                            f"{vxlan_name}: {exc.args[-1]}"
                        ) from exc
                log.info(
                    "vxlan peer removed dev=%s peer=%s netns=%s", vxlan_name, peer, self._where()
                )

    # -- addresses -------------------------------------------------------------------------

    def addresses(self, dev: str) -> list[str]:
        """Addresses of `dev` as CIDR strings (`10.0.0.1/24`), without IPv6 link-local ones."""
        with self._rtnl() as ipr:
            index = self._require_index(ipr, check_ifname(dev))
            result = []
            for msg in ipr.addr("dump", index=index):
                iface = ipaddress.ip_interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
                if not (iface.version == 6 and iface.ip.is_link_local):
                    result.append(str(iface))
            return result

    def ensure_address(self, dev: str, cidr: str) -> None:
        """`dev` has address `cidr` (e.g. `10.0.0.1/24`); IPv6 ones skip duplicate detection."""
        iface = _parse_interface(cidr)
        with self._rtnl() as ipr:
            index = self._require_index(ipr, check_ifname(dev))
            if str(iface) in self.addresses(dev):
                return
            spec: dict[str, Any] = {
                "index": index,
                "address": str(iface.ip),
                "prefixlen": iface.network.prefixlen,
            }
            if iface.version == 6:
                spec["flags"] = 0x02  # IFA_F_NODAD: a gateway address must work at once
            try:
                ipr.addr("add", **spec)
            except netlink_error() as exc:
                if exc.code != _EEXIST:
                    raise BackendError(
                        f"netlink: cannot add {iface} to {dev}: {exc.args[-1]}"
                    ) from exc
            log.info("address added dev=%s address=%s netns=%s", dev, iface, self._where())

    def remove_address(self, dev: str, cidr: str) -> None:
        """`dev` does not have address `cidr`; nothing happens if it has not."""
        iface = _parse_interface(cidr)
        with self._rtnl() as ipr:
            index = self._require_index(ipr, check_ifname(dev))
            if str(iface) not in self.addresses(dev):
                return
            try:
                ipr.addr(
                    "del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
                )
            except netlink_error() as exc:
                if exc.code != _EADDRNOTAVAIL:
                    raise BackendError(
                        f"netlink: cannot remove {iface} from {dev}: {exc.args[-1]}"
                    ) from exc
            log.info("address removed dev=%s address=%s netns=%s", dev, iface, self._where())


def _parse_ip(value: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise InvalidValue(f"{what} {value!r} is not an IPv4 or IPv6 address") from None


def _parse_interface(cidr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError:
        raise InvalidValue(f"address {cidr!r} is not in CIDR form (e.g. 10.0.0.1/24)") from None


def _normalize(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (str(ipaddress.ip_address(v)) if "LOCAL" in k and v else v) for k, v in attrs.items()
    }
