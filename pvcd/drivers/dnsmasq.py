"""One supervised dnsmasq per managed network: DHCPv4, IPv6 router advertisements, local DNS.

`DnsmasqConfig` holds what a network's gateway needs; `DnsmasqInstance` turns it into an
argument list (every operator-derived value validated first: addresses through `ipaddress`,
names and MACs by pattern; no shell anywhere) and runs dnsmasq as a child in the foreground.

Why each fixed option (measured on dnsmasq 2.90, see docs/platform notes):
  --conf-file=/dev/null --no-resolv --no-hosts   self-contained: no /etc files; upstreams only
                                    from the servers file
  --bind-interfaces --interface=X --except-interface=lo
                                    several instances per node (one per network) only work
                                    when each binds its own interface; lo would collide
  --no-ping                         else ≈ 3 s per new dynamic lease
  --keep-in-foreground --pid-file   we are the supervisor: no daemonizing, no PID file
  --leasefile-ro --dhcp-script=H    no lease file: our hook keeps a JSON journal
                                    (`dnsmasq_leasehook`) so ZooKeeper can be the lease store
  --dhcp-hostsdir=D                 static leases: new files are read by inotify, no restart
  --dhcp-authoritative              we are the network's only DHCP server: a client renewing
                                    a lease we lost (restart) gets an ACK, not a silent wait
  --servers-file, --hostsdir        (with `dns_files`) DNS across networks: `dnsmasq_dns`
The gateway address must be on the interface *before* start (dnsmasq derives the DHCP subnet
from it). A static host name resolves in DNS only while its lease exists, unless the gateway
also writes it to the extra names (it does, with `dns_files`).

State directory (`config.state_dir`, created 0755: dnsmasq drops to `config.user` and must reach
the hosts directory, so every parent needs o+x):
  hosts/static    static leases, one `MAC,IP[,NAME]` per line
  leasehook       the generated `--dhcp-script` wrapper (runs this Python, `-IS`)
  leases.jsonl    lease journal written by the hook;  leases.lock  its lock
  dnsmasq.log     dnsmasq's stderr (`--log-facility=-`)
  dns/            servers file and extra names (`dnsmasq_dns`), with `dns_files`

Races: dnsmasq only *adds* hosts on inotify; a removed or changed static lease needs SIGHUP,
which `set_static_leases` sends. `supervise()` restarts a dead child; a lease granted between the
crash and the restart is not lost (the journal is on disk and `init` hands it back).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pvcd
from pvcd.domain.errors import BackendError, InvalidValue
from pvcd.drivers import dnsmasq_leasehook
from pvcd.drivers.dnsmasq_dns import DnsFiles, write_file
from pvcd.drivers.dnsmasq_leasehook import Lease, guest_lease
from pvcd.drivers.dnsmasq_process import DnsmasqProcess
from pvcd.drivers.ifnames import check_ifname, check_netns

__all__ = ["DnsmasqConfig", "DnsmasqInstance", "Lease", "StaticLease"]

log = logging.getLogger(__name__)

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
HOSTNAME_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_mac(mac: str) -> str:
    """A MAC address in lower-case colon form, or InvalidValue."""
    normalized = mac.strip().lower() if isinstance(mac, str) else ""
    if not MAC_RE.fullmatch(normalized):
        raise InvalidValue(f"MAC address {mac!r} is invalid: use the form 52:54:00:12:34:56")
    return normalized


def check_hostname(name: str) -> str:
    """A single DNS label (letters, digits, '-'), as DHCP host names are."""
    if not isinstance(name, str) or not HOSTNAME_RE.fullmatch(name):
        raise InvalidValue(
            f"host name {name!r} is invalid: 1-63 letters, digits or '-', "
            "not starting or ending with '-'"
        )
    return name


def check_domain(domain: str) -> str:
    """A DNS domain name (lower-cased), e.g. `net100.example.org`."""
    name = domain.lower().rstrip(".") if isinstance(domain, str) else ""
    if not name or len(name) > 253 or not all(LABEL_RE.fullmatch(lb) for lb in name.split(".")):
        raise InvalidValue(
            f"domain {domain!r} is invalid: dot-separated labels of letters, "
            "digits and '-', at most 253 characters"
        )
    return name


@dataclass(frozen=True)
class StaticLease:
    """A reserved address for one MAC (the API's static DHCP lease)."""

    mac: str
    ip: str
    hostname: str | None = None


@dataclass(frozen=True)
class DnsmasqConfig:
    """What one network's dnsmasq serves. Addresses are strings as the API stores them."""

    interface: str  # the network's bridge, e.g. vmbr100
    state_dir: Path
    netns: str | None = None
    domain: str | None = None
    ip4_network: str | None = None  # "10.100.0.0/24"
    ip4_gateway: str | None = None  # "10.100.0.1", must be on `interface` before start
    dhcp4_start: str | None = None  # both or neither; without them no DHCPv4
    dhcp4_end: str | None = None
    ip6_network: str | None = None  # "fd00:100::/64": router advertisements (SLAAC)
    ip6_gateway: str | None = None
    lease_time: int = 3600  # seconds
    dns_port: int = 53  # 0 disables DNS
    # DNS across networks: forwarding and extra names from files under state_dir/dns that
    # change while dnsmasq runs (`dnsmasq_dns.DnsFiles`)
    dns_files: bool = False
    user: str = "nobody"  # dnsmasq drops to this user after binding
    dnsmasq: str = "dnsmasq"


class DnsmasqInstance:
    """A supervised dnsmasq child for one network."""

    def __init__(self, config: DnsmasqConfig) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.hosts_dir = self.state_dir / "hosts"
        self.hook_path = self.state_dir / "leasehook"
        self.log_path = self.state_dir / "dnsmasq.log"
        self._argv = self._build_argv()  # validates the whole config up front
        self._process = DnsmasqProcess(self._argv, self.log_path,
                                       f"--dhcp-hostsdir={self.hosts_dir}", config.interface,
                                       config.netns)

    # -- building the command -------------------------------------------------------------

    def _build_argv(self) -> list[str]:
        cfg = self.config
        iface = check_ifname(cfg.interface)
        if cfg.netns is not None:
            check_netns(cfg.netns)
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", cfg.user):
            raise InvalidValue(f"user {cfg.user!r} is not a valid user name")
        if not 120 <= cfg.lease_time <= 2**31:
            raise InvalidValue(f"lease time {cfg.lease_time} is out of range: at least 120 s")
        if not 0 <= cfg.dns_port <= 65535:
            raise InvalidValue(f"DNS port {cfg.dns_port} is out of range: 0-65535")
        argv = [
            cfg.dnsmasq,
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--keep-in-foreground",
            "--pid-file",
            "--log-facility=-",
            "--bind-interfaces",
            f"--interface={iface}",
            "--except-interface=lo",
            "--no-ping",
            "--leasefile-ro",
            "--dhcp-authoritative",
            f"--dhcp-script={self.hook_path}",
            f"--dhcp-hostsdir={self.hosts_dir}",
            f"--user={cfg.user}",
            f"--port={cfg.dns_port}",
        ]
        if cfg.domain is not None:
            domain = check_domain(cfg.domain)
            argv.append(f"--domain={domain}")
            if not cfg.dns_files:  # (else the servers file says where the rest goes)
                argv.append(f"--local=/{domain}/")
        if cfg.dns_files:
            argv += self.dns_files().arguments()
        argv += self._ip4_args()
        argv += self._ip6_args(iface)
        if cfg.netns is not None:
            argv = ["ip", "netns", "exec", cfg.netns, *argv]
        return argv

    def _ip4_args(self) -> list[str]:
        cfg = self.config
        if cfg.ip4_network is None:
            if cfg.ip4_gateway or cfg.dhcp4_start or cfg.dhcp4_end:
                raise InvalidValue("ip4_gateway and a DHCPv4 range need ip4_network")
            return []
        network = _network(cfg.ip4_network, 4, "ip4_network")
        if cfg.ip4_gateway is None:
            raise InvalidValue("ip4_gateway is required with ip4_network")
        gateway = _address_in(cfg.ip4_gateway, network, "ip4_gateway")
        args = [f"--dhcp-option=option:router,{gateway}"]
        if cfg.dns_port == 53:
            args.append(f"--dhcp-option=option:dns-server,{gateway}")
        if (cfg.dhcp4_start is None) != (cfg.dhcp4_end is None):
            raise InvalidValue("dhcp4_start and dhcp4_end must be given together")
        if cfg.dhcp4_start is not None and cfg.dhcp4_end is not None:
            start = _address_in(cfg.dhcp4_start, network, "dhcp4_start")
            end = _address_in(cfg.dhcp4_end, network, "dhcp4_end")
            if int(start) > int(end):
                raise InvalidValue(f"dhcp4_start {start} is after dhcp4_end {end}")
            args.append(f"--dhcp-range={start},{end},{network.netmask},{cfg.lease_time}")
        return args

    def _ip6_args(self, iface: str) -> list[str]:
        cfg = self.config
        if cfg.ip6_network is None:
            if cfg.ip6_gateway:
                raise InvalidValue("ip6_gateway needs ip6_network")
            return []
        network = _network(cfg.ip6_network, 6, "ip6_network")
        gateway = (
            _address_in(cfg.ip6_gateway, network, "ip6_gateway")
            if cfg.ip6_gateway
            else network.network_address + 1
        )
        args = ["--enable-ra", f"--dhcp-range=::,constructor:{iface},ra-stateless,ra-names"]
        if cfg.dns_port == 53:
            args.append(f"--dhcp-option=option6:dns-server,[{gateway}]")
        return args

    def dns_files(self) -> DnsFiles:
        """The files of the forwarding and extra names (used when `config.dns_files`)."""
        return DnsFiles(self.state_dir / "dns")

    def argv(self) -> list[str]:
        """The command `start()` runs."""
        return list(self._argv)

    # -- files ----------------------------------------------------------------------------

    def _prepare_state_dir(self) -> None:
        for directory in (self.state_dir, self.hosts_dir):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
        if self.config.dns_files:
            self.dns_files().prepare()
        if self.config.user != "root":
            for parent in self.state_dir.resolve().parents:
                if not parent.stat().st_mode & stat.S_IXOTH:
                    raise BackendError(
                        f"dnsmasq runs as {self.config.user} and cannot reach "
                        f"{self.hosts_dir}: {parent} lacks o+x"
                    )
        if sys.executable and any(c.isspace() for c in sys.executable):
            raise BackendError(f"cannot write a #! line for {sys.executable!r}")
        package_root = str(Path(pvcd.__file__).resolve().parent.parent)
        hook = (
            f"#!{sys.executable} -IS\n"  # -S: no site, ≈ 0.2 s less per run (stdlib only)
            "# generated by pvcd: dnsmasq's --dhcp-script for this network\n"
            "import sys\n"
            f"sys.path.insert(0, {package_root!r})\n"
            "from pvcd.drivers.dnsmasq_leasehook import main\n"
            f"sys.exit(main(sys.argv[1:], {str(self.state_dir)!r}))\n"
        )
        write_file(self.hook_path, hook, 0o755)

    # -- process (pvcd.drivers.dnsmasq_process) -------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def restarts(self) -> int:
        return self._process.restarts

    def running(self) -> bool:
        return self._process.running()

    def processes(self) -> list[int]:
        """PIDs of every live dnsmasq process of this network (ours, its script helper, or an
        orphan left by a previous pvcd), found by the hosts directory in its command line."""
        return self._process.processes()

    def start(self) -> None:
        """Start dnsmasq and wait until it serves; no-op if running. BackendError on failure.

        A dnsmasq of the same network that we did not start (left by a crashed pvcd) is killed
        first: it would hold the sockets.
        """
        if self.running():
            return
        self._prepare_state_dir()
        self._process.start()

    def stop(self) -> None:
        """Terminate dnsmasq (SIGTERM, then SIGKILL) and reap it; no-op if not running."""
        self._process.stop()

    def supervise(self) -> bool:
        """Restart dnsmasq if it is not running (the controller calls this periodically).

        Returns True when it had to (re)start it.
        """
        if self.running():
            return False
        self._prepare_state_dir()
        return self._process.supervise()

    def reload(self) -> None:
        """SIGHUP: re-read the static hosts and the DNS files (`dnsmasq_dns`), leases kept."""
        self._process.reload()

    # -- static leases --------------------------------------------------------------------

    def _check_static(self, leases: list[StaticLease]) -> list[StaticLease]:
        network = (
            _network(self.config.ip4_network, 4, "ip4_network") if self.config.ip4_network else None
        )
        checked: list[StaticLease] = []
        macs: set[str] = set()
        ips: set[str] = set()
        for lease in leases:
            mac = check_mac(lease.mac)
            if network is not None:
                ip = str(_address_in(lease.ip, network, "static lease address"))
            else:
                ip = str(_address(lease.ip, 4, "static lease address"))
            hostname = check_hostname(lease.hostname) if lease.hostname else None
            if mac in macs or ip in ips:
                raise InvalidValue(f"static lease {mac} {ip} duplicates another one's MAC or IP")
            macs.add(mac)
            ips.add(ip)
            checked.append(StaticLease(mac, ip, hostname))
        return sorted(checked, key=lambda le: le.mac)

    def static_leases(self) -> list[StaticLease]:
        """The static leases now written to the hosts directory."""
        path = self.hosts_dir / "static"
        if not path.exists():
            return []
        result = []
        for line in path.read_text().splitlines():
            fields = line.split(",")
            if len(fields) >= 2:
                result.append(
                    StaticLease(fields[0], fields[1], fields[2] if len(fields) > 2 else None)
                )
        return result

    def set_static_leases(self, leases: list[StaticLease]) -> None:
        """Make the static leases exactly `leases`, without restarting dnsmasq.

        Additions reach a running dnsmasq by inotify; when a lease was removed or changed, a
        SIGHUP makes it forget the old records too.
        """
        wanted = self._check_static(leases)
        current = set(self.static_leases())
        if set(wanted) == current and (self.hosts_dir / "static").exists():
            return
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        self.hosts_dir.chmod(0o755)
        lines = "".join(
            f"{le.mac},{le.ip}" + (f",{le.hostname}" if le.hostname else "") + "\n" for le in wanted
        )
        write_file(self.hosts_dir / "static", lines, 0o644)
        dropped = current - set(wanted)
        log.info(
            "static leases set interface=%s count=%d dropped=%d",
            self.config.interface,
            len(wanted),
            len(dropped),
        )
        if dropped:
            self.reload()

    # -- dynamic leases -------------------------------------------------------------------

    def leases(self) -> list[Lease]:
        """Current (unexpired) leases as reported by dnsmasq through the hook."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return dnsmasq_leasehook.read_leases(str(self.state_dir))

    def set_known_leases(self, leases: list[Lease]) -> None:
        """Replace the local lease store (e.g. with ZooKeeper's copy); used at the next start.

        dnsmasq reads leases only at start (`init`), so call this before `start()`. The leases
        are guest input: each is checked with `guest_lease` (a lease that cannot be kept is
        left out, a host name dnsmasq would not serve is dropped), never refused as a whole.
        """
        checked: list[Lease] = []
        for le in leases:
            lease = guest_lease(le.mac, le.ip, le.hostname, le.expires)
            if lease is None:
                log.warning("known lease dropped interface=%s mac=%r ip=%r",
                            self.config.interface, le.mac, le.ip)
            else:
                checked.append(lease)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)
        dnsmasq_leasehook.write_snapshot(str(self.state_dir), checked)


def _network(value: str, version: int, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        network = ipaddress.ip_network(value, strict=True)
    except (ValueError, TypeError):
        raise InvalidValue(
            f"{what} {value!r} is not a network in CIDR form "
            f"(e.g. {'10.0.0.0/24' if version == 4 else 'fd00::/64'})"
        ) from None
    if network.version != version:
        raise InvalidValue(f"{what} {value!r} is not an IPv{version} network")
    return network


def _address(value: str, version: int, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise InvalidValue(f"{what} {value!r} is not an IP address") from None
    if address.version != version:
        raise InvalidValue(f"{what} {value!r} is not an IPv{version} address")
    return address


def _address_in(
    value: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network, what: str
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = _address(value, network.version, what)
    if address not in network:
        raise InvalidValue(f"{what} {address} is not in network {network}")
    return address
