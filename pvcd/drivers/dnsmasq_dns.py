"""The files through which a running dnsmasq learns what DNS changes while it runs.

A network's DHCP server must not restart when another network comes, goes or changes its
domain (a restart costs its clients nothing, but it is needless churn and a window without DNS),
and names appear and vanish with leases and VMs. dnsmasq reads both kinds from files:

  <dir>/servers       `--servers-file`: where questions go (other networks' domains and reverse
                      zones, the upstream servers); re-read on SIGHUP, which keeps the leases
  <dir>/names/hosts   `--hostsdir`: extra records (`<address> <name>...`, A/AAAA and PTR); a
                      file replaced by rename is re-read by inotify, old records dropped

`DnsFiles.set_forwarding` and `set_names` write a file only when its content changes and say so,
so the caller signals dnsmasq only then. Every value is checked before it is written (domains
and names label by label, addresses and networks through `ipaddress`): a line is never built
from text that could end it early or add another.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pvcd.domain.dns import RECORD_TTL, Forwarding, dns_label
from pvcd.domain.errors import InvalidValue

RESOLV_CONF = Path("/etc/resolv.conf")
SERVERS = "servers"
NAMES = "names"
HOSTS = "hosts"


@dataclass(frozen=True)
class HostRecord:
    """Names (fully qualified) of one address."""

    address: str
    names: tuple[str, ...]


def checked_name(name: str) -> str:
    """A DNS name of valid labels (lower-cased, no trailing dot), or InvalidValue."""
    text = name.lower().rstrip(".") if isinstance(name, str) else ""
    if not text or len(text) > 253 or not all(dns_label(label) for label in text.split(".")):
        raise InvalidValue(f"{name!r} is not a DNS name: labels of letters, digits and '-'")
    return text


def checked_address(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise InvalidValue(f"{address!r} is not an IP address") from None


def checked_network(network: str) -> str:
    try:
        return str(ipaddress.ip_network(network))
    except ValueError:
        raise InvalidValue(f"{network!r} is not a network in CIDR form") from None


def servers_text(forwarding: Forwarding) -> str:
    """`forwarding` as a dnsmasq servers file."""
    lines = [f"server=/{checked_name(domain)}/{checked_address(server)}"
             for domain, server in forwarding.domains]
    lines += [f"rev-server={checked_network(network)},{checked_address(server)}"
              for network, server in forwarding.reverse]
    lines += [f"server=/{checked_name(domain)}/" for domain in forwarding.local_domains]
    lines += [f"rev-server={checked_network(network)}" for network in forwarding.local_reverse]
    lines += [f"server={checked_address(server)}" for server in forwarding.upstream]
    return "".join(line + "\n" for line in lines)


def hosts_text(records: Iterable[HostRecord]) -> str:
    """`records` as a hosts file, sorted (so that equal content is equal text)."""
    lines = sorted(f"{checked_address(record.address)} "
                   + " ".join(checked_name(name) for name in record.names)
                   for record in records if record.names)
    return "".join(line + "\n" for line in lines)


def resolv_conf_servers(path: Path = RESOLV_CONF) -> tuple[str, ...]:
    """The `nameserver` addresses of a resolv.conf (none when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ()
    servers = []
    for line in text.splitlines():
        fields = line.split()
        # a scoped address (fe80::1%eth0) is left out: it names an interface of this host
        if len(fields) >= 2 and fields[0] == "nameserver" and "%" not in fields[1]:
            try:
                servers.append(str(ipaddress.ip_address(fields[1])))
            except ValueError:
                continue
    return tuple(servers)


class DnsFiles:
    """The DNS files of one dnsmasq, in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers_path = directory / SERVERS
        self.names_dir = directory / NAMES

    def arguments(self) -> list[str]:
        # --no-negcache: a name asked for before its lease existed must resolve as soon as it
        # does (another network's "no such name" is never kept); --local-ttl: dnsmasq's own
        # default, said here because the spec bounds it (≤ 60 s) and forwarders cache by it
        return [f"--servers-file={self.servers_path}", f"--hostsdir={self.names_dir}",
                "--no-negcache", f"--local-ttl={RECORD_TTL}"]

    def prepare(self) -> None:
        """The directory and both files exist (dnsmasq refuses to start without them);
        readable by the user dnsmasq drops to."""
        for directory in (self.directory, self.names_dir):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
        for path in (self.servers_path, self.names_dir / HOSTS):
            if not path.exists():
                write_file(path, "")

    def set_forwarding(self, forwarding: Forwarding) -> bool:
        """Write the servers file; True when it changed (then dnsmasq needs a SIGHUP)."""
        self.prepare()
        return _replace_if_changed(self.servers_path, servers_text(forwarding))

    def set_names(self, records: Iterable[HostRecord]) -> bool:
        """Write the extra names; True when they changed (dnsmasq notices by itself)."""
        self.prepare()
        return _replace_if_changed(self.names_dir / HOSTS, hosts_text(records))


def _replace_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    write_file(path, text)
    return True


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file dnsmasq reads, atomically: a dot-file (dnsmasq's inotify ignores those),
    then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
