"""The primary's own DNS servers (extensions.md §10.2): the names server and the floating
server. A primary service ("dns").

While this node is primary, the one key `dns` is reconciled whenever a network document, a
lease the gateway reported or a VM document changes (and every `SUPERVISE_INTERVAL`, which also
restarts a server that died):
- the names server (`pvcd.domain.dns.NAMES_SERVER`) gets the `<vm name>.<domain>` records
  (`NetworkDns.vm_names`), which every network's resolver asks last;
- the floating server, when a floating address is configured, gets every published domain and
  reverse zone (`floating_forwarding`): it asks the networks' gateways and never recurses.

A VM name follows its lease through ZooKeeper: the gateway reports a new lease within its poll
(0.5 s), and the watch brings it here at once. `stop()` (the role goes: before the floating
addresses are removed, since services stop in reverse order) stops both servers under the
reconcile's lock, so no reconcile starts them again; a reconcile while not primary stops them
too, and the first one after pvcd starts also kills servers a crashed pvcd of this node left
(a start kills them anyway: they would hold the addresses).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from pathlib import Path

from pvcd.config import NetworkDriverSection, NetworksSection
from pvcd.controllers.base import DONE, Controller, PrimaryService, Result, Watch, Wiring
from pvcd.controllers.dns import NetworkDns
from pvcd.controllers.network import vni_of_path
from pvcd.domain.dns import NAMES_SERVER, floating_forwarding, names_forwarding
from pvcd.domain.errors import InvalidValue, PvcError
from pvcd.drivers.dns_server import DnsServer, DnsServerConfig
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

KEY = "dns"
SUPERVISE_INTERVAL = 1.0  # seconds between liveness checks of the servers


class DnsService:
    def __init__(self, view: ClusterView, dns: NetworkDns, names: DnsServer,
                 floating: DnsServer | None, resync_interval: float) -> None:
        self.view = view
        self.dns = dns
        self.names = names
        self.floating = floating
        self.active = False
        self._orphans_killed = False  # once per daemon: servers a crashed pvcd left
        self._lock = threading.Lock()
        self.controller = Controller("dns", self.reconcile, lambda: [KEY],
                                     resync_interval=resync_interval)

    def servers(self) -> list[DnsServer]:
        return [self.names] + ([self.floating] if self.floating is not None else [])

    def start(self) -> None:
        with self._lock:
            self.active = True
        self.controller.enqueue(KEY)

    def stop(self) -> None:
        with self._lock:
            self.active = False
            for server in self.servers():
                server.stop()
        log.info("event=dns-servers-stopped")

    def key_of_path(self, path: str) -> str | None:
        """Network documents and reported leases; VM documents (names, NICs)."""
        paths = self.view.paths
        vni = vni_of_path(paths.networks, path)
        if vni is not None:
            if path == paths.network(vni) or path.startswith(paths.network_leases(vni)):
                return KEY
            return None
        if path.startswith(paths.vms + "/") and path.count("/") == paths.vms.count("/") + 1:
            return KEY
        return None

    def reconcile(self, key: str) -> Result:
        with self._lock:
            if not self.active:
                for server in self.servers():
                    server.stop()
                    if not self._orphans_killed:
                        server.kill_orphans()
                self._orphans_killed = True
                return DONE
            zones = self.dns.zones()
            work = [(self.names, names_forwarding(zones), self.dns.vm_names(zones))]
            if self.floating is not None:
                work.append((self.floating, floating_forwarding(zones), []))
            failed: list[PvcError] = []
            for server, forwarding, names in work:  # one failing does not hold the other up
                try:
                    server.serve(forwarding, names)
                except InvalidValue as exc:  # (every value was checked on its way in)
                    log.error("event=dns-server-unchanged server=%s reason=%s",
                              server.config.name, exc)
                except PvcError as exc:  # e.g. it cannot bind: backed off, tried again
                    log.error("event=dns-server-failed server=%s reason=%s",
                              server.config.name, exc)
                    failed.append(exc)
            if failed:
                raise failed[0]
        return Result(requeue_after=SUPERVISE_INTERVAL)


def floating_addresses(networks: NetworksSection) -> tuple[str, ...]:
    """The cluster and upstream floating addresses (without prefix)."""
    return tuple(str(ipaddress.ip_interface(net.floating_ip).ip)
                 for net in (networks.cluster, networks.upstream)
                 if net is not None and net.device and net.floating_ip)


def build_dns_service(view: ClusterView, dns: NetworkDns, networks: NetworksSection,
                      config: NetworkDriverSection) -> Wiring:
    """The "dns" primary service: the names server, and the floating server when a floating
    address is configured."""
    state_dir = Path(config.state_dir)
    names = DnsServer(DnsServerConfig("names", (NAMES_SERVER,), state_dir / "dns-names",
                                      config.netns, config.dnsmasq_user))
    addresses = floating_addresses(networks)
    floating = DnsServer(DnsServerConfig("floating", addresses, state_dir / "dns-floating",
                                         config.netns, config.dnsmasq_user)) \
        if addresses else None
    service = DnsService(view, dns, names, floating, config.resync_interval)
    wiring = Wiring(services=[PrimaryService("dns", service.start, service.stop)])
    wiring.add(service.controller, Watch(view.paths.networks + "/", service.key_of_path),
               Watch(view.paths.vms + "/", service.key_of_path))
    return wiring
