"""DNS across the managed networks (extensions.md §10.2, docs/networking.md "DNS"): what the
primary's resolvers know beyond their own leases, read from the cluster's state.

Every managed network's dnsmasq (the gateway service runs it on the primary) answers its own
leases, as it always did. This module gives it the rest, through the files of
`pvcd.drivers.dnsmasq_dns` (`publish`, called by the gateway's reconcile of the network every
`gateway.POLL_INTERVAL`):

- the forwarding (`pvcd.domain.dns.network_forwarding`): the rest of its own domain and
  reverse zones to the names server, every other network's to that network's gateway, other
  names to the upstream servers (`networks.dns.upstream_servers`, default the primary's
  resolv.conf; none: REFUSED). A changed forwarding is re-read on SIGHUP, which keeps the
  leases: another network's change never restarts this one's DHCP;
- its static names: `<hostname>.<domain>` of each static lease with a host name, so it resolves
  without an active lease, and a guest that claims the name does not get it (dnsmasq does not
  give a lease a name its hosts files give another address).

The names server (`pvcd.controllers.dns_service`) holds `vm_names`: `<vm name>.<domain>` for
each lease (the cluster's copy in ZooKeeper) whose MAC is a VM's NIC on that network's bridge,
when the VM's name is a DNS label. They live apart from the network's dnsmasq because that one
would make a hosts name of a leased address the lease's own name, replacing the guest's.

Guest input: a lease's host name is the guest's and never enters a file here; dnsmasq serves it
under its own rule (`dnsmasq_leasehook.guest_hostname`). VM names and static host names are
checked as DNS labels before they are written.

Domain conflicts (§10.2.4) on a cluster that has them: the lowest VNI keeps the domain
(`pvcd.domain.dns.dns_zones`). The primary's fault monitor (`pvcd.controllers.faults`) raises
`DNS_DOMAIN_CONFLICT_<VNI>` from the same computation; here a conflict is logged once per
change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from pvcd.domain.dns import DnsZones, Forwarding, dns_label, dns_zones, network_forwarding
from pvcd.domain.errors import InvalidValue
from pvcd.domain.records import NetworkSpec, StaticLeaseSpec
from pvcd.drivers.dnsmasq import DnsmasqInstance
from pvcd.drivers.dnsmasq_dns import HostRecord, resolv_conf_servers
from pvcd.drivers.ifnames import bridge_name
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)


def upstream_source(configured: tuple[str, ...] | None) -> Callable[[], tuple[str, ...]]:
    """The upstream servers: as configured, else the primary's resolv.conf (read each time,
    so an edit of it is followed)."""
    if configured is not None:
        servers = tuple(configured)
        return lambda: servers
    return resolv_conf_servers


class NetworkDns:
    """What the resolvers of the managed networks publish, from the cluster's state."""

    def __init__(self, view: ClusterView, upstream: Callable[[], tuple[str, ...]]) -> None:
        self.view = view
        self.upstream = upstream
        self._lock = threading.Lock()
        self._conflicts: dict[int, int] = {}  # the last logged, so each is logged once

    def zones(self) -> DnsZones:
        specs = [spec for spec in (self.view.network(vni) for vni in self.view.network_vnis())
                 if spec is not None]
        zones = dns_zones(specs)
        with self._lock:
            if zones.conflicts != self._conflicts:
                for vni, winner in sorted(zones.conflicts.items()):
                    log.warning("event=dns-domain-conflict fault=DNS_DOMAIN_CONFLICT_%d vni=%d "
                                "kept_by=%d", vni, vni, winner)
                self._conflicts = dict(zones.conflicts)
        return zones

    def forwarding(self, spec: NetworkSpec, zones: DnsZones | None = None) -> Forwarding:
        return network_forwarding(spec.vni, spec.domain, zones or self.zones(),
                                  self.upstream())

    def static_names(self, spec: NetworkSpec, statics: Iterable[StaticLeaseSpec],
                     zones: DnsZones) -> list[HostRecord]:
        """`<hostname>.<domain>` of network `spec`'s static leases (none without a published
        domain)."""
        domain = _published_domain(spec.vni, zones)
        if domain is None:
            return []
        return [HostRecord(static.ip, (f"{static.hostname}.{domain}",)) for static in statics
                if static.hostname and dns_label(static.hostname)]

    def vm_names(self, zones: DnsZones) -> list[HostRecord]:
        """`<vm name>.<domain>` for every lease of a publishing network whose MAC is a VM's NIC
        on that network's bridge (a guest that copies the MAC of a VM on another network does
        not get its name)."""
        vm_names = self.vm_names_by_nic()
        names: dict[str, set[str]] = {}
        for zone in zones.zones:
            if zone.domain is None:
                continue
            bridge = bridge_name(zone.vni)
            for lease in self.view.dhcp_leases(zone.vni):
                vm_name = vm_names.get((lease.mac, bridge))
                if vm_name is not None:
                    names.setdefault(lease.ip, set()).add(f"{vm_name}.{zone.domain}")
        return [HostRecord(ip, tuple(sorted(fqdns))) for ip, fqdns in sorted(names.items())]

    def vm_names_by_nic(self) -> dict[tuple[str, str], str]:
        """(MAC, bridge) → VM name for every VM NIC whose VM name is a DNS label (read from the
        cached documents: this runs on every lease report)."""
        result: dict[tuple[str, str], str] = {}
        cache = self.view.cache
        for uuid in self.view.vm_uuids():
            doc = cache.get(self.view.paths.vm(uuid))
            name = dns_label(doc.get("name")) if isinstance(doc, dict) else None
            if name is None:
                continue
            for nic in _nics(doc):
                mac, bridge = nic.get("mac"), nic.get("source")
                if isinstance(mac, str) and isinstance(bridge, str):
                    result[(mac.lower(), bridge)] = name
        return result

    def publish(self, spec: NetworkSpec, instance: DnsmasqInstance,
                statics: Iterable[StaticLeaseSpec]) -> None:
        """Bring the DNS files of network `spec`'s dnsmasq up to date; a changed forwarding
        is re-read at once (SIGHUP), changed names by dnsmasq itself (inotify)."""
        zones = self.zones()
        files = instance.dns_files()
        try:
            forwarding_changed = files.set_forwarding(self.forwarding(spec, zones))
            names_changed = files.set_names(self.static_names(spec, statics, zones))
        except InvalidValue as exc:  # a value that cannot be written: the files stay as
            # they were (every value was checked on its way in: a tampered document)
            log.error("event=dns-files-unchanged vni=%d reason=%s", spec.vni, exc)
            return
        if forwarding_changed:
            instance.reload()
        if forwarding_changed or names_changed:
            log.info("event=dns-published vni=%d forwarding_changed=%s names_changed=%s",
                     spec.vni, forwarding_changed, names_changed)


def _published_domain(vni: int, zones: DnsZones) -> str | None:
    return next((zone.domain for zone in zones.zones if zone.vni == vni), None)


def _nics(doc: dict[str, Any]) -> list[dict[str, Any]]:
    info = doc.get("info")
    nics = info.get("networks") if isinstance(info, dict) else None
    return [nic for nic in nics if isinstance(nic, dict)] if isinstance(nics, list) else []
