"""A DNS server of the primary without DHCP: a dnsmasq that answers its own records (a hosts
directory) and forwards only as its servers file says, both re-read while it runs.

Two of them run on the primary (`pvcd.controllers.dns_service`):
- the names server, on a loopback address: the `<vm name>.<domain>` records, which the
  networks' resolvers ask last (`pvcd.domain.dns.NAMES_SERVER`);
- the floating server, on the cluster and upstream floating addresses: every managed domain
  and reverse zone, asked of the networks' gateways, and nothing else. It has no upstream
  servers, so any other name is REFUSED: the upstream network gets no open resolver
  (extensions.md §10.2.3).

Each binds only its addresses (`--listen-address`, `--bind-interfaces`); a floating address must
be up before it starts (the "floating-ip" primary service starts first). Its files are
`dnsmasq_dns.DnsFiles`: the servers file is re-read on SIGHUP, the hosts directory by inotify
(nothing here holds DHCP leases, so a hosts name never becomes a lease's name).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pvcd.domain.dns import Forwarding
from pvcd.domain.errors import InvalidValue
from pvcd.drivers.dnsmasq_dns import DnsFiles, HostRecord
from pvcd.drivers.dnsmasq_process import DnsmasqProcess
from pvcd.drivers.ifnames import check_netns

USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class DnsServerConfig:
    name: str  # in logs, e.g. "names", "floating"
    addresses: tuple[str, ...]  # to listen on
    state_dir: Path
    netns: str | None = None
    user: str = "nobody"
    port: int = 53
    dnsmasq: str = "dnsmasq"


class DnsServer:
    def __init__(self, config: DnsServerConfig) -> None:
        self.config = config
        self.files = DnsFiles(config.state_dir)
        self._process = DnsmasqProcess(self._build_argv(), config.state_dir / "dnsmasq.log",
                                       f"--servers-file={self.files.servers_path}",
                                       f"dns-{config.name}", config.netns)

    def _build_argv(self) -> list[str]:
        cfg = self.config
        if not cfg.addresses:
            raise InvalidValue(f"DNS server {cfg.name}: no address to listen on")
        try:
            addresses = [str(ipaddress.ip_address(a)) for a in cfg.addresses]
        except ValueError:
            raise InvalidValue(f"DNS server {cfg.name}: {cfg.addresses!r} are not IP "
                               "addresses") from None
        if not USER.fullmatch(cfg.user):
            raise InvalidValue(f"user {cfg.user!r} is not a valid user name")
        if not 1 <= cfg.port <= 65535:
            raise InvalidValue(f"DNS port {cfg.port} is out of range: 1-65535")
        argv = [cfg.dnsmasq, "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--keep-in-foreground", "--pid-file", "--log-facility=-", "--bind-interfaces",
                *(f"--listen-address={a}" for a in addresses),
                f"--user={cfg.user}", f"--port={cfg.port}", *self.files.arguments()]
        if cfg.netns is not None:
            argv = ["ip", "netns", "exec", check_netns(cfg.netns), *argv]
        return argv

    def argv(self) -> list[str]:
        return list(self._process.argv)

    def running(self) -> bool:
        return self._process.running()

    def serve(self, forwarding: Forwarding, names: Iterable[HostRecord] = ()) -> None:
        """Serve `forwarding` and `names`; a running dnsmasq re-reads them, one that is not
        running (not yet, or died) is started."""
        changed = self.files.set_forwarding(forwarding)
        self.files.set_names(names)
        if not self.running():
            self._process.supervise()
        elif changed:
            self._process.reload()

    def stop(self) -> None:
        self._process.stop()

    def kill_orphans(self) -> None:
        """Kill a server of this kind left running by a crashed pvcd of this node."""
        self._process.kill_orphans()
