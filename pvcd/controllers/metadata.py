"""The cloud-init metadata service (extensions.md §4): 169.254.169.254:80 on the primary.

While this node is primary (a `PrimaryServices` entry, "metadata") the address is on the
node's loopback, as PVC does, and one listener per managed network is bound to its bridge
`vmbr<vni>` (`pvcd.drivers.device_sockets`: the kernel matches a connection only to the
listener of the bridge it arrived on, so nothing from another network, the cluster network or
the host reaches the service). Guests reach the address through their default gateway, which is
the network's gateway on the primary: no extra route is handed out. Client-network ACLs let the
exchange through on every node (`pvcd.controllers.firewall.metadata_rules`).

The reconcile of key `md/<vni>` keeps that network's listener: bound while the network is
managed and its bridge exists, bound again when the bridge was made anew (a new ifindex),
closed otherwise. `stop()` (the role goes; the coordinator calls it before it gives up its
lock) closes every listener and connection and removes the address, so the next primary's
listeners are the only ones; the first reconcile of a node that is not primary removes an
address a crashed pvcd of this node left behind.

A request is answered by `GuestIdentity` at request time, from the watch-fed cache (leases,
VMs, the provisioner's profiles and userdata) and the kernel's neighbour table: §4's
identification, plus pvcd's check that the host's own neighbour entry for the source address
shows the lease's MAC (a guest that took another's address gets 404, docs/security.md).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable

from pvcd.config import NetworkDriverSection
from pvcd.controllers.base import (
    DONE,
    Controller,
    PrimaryService,
    Result,
    TemporaryError,
    Watch,
    Wiring,
)
from pvcd.controllers.metadata_http import Limits, MetadataHttpServer
from pvcd.controllers.network import checked_network, vni_of_key, vni_of_path
from pvcd.domain.errors import InvalidValue
from pvcd.domain.metadata import (
    METADATA_ADDRESS,
    METADATA_PORT,
    NOT_FOUND,
    ROOT,
    ROOT_REPLY,
    USER_DATA,
    Instance,
    LeaseEntry,
    Reply,
    answer,
    lease_mac,
    route,
    vm_with_interface,
)
from pvcd.domain.provisioner import Profile, Userdata
from pvcd.drivers.device_sockets import device_index, device_listener
from pvcd.drivers.ifnames import bridge_name
from pvcd.drivers.neighbours import NeighbourTable
from pvcd.drivers.netlink import NetlinkDriver
from pvcd.state.view import ClusterView
from pvcd.vmxml import parse_domain_xml

log = logging.getLogger(__name__)

LOOPBACK = "lo"
_OBJECT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,62}")  # extensions.md §0.2

Nics = tuple[tuple[str, str], ...]  # (mac, source) of a VM's interfaces


def md_key(vni: int) -> str:
    return f"md/{vni}"


class GuestIdentity:
    """Who a request comes from, and what its profile's user-data is: cache reads only, plus
    `neighbour(bridge, address)` (the kernel's MAC for it; blocking, so not on an event loop)."""

    def __init__(self, view: ClusterView, neighbour: Callable[[str, str], str | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.neighbour = neighbour
        self.clock = clock
        self._nics: dict[str, Nics] = {}  # by XML text: each VM's XML is parsed once

    def instance(self, vni: int, source: str) -> Instance | str:
        """The VM at `source` on network `vni`, or why there is none."""
        mac = lease_mac(source, self._leases(self.view.paths.network_leases(vni)),
                        self._leases(self.view.paths.network_static_leases(vni)), self.clock())
        if mac is None:
            return "no single lease holds the address"
        bridge = bridge_name(vni)
        uuid = vm_with_interface(mac, bridge, self._interfaces())
        if uuid is None:
            return f"no single VM has an interface {mac} on {bridge}"
        seen = self.neighbour(bridge, source)
        if seen != mac:
            return f"the host's neighbour entry shows {seen or 'no MAC'}, the lease {mac}"
        spec = self.view.vm_spec(uuid)
        if spec is None:
            return "the VM is gone"
        profile = spec.profile if isinstance(spec.profile, str) else None
        return Instance(uuid=uuid, name=str(spec.name), profile=profile)

    def userdata(self, instance: Instance) -> str | None:
        """The text of the userdata the VM's profile names, as stored now; None if none."""
        cache, paths = self.view.cache, self.view.paths
        if instance.profile is None or not _OBJECT_NAME.fullmatch(instance.profile):
            return None
        doc = cache.get(paths.provisioner_object("profile", instance.profile))
        name = Profile.from_doc(doc).userdata if doc is not None else None
        if name is None or not _OBJECT_NAME.fullmatch(name):
            return None
        doc = cache.get(paths.provisioner_object("userdata", name))
        return Userdata.from_doc(doc).userdata if doc is not None else None

    def _leases(self, folder: str) -> list[LeaseEntry]:
        cache = self.view.cache
        leases = []
        for mac in cache.children(folder):
            doc = cache.get(f"{folder}/{mac}")
            if not isinstance(doc, dict):
                continue
            expires = doc.get("expires", 0)
            if isinstance(doc.get("mac"), str) and isinstance(doc.get("ip"), str) and \
                    isinstance(expires, int) and not isinstance(expires, bool):
                leases.append(LeaseEntry(doc["mac"], doc["ip"], expires))
        return leases

    def _interfaces(self) -> Iterable[tuple[str, Nics]]:
        cache, paths = self.view.cache, self.view.paths
        known, memo = self._nics, {}
        result = []
        for uuid in self.view.vm_uuids():
            doc = cache.get(paths.vm(uuid))
            xml = doc.get("xml") if isinstance(doc, dict) else None
            if not isinstance(xml, str):
                continue
            nics = known.get(xml)
            if nics is None:
                try:
                    nics = tuple((n.mac or "", n.source or "")
                                 for n in parse_domain_xml(xml).networks if n.type == "bridge")
                except InvalidValue:
                    nics = ()
            memo[xml] = nics
            result.append((uuid, nics))
        self._nics = memo  # only the XML of VMs that exist stays
        return result


class MetadataService:
    """The primary's metadata service; `start`/`stop` follow the primary role.
    `neighbour(bridge, address)`: the MAC the kernel resolved `address` to on `bridge`."""

    def __init__(self, name: str, view: ClusterView, links: NetlinkDriver,
                 config: NetworkDriverSection, neighbour: Callable[[str, str], str | None],
                 clock: Callable[[], float] = time.time, port: int = METADATA_PORT,
                 limits: Limits | None = None) -> None:
        self.name = name
        self.view = view
        self.links = links
        self.netns = config.netns
        self.port = port
        self.identity = GuestIdentity(view, neighbour, clock)
        self.server = MetadataHttpServer(self.answer, limits)
        self.controller = Controller("metadata", self.reconcile, self.keys,
                                     resync_interval=config.resync_interval)
        self.active = False
        self._lock = threading.RLock()
        self._bound: dict[int, int] = {}  # vni → the bridge's ifindex its listener is bound to
        self._address_up = False
        self._cleaned = False

    # the primary role
    def start(self) -> None:
        with self._lock:
            self.active = True
            self.server.start()
            try:
                self._ensure_address()
            except Exception as exc:  # the reconciles retry it
                log.error("event=metadata-address-failed node=%s error=%r", self.name, exc)
        log.info("event=metadata-start node=%s", self.name)
        for vni in self.view.network_vnis():
            self.controller.enqueue(md_key(vni))

    def stop(self) -> None:
        with self._lock:
            self.active = False
            self._bound.clear()
            try:
                self.server.stop()
            except Exception:
                log.exception("event=metadata-server-stop-failed node=%s", self.name)
            self._remove_address()
        log.info("event=metadata-stopped node=%s", self.name)

    def _ensure_address(self) -> None:
        if not self._address_up:
            self.links.ensure_address(LOOPBACK, f"{METADATA_ADDRESS}/32")
            self._address_up = True

    def _remove_address(self) -> None:
        try:
            self.links.remove_address(LOOPBACK, f"{METADATA_ADDRESS}/32")
            self._address_up = False
        except Exception as exc:  # must not stop the rest of the handover
            log.error("event=metadata-address-remove-failed node=%s error=%r", self.name, exc)

    # keys
    def keys(self) -> Iterable[str]:
        with self._lock:
            bound = set(self._bound)
        return [md_key(v) for v in sorted(set(self.view.network_vnis()) | bound)]

    def key_of_path(self, path: str) -> str | None:
        """Only the network's own document matters (its type; its removal)."""
        vni = vni_of_path(self.view.paths.networks, path)
        return md_key(vni) if vni is not None and path == self.view.paths.network(vni) else None

    # reconcile
    def reconcile(self, key: str) -> Result:
        vni = vni_of_key(key)
        with self._lock:
            if not self.active:
                if not self._cleaned:  # what a crashed pvcd of this node left
                    self._remove_address()
                    self._cleaned = True
                return DONE
            try:
                spec = checked_network(self.view, vni)
            except InvalidValue:  # left as it is (the network controller reports it)
                return DONE
            if spec is None or spec.type != "managed":
                self._unbind(vni)
                return DONE
            self._ensure_address()
            bridge = bridge_name(vni)
            index = device_index(self.netns, bridge)
            if index is None:
                self._unbind(vni)
                raise TemporaryError(f"bridge {bridge} does not exist yet")
            if self._bound.get(vni) == index:
                return DONE
            sock, index = device_listener(self.netns, bridge, METADATA_ADDRESS, self.port)
            try:
                self.server.listen(vni, sock)
            except BaseException:
                sock.close()
                raise
            self._bound[vni] = index
            log.info("event=metadata-listening node=%s vni=%d bridge=%s", self.name, vni, bridge)
            return DONE

    def _unbind(self, vni: int) -> None:
        if self._bound.pop(vni, None) is not None:
            self.server.close(vni)
            log.info("event=metadata-closed node=%s vni=%d", self.name, vni)

    # requests (on the server's worker threads)
    def answer(self, vni: int, source: str, method: str, target: str) -> Reply:
        resource = route(method, target)
        if resource is None:
            return NOT_FOUND
        if resource == ROOT:
            return ROOT_REPLY
        instance = self.identity.instance(vni, source)
        if isinstance(instance, str):
            self.server.refusals.refused(vni, source, instance)
            return NOT_FOUND
        userdata = self.identity.userdata(instance) if resource == USER_DATA else None
        return answer(resource, instance, userdata)


def build_metadata(node: str, view: ClusterView, config: NetworkDriverSection, coordinator: bool,
                   enabled: bool, links: NetlinkDriver | None = None) -> Wiring:
    """The "metadata" primary service of a coordinator whose node carries client networks
    (`metadata.enabled`); nothing otherwise."""
    if not (enabled and coordinator) or config.underlay_device is None:
        return Wiring()  # (bridged networks only: no gateway of ours, nothing to serve)
    service = MetadataService(node, view, links or NetlinkDriver(config.netns), config,
                              NeighbourTable(config.netns).mac_of)
    wiring = Wiring(services=[PrimaryService("metadata", service.start, service.stop)])
    wiring.add(service.controller, Watch(view.paths.networks + "/", service.key_of_path))
    return wiring
