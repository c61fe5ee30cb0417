"""Gateways and DHCP/DNS of the managed networks: only on the primary coordinator.

While this node is primary (a `PrimaryServices` entry, "gateways"), the reconcile of key
`gw/<vni>` puts the network's IPv4/IPv6 gateway addresses on `vmbr<vni>` and runs one supervised
dnsmasq for it (DHCPv4 range, the DNS domain, static leases, router advertisements). Static
leases (desired state, written by the API) reach a running dnsmasq without a restart. Active
leases are read from dnsmasq's lease journal and reported into `networks/<vni>/leases/<mac>`, so
that the next primary knows them: before it starts a network's dnsmasq, it hands that list back
(`set_known_leases`), and clients keep their addresses. The key requeues itself every
`POLL_INTERVAL` seconds: that polls the journal and restarts a dnsmasq that died.

Each network's dnsmasq also resolves the other managed networks' names (`pvcd.controllers.dns`,
extensions.md §10.2): every reconcile brings its DNS files up to date.

Leases are guest input (the host name is the guest's): they are checked where they enter
(`dnsmasq_leasehook.guest_lease`: the hook, the journal, the cluster's copy), so no lease a
guest can make stops a gateway or its dnsmasq.

Every network and static lease document is checked with the API's rules first: a network that
breaks them leaves its gateway as it is, a static lease that does is not handed to dnsmasq, and
the node's status says why (`pvcd.controllers.refusals`).

Handover: `stop()` runs when the role goes (the coordinator calls it before it deletes its lock,
so the next primary starts only afterwards). Networks are reconciled side by side (`WORKERS`),
each under its own lock; `stop()` clears the role, then takes each network's lock in turn, so no
reconcile of it is half-way when it tears it down: last lease report, dnsmasq stopped and
reaped, gateway addresses removed. A reconcile while not primary does that teardown for its
network too, which also cleans up after a crashed pvcd of this node (stray addresses, orphaned
dnsmasq).

Races named: (1) the bridge is made by the network controller; until it exists the reconcile
retries (TemporaryError). (2) A lease report for a network deleted meanwhile fails (its parent
is gone) and is dropped. (3) Killed with SIGKILL, pvcd cannot stop its dnsmasq children; they
keep serving until the node is fenced or pvcd restarts here (the teardown kills them).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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
from pvcd.controllers.dns import NetworkDns
from pvcd.controllers.network import checked_network, vni_of_key, vni_of_path
from pvcd.controllers.node import NodeStatusWriter
from pvcd.controllers.refusals import Refusals
from pvcd.controllers.restore_hold import hold_during_restore
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, PvcError
from pvcd.domain.records import DhcpLease, NetworkSpec, StaticLeaseSpec
from pvcd.drivers.announce import announce
from pvcd.drivers.dnsmasq import DnsmasqConfig, DnsmasqInstance, Lease, StaticLease
from pvcd.drivers.dnsmasq_leasehook import guest_lease
from pvcd.drivers.ifnames import bridge_name
from pvcd.drivers.netlink import NetlinkDriver
from pvcd.drivers.netns import run_in_netns
from pvcd.specs.networks import check_static_lease_document
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5  # seconds between lease reports / dnsmasq liveness checks
# networks reconciled at once: after a handover every network's dnsmasq starts (≈ 0.1-0.5 s
# each, its lease hook's `init` included), so they come up side by side, not one by one
WORKERS = 4
MAX_OPS = 500  # per ZooKeeper transaction (well under the 1 MiB request limit)


def gw_key(vni: int) -> str:
    return f"gw/{vni}"


def gateway_addresses(spec: NetworkSpec) -> list[str]:
    """The gateway addresses of a network in CIDR form, e.g. ['10.0.0.1/24', 'fd00::1/64']."""
    result = []
    if spec.ip4_network and spec.ip4_gateway:
        prefix = ipaddress.ip_network(spec.ip4_network).prefixlen
        result.append(f"{spec.ip4_gateway}/{prefix}")
    if spec.ip6_network:
        network = ipaddress.ip_network(spec.ip6_network)
        gateway = spec.ip6_gateway or str(network.network_address + 1)
        result.append(f"{ipaddress.ip_address(gateway)}/{network.prefixlen}")
    return result


@dataclass(frozen=True)
class _Running:
    instance: DnsmasqInstance
    config: DnsmasqConfig


class GatewayService:
    """The primary's gateways and dnsmasq instances; `start`/`stop` follow the primary role."""

    def __init__(self, name: str, view: ClusterView, store: Store, links: NetlinkDriver,
                 config: NetworkDriverSection, refusals: Refusals, dns: NetworkDns) -> None:
        self.name = name
        self.dns = dns
        self.view = view
        self.store = store
        self.links = links
        self.config = config
        self.refusals = refusals
        self.active = False
        # its own work queue: taking the primary role enqueues every network
        self.controller = Controller("gateway", hold_during_restore(view, self.reconcile),
                                     self.keys, workers=WORKERS,
                                     resync_interval=config.resync_interval)
        self._lock = threading.Lock()  # the role and the tables below; held only briefly
        self._running: dict[int, _Running] = {}
        self._network_locks: dict[int, threading.Lock] = {}

    # the primary role
    def start(self) -> None:
        with self._lock:
            self.active = True
        self._enable_routing()
        log.info("event=gateways-start node=%s", self.name)
        for vni in self.view.network_vnis():
            self.controller.enqueue(gw_key(vni))

    def stop(self) -> None:
        with self._lock:
            self.active = False
            vnis = sorted(set(self._running) | set(self.view.network_vnis()))
        for vni in vnis:
            with self._network_lock(vni):  # waits for a reconcile of it that is half-way
                try:
                    self._teardown(vni)
                except Exception:
                    log.exception("event=gateway-teardown-failed node=%s vni=%d", self.name, vni)
        log.info("event=gateways-stopped node=%s", self.name)

    def _network_lock(self, vni: int) -> threading.Lock:
        """One network's reconcile or teardown at a time (networks go side by side)."""
        with self._lock:
            return self._network_locks.setdefault(vni, threading.Lock())

    def _enable_routing(self) -> None:
        """The gateways route between the client networks (their ACL chains see the routed
        traffic in the forward hook): IPv4 and IPv6 forwarding on, in the node's namespace."""

        def enable() -> None:
            for path in ("/proc/sys/net/ipv4/ip_forward",
                         "/proc/sys/net/ipv6/conf/all/forwarding"):
                with open(path, "w") as handle:
                    handle.write("1\n")

        try:
            run_in_netns(self.config.netns, enable)
        except OSError as exc:
            log.error("event=routing-enable-failed node=%s error=%r", self.name, exc)

    # keys
    def keys(self) -> Iterable[str]:
        with self._lock:
            running = set(self._running)
        return [gw_key(v) for v in sorted(set(self.view.network_vnis()) | running)]

    def key_of_path(self, path: str) -> str | None:
        """The network's document and its static leases matter (not the leases we report)."""
        paths = self.view.paths
        vni = vni_of_path(paths.networks, path)
        if vni is None or not (path == paths.network(vni) or
                               path.startswith(paths.network_static_leases(vni))):
            return None
        return gw_key(vni)

    # reconcile
    def reconcile(self, key: str) -> Result:
        vni = vni_of_key(key)
        with self._network_lock(vni):
            with self._lock:  # `stop()` clears it first, then waits for this network's lock
                active = self.active
            if not active:
                self._teardown(vni)
                return DONE
            try:
                spec = checked_network(self.view, vni)
            except InvalidValue as exc:  # its gateway stays as it is (the network controller
                # reports the refusal)
                log.warning("event=gateway-unchanged node=%s vni=%d reason=%s", self.name, vni,
                            exc)
                return DONE
            if spec is None or spec.type != "managed":
                served = vni in self._running
                self._teardown(vni)
                if served:
                    self._requeue_others(vni)
                return DONE
            return self._serve(spec)

    def _serve(self, spec: NetworkSpec) -> Result:
        bridge = bridge_name(spec.vni)
        if not self.links.link_exists(bridge):
            raise TemporaryError(f"bridge {bridge} does not exist yet")
        wanted = gateway_addresses(spec)
        for address in self.links.addresses(bridge):
            if address not in wanted:
                self.links.remove_address(bridge, address)
        for address in wanted:
            self.links.ensure_address(bridge, address)
        config = self._dnsmasq_config(spec)
        running = self._running.get(spec.vni)
        if running is not None and running.config != config:
            self._report_leases(spec.vni, running.instance.leases())
            running.instance.stop()
            with self._lock:
                del self._running[spec.vni]
            running = None
        if config is None:
            return DONE
        accepted = self._static_leases(spec)
        statics = [StaticLease(s.mac, s.ip, s.hostname) for s in accepted]
        if running is None:
            instance = DnsmasqInstance(config)
            known = self._known_leases(spec.vni)
            instance.set_known_leases(known)
            instance.set_static_leases(statics)
            self.dns.publish(spec, instance, accepted)  # its DNS files before it starts
            instance.start()
            with self._lock:
                self._running[spec.vni] = _Running(instance, config)
            for gateway in (spec.ip4_gateway, spec.ip6_gateway):
                if gateway:
                    announce(self.config.netns, bridge, gateway, router=True)
            log.info("event=gateway-up node=%s vni=%d addresses=%s known_leases=%d", self.name,
                     spec.vni, ",".join(wanted), len(known))
            self._requeue_others(spec.vni)
        else:
            instance = running.instance
            instance.set_static_leases(statics)
            instance.supervise()
        leases = instance.leases()
        self.dns.publish(spec, instance, accepted)
        self._report_leases(spec.vni, leases)
        return Result(requeue_after=POLL_INTERVAL)

    def _requeue_others(self, vni: int) -> None:
        """A network's DNS zone came or went: the other networks' resolvers learn of it now,
        not at their next poll (`pvcd.controllers.dns`)."""
        for other in self.view.network_vnis():
            if other != vni:
                self.controller.enqueue(gw_key(other))

    def _static_leases(self, spec: NetworkSpec) -> list[StaticLeaseSpec]:
        """The network's static leases that the API's rules allow (each against the network
        and the ones before it, as the API adds them); the others are reported refused."""
        path = self.view.paths.network_static_leases(spec.vni)
        accepted: list[StaticLeaseSpec] = []
        refused: dict[str, str] = {}
        for mac in self.view.cache.children(path):
            try:
                accepted.append(check_static_lease_document(
                    spec, mac, self.view.cache.get(f"{path}/{mac}"), accepted))
            except InvalidValue as exc:
                refused[f"static-lease/{spec.vni}/{mac}"] = str(exc)
        self.refusals.report(f"static-lease/{spec.vni}", refused)
        return accepted

    def _dnsmasq_config(self, spec: NetworkSpec) -> DnsmasqConfig | None:
        if not (spec.ip4_network or spec.ip6_network):
            return None  # nothing to serve: no addresses, hence no DHCP, RA or DNS
        dhcp = spec.dhcp4 and spec.ip4_network is not None
        return DnsmasqConfig(
            interface=bridge_name(spec.vni),
            state_dir=Path(self.config.state_dir) / str(spec.vni),
            netns=self.config.netns,
            domain=spec.domain,
            ip4_network=spec.ip4_network,
            ip4_gateway=spec.ip4_gateway if spec.ip4_network else None,
            dhcp4_start=spec.dhcp4_start if dhcp else None,
            dhcp4_end=spec.dhcp4_end if dhcp else None,
            ip6_network=spec.ip6_network,
            ip6_gateway=spec.ip6_gateway if spec.ip6_network else None,
            user=self.config.dnsmasq_user,
            dns_files=True,
        )

    def _teardown(self, vni: int) -> None:
        """No gateway and no dnsmasq of `vni` on this node (idempotent)."""
        with self._lock:
            running = self._running.pop(vni, None)
        if running is not None:
            try:
                self._report_leases(vni, running.instance.leases())
            except Exception as exc:  # the next primary starts from the last report
                log.warning("event=lease-report-failed node=%s vni=%d error=%r", self.name, vni,
                            exc)
            running.instance.stop()
            log.info("event=gateway-down node=%s vni=%d", self.name, vni)
        bridge = bridge_name(vni)
        if self.links.link_exists(bridge):
            for address in self.links.addresses(bridge):  # only gateways live on a vmbr
                self.links.remove_address(bridge, address)
        state_dir = Path(self.config.state_dir) / str(vni)
        if state_dir.exists():  # a dnsmasq left by a crashed pvcd of this node
            orphan = DnsmasqInstance(DnsmasqConfig(interface=bridge, state_dir=state_dir,
                                                   netns=self.config.netns,
                                                   user=self.config.dnsmasq_user))
            for pid in orphan.processes():  # found by this network's hosts directory
                log.warning("event=dnsmasq-orphan-killed node=%s vni=%d pid=%d", self.name,
                            vni, pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:  # its static leases are the primary's to report
            self.refusals.report(f"static-lease/{vni}", {})
        except PvcError as exc:  # (no session: the next primary reports afresh)
            log.info("event=refusals-not-cleared node=%s vni=%d error=%s", self.name, vni, exc)

    # leases
    def _known_leases(self, vni: int) -> list[Lease]:
        """The leases the cluster knows for `vni`, as the next dnsmasq gets them back. They
        came from guests: each document is checked (`guest_lease`), one that cannot be kept
        is left out, and none can keep dnsmasq from starting."""
        path = self.view.paths.network_leases(vni)
        known = []
        for mac in self.view.cache.children(path):
            doc = self.view.cache.get(f"{path}/{mac}")
            lease = guest_lease(doc.get("mac"), doc.get("ip"), doc.get("hostname"),
                                doc.get("expires", 0)) if isinstance(doc, dict) else None
            if lease is None or lease.mac != mac:
                log.warning("event=known-lease-dropped node=%s vni=%d mac=%r", self.name, vni,
                            mac)
            else:
                known.append(lease)
        return known

    def _report_leases(self, vni: int, leases: list[Lease]) -> None:
        """Make `networks/<vni>/leases` hold exactly dnsmasq's current leases."""
        current = {le.mac: le for le in leases}
        paths = self.view.paths
        ops: list[Op] = []
        for mac, lease in sorted(current.items()):
            doc = DhcpLease(lease.mac, lease.ip, lease.hostname, lease.expires).to_doc()
            entry = self.view.cache.entry(paths.network_lease(vni, mac))
            if entry is None:
                ops.append(Op.create(paths.network_lease(vni, mac), doc))
            elif entry.doc != doc:
                ops.append(Op.set(paths.network_lease(vni, mac), doc, entry.version))
        for mac in self.view.cache.children(paths.network_leases(vni)):
            if mac not in current:
                ops.append(Op.delete(paths.network_lease(vni, mac)))
        for start in range(0, len(ops), MAX_OPS):
            try:
                self.store.commit(ops[start:start + MAX_OPS])
            except (Conflict, BackendError) as exc:  # a race or a deleted network: next poll
                log.info("event=lease-report-retry node=%s vni=%d reason=%s", self.name, vni, exc)
                return
        if ops:
            log.info("event=leases-reported node=%s vni=%d leases=%d changes=%d", self.name, vni,
                     len(current), len(ops))


def build_gateways(node: str, view: ClusterView, store: Store, links: NetlinkDriver,
                   config: NetworkDriverSection, writer: NodeStatusWriter,
                   dns: NetworkDns) -> Wiring:
    """Gateways and dnsmasq of the managed networks, acting while this node is primary (the
    "gateways" service)."""
    service = GatewayService(node, view, store, links, config, Refusals(node, writer), dns)
    wiring = Wiring(services=[PrimaryService("gateways", service.start, service.stop)])
    wiring.add(service.controller, Watch(view.paths.networks + "/", service.key_of_path))
    return wiring
