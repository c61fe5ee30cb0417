"""The network controller: on every node, the kernel interfaces of every client network.

For a `managed` network (VXLAN) it keeps `vxlan<vni>` (VNI <vni>, dstport 4789, local = this
node's underlay address, over the underlay device) enslaved to the bridge `vmbr<vni>`, both with
MTU = underlay MTU - 50, and the tunnel's head-end replication list equal to the underlay
addresses of the other *live* nodes. For a `bridged` network (vLAN) it keeps the vLAN interface
`<uplink>.<vni>` enslaved to `vmbr<vni>` (an existing interface of that name is adopted: that is
how kernels without 802.1Q are emulated; see drivers/netlink.py), MTU = the uplink's. A network
that is gone from ZooKeeper loses its interfaces.

Every network document is checked with the API's rules first (`checked_network`): one that
breaks them changes nothing here, and the node's status says why (`pvcd.controllers.refusals`).

Keys: `net/<vni>` (one network) and `peers` (the live nodes or their addresses changed; also
publishes this node's own underlay address in its status, which is how peers find it). The
watch only enqueues; `reconcile` re-reads the cache and the kernel every time, and the resync
(`drivers.network.resync_interval`) re-checks every network, so an interface deleted by hand comes
back within one interval. Interfaces named `vmbr<N>` / `vxlan<N>` in the node's namespace are
pvcd's: one without a network in ZooKeeper is removed.

Races named: a node that dies is dropped from the peer lists when its ephemeral `alive` znode
goes (session timeout); until then frames to it are lost, which is harmless. A node that joins is
added as soon as it has published its address.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from pvcd.config import NetworkDriverSection
from pvcd.controllers.base import DONE, Controller, Result, TemporaryError, Watch, Wiring
from pvcd.controllers.node import NodeStatusWriter
from pvcd.controllers.refusals import Refusals
from pvcd.controllers.restore_hold import hold_during_restore
from pvcd.domain.errors import InvalidValue, NotFound
from pvcd.domain.records import NetworkSpec
from pvcd.drivers.ifnames import bridge_name, vlan_name, vxlan_mtu, vxlan_name
from pvcd.drivers.netlink import NetlinkDriver
from pvcd.specs.networks import check_network_document
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

PEERS_KEY = "peers"
VXLAN_PORT = 4789
_OURS = re.compile(r"(vmbr|vxlan)(\d+)")


def net_key(vni: int) -> str:
    return f"net/{vni}"


def vni_of_key(key: str) -> int:
    return int(key.split("/", 1)[1])


def vni_of_path(networks_path: str, path: str) -> int | None:
    """The VNI a path below `<root>/networks/` belongs to, or None."""
    rest = path[len(networks_path) + 1:]
    head = rest.split("/", 1)[0]
    return int(head) if head.isdigit() else None


def checked_network(view: ClusterView, vni: int) -> NetworkSpec | None:
    """Network `vni` as the API's rules allow it (normalised), None when it is gone;
    InvalidValue when its document breaks them: then nothing of it may change on the host
    (docs/security.md, "Daemons re-validate")."""
    path = view.paths.network(vni)
    if not view.cache.exists(path):
        return None
    return check_network_document(vni, view.cache.get(path))


def refusal_key(vni: int) -> str:
    """The key under which a node reports that it refuses network `vni`'s document."""
    return f"network/{vni}"


def live_peers(view: ClusterView, me: str) -> set[str]:
    """Underlay addresses of the other nodes whose daemon is alive."""
    peers = set()
    for name in view.node_names():
        if name == me or not view.node_alive(name):
            continue
        address = view.node_underlay_address(name)
        if address:
            peers.add(address)
    return peers


class NetworkController:
    def __init__(self, name: str, view: ClusterView, links: NetlinkDriver,
                 config: NetworkDriverSection, writer: NodeStatusWriter) -> None:
        self.name = name
        self.view = view
        self.links = links
        self.config = config
        self.writer = writer
        self.refusals = Refusals(name, writer)
        # its own work queue: a change of peers re-enqueues every network
        self.controller = Controller("network", hold_during_restore(view, self.reconcile),
                                     self.keys,
                                     resync_interval=config.resync_interval)
        self._last_peers: set[str] | None = None  # only to skip needless re-enqueues

    # keys
    def keys(self) -> Iterable[str]:
        vnis = set(self.view.network_vnis())
        for link in self.links.list_links():
            found = _OURS.fullmatch(link)
            if found:
                vnis.add(int(found.group(2)))
        return [PEERS_KEY, *(net_key(v) for v in sorted(vnis))]

    def key_of_path(self, path: str) -> str | None:
        """Only a network's own document matters here (not its leases or ACLs)."""
        vni = vni_of_path(self.view.paths.networks, path)
        if vni is None or path != self.view.paths.network(vni):
            return None
        return net_key(vni)

    # reconcile
    def reconcile(self, key: str) -> Result:
        if key == PEERS_KEY:
            return self._reconcile_peers()
        vni = vni_of_key(key)
        try:
            spec = checked_network(self.view, vni)
        except InvalidValue as exc:  # refused: its interfaces stay as they are
            self.refusals.report(refusal_key(vni), {refusal_key(vni): str(exc)})
            return DONE
        self.refusals.report(refusal_key(vni), {})
        if spec is None:
            self._remove(vni)
        elif spec.type == "managed":
            return self._managed(spec)
        else:
            return self._bridged(spec)
        return DONE

    def _reconcile_peers(self) -> Result:
        address = self.config.underlay_address
        status = self.view.node_status(self.name)
        if address and status is not None and status.underlay_address != address:
            self.writer.update(lambda s: setattr(s, "underlay_address", address))
            log.info("event=underlay-address-published node=%s address=%s", self.name, address)
        peers = live_peers(self.view, self.name)
        if peers != self._last_peers:
            log.info("event=vxlan-peers node=%s peers=%s", self.name, ",".join(sorted(peers)))
            self._last_peers = peers
            for vni in self.view.network_vnis():
                self.controller.enqueue(net_key(vni))
        return DONE

    def _managed(self, spec: NetworkSpec) -> Result:
        device, local = self.config.underlay_device, self.config.underlay_address
        if device is None or local is None:
            log.warning("event=network-skipped node=%s vni=%d reason=no-underlay-configured",
                        self.name, spec.vni)
            return Result(requeue_after=60.0)
        bridge, tunnel = bridge_name(spec.vni), vxlan_name(spec.vni)
        try:
            mtu = vxlan_mtu(self.links.link_mtu(device))
        except NotFound as exc:
            raise TemporaryError(f"underlay device {device} is missing") from exc
        self.links.ensure_bridge(bridge, mtu)
        self.links.ensure_vxlan(tunnel, spec.vni, local, device, VXLAN_PORT, mtu)
        self.links.ensure_port(bridge, tunnel)
        self.links.set_vxlan_peers(tunnel, live_peers(self.view, self.name))
        return DONE

    def _bridged(self, spec: NetworkSpec) -> Result:
        uplink = self.config.uplink_device
        if uplink is None:
            log.warning("event=network-skipped node=%s vni=%d reason=no-uplink-configured",
                        self.name, spec.vni)
            return Result(requeue_after=60.0)
        bridge, vlan = bridge_name(spec.vni), vlan_name(uplink, spec.vni)
        try:
            mtu = self.links.link_mtu(uplink)
        except NotFound as exc:
            raise TemporaryError(f"uplink device {uplink} is missing") from exc
        self.links.ensure_bridge(bridge, mtu)
        self.links.ensure_vlan(vlan, uplink, spec.vni)
        self.links.ensure_port(bridge, vlan)
        return DONE

    def _remove(self, vni: int) -> None:
        bridge, tunnel = bridge_name(vni), vxlan_name(vni)
        removed = False
        for name in (tunnel, bridge):
            if self.links.link_exists(name):
                self.links.delete_link(name)
                removed = True
        uplink = self.config.uplink_device
        if uplink is not None and 1 <= vni <= 4094:
            vlan = vlan_name(uplink, vni)
            # only a real vLAN we created; an adopted (emulated) interface is not ours to delete
            if self.links.link_exists(vlan) and self.links.link_kind(vlan) == "vlan":
                self.links.delete_link(vlan)
                removed = True
        if removed:
            log.info("event=network-removed node=%s vni=%d", self.name, vni)


def build_interfaces(node: str, view: ClusterView, links: NetlinkDriver,
                     config: NetworkDriverSection, writer: NodeStatusWriter) -> Wiring:
    """The interfaces of every client network on this node, fed by the networks and (for the
    VXLAN peer lists) the nodes in the cache."""
    network = NetworkController(node, view, links, config, writer)
    wiring = Wiring()
    wiring.add(network.controller, Watch(view.paths.networks + "/", network.key_of_path),
               Watch(view.paths.nodes + "/", lambda path: PEERS_KEY))
    return wiring
