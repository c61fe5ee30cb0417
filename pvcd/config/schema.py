"""The configuration file's schema: one frozen dataclass per section, with defaults and checks.

To add a config key, add a field with its default and, if the value needs checking, a
`checks(...)` in the field's metadata; checks that relate several fields of one section go in
that section's `cross_check()`. Then document the key in `docs/configuration.md` and
`etc/pvcd.example.yaml`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from pvcd.config.checks import (
    Problem,
    absolute_path,
    address_with_prefix,
    check_name,
    checks,
    command_argv,
    device_name,
    host_port,
    in_range,
    ip_address,
    ip_network,
    netns_name,
    node_name,
    not_empty,
    one_of,
    token_value,
    unix_user,
    uuid_text,
    zookeeper_root,
    zookeeper_user,
)
from pvcd.domain.health_checks import CHECK_LIMIT, NODE_CHECKS


@dataclass(frozen=True, kw_only=True)
class NodeSection:
    """This node's identity in the cluster."""

    name: str = field(metadata=checks(node_name))
    coordinator: bool = False


@dataclass(frozen=True, kw_only=True)
class ClusterSection:
    """How to reach the cluster's state: the ZooKeeper ensemble and where pvcd's tree lives."""

    coordinators: tuple[str, ...] = field(metadata=checks(not_empty, each=host_port))
    zookeeper_root: str = field(default="/pvc", metadata=checks(zookeeper_root))
    session_timeout: float = field(default=10.0, metadata=checks(in_range(0.5, 600)))
    # ZooKeeper digest credentials, the same on every node: every znode pvcd creates is then
    # readable and writable by this user only (docs/security.md). Both null: no auth, no ACLs.
    zookeeper_user: str | None = field(default=None, metadata=checks(zookeeper_user))
    zookeeper_password: str | None = field(default=None, metadata=checks(token_value))
    zookeeper_tls: ZookeeperTlsSection = field(default_factory=lambda: ZookeeperTlsSection())

    def cross_check(self) -> Problem | None:
        if (self.zookeeper_user is None) != (self.zookeeper_password is None):
            return "zookeeper_password", "zookeeper_user and zookeeper_password go together"
        return None


@dataclass(frozen=True, kw_only=True)
class ZookeeperTlsSection:
    """TLS to ZooKeeper (its `secureClientPort`): `coordinators` then name that port."""

    enabled: bool = False
    ca_file: str | None = field(default=None, metadata=checks(absolute_path))
    cert_file: str | None = field(default=None, metadata=checks(absolute_path))
    key_file: str | None = field(default=None, metadata=checks(absolute_path))
    verify: bool = True

    def cross_check(self) -> Problem | None:
        if (self.cert_file is None) != (self.key_file is None):
            return "key_file", "cert_file and key_file go together"
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if self.enabled and path is not None and not os.path.isfile(path):
                return name, f"no such file: {path!r}"
        return None


@dataclass(frozen=True, kw_only=True)
class NetworkSection:
    """One host network: the device it is on, its subnet and the primary's floating address."""

    device: str | None = field(default=None, metadata=checks(device_name))
    network: str | None = field(default=None, metadata=checks(ip_network))
    floating_ip: str | None = field(default=None, metadata=checks(address_with_prefix))

    def cross_check(self) -> Problem | None:
        if self.floating_ip is None or self.network is None:
            return None
        address = ipaddress.ip_interface(self.floating_ip).ip
        if address not in ipaddress.ip_network(self.network, strict=False):
            return "floating_ip", f"{self.floating_ip!r} is not inside network {self.network!r}"
        return None


@dataclass(frozen=True, kw_only=True)
class DnsSection:
    """DNS across the managed networks (docs/networking.md, "DNS")."""

    # where the gateways' resolvers send names outside the managed domains; null: the
    # nameservers of the primary's /etc/resolv.conf; []: none (such names are REFUSED)
    upstream_servers: tuple[str, ...] | None = field(default=None,
                                                     metadata=checks(each=ip_address))


@dataclass(frozen=True, kw_only=True)
class NetworksSection:
    """The host networks pvcd manages addresses on."""

    cluster: NetworkSection = field(default_factory=NetworkSection)
    upstream: NetworkSection | None = None
    dns: DnsSection = field(default_factory=DnsSection)


@dataclass(frozen=True, kw_only=True)
class TokenEntry:
    """One API token; the description says whose it is, for the operator's records."""

    token: str = field(metadata=checks(token_value))
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class AuthSection:
    """API authentication by static tokens."""

    enabled: bool = False
    secret_key: str = ""
    tokens: tuple[TokenEntry, ...] = ()
    # with auth off, the API refuses to listen on any address but loopback unless this is true
    allow_unauthenticated: bool = False
    # a login session ends this long after it was opened (removed from ZooKeeper then)
    session_lifetime: float = field(default=43200.0, metadata=checks(in_range(60, 2592000)))
    # bad tokens and failed logins per client address: a burst of `max_failures`, then one
    # more attempt every failure_window / max_failures seconds; beyond that, 429
    max_failures: int = field(default=20, metadata=checks(in_range(1, 10000)))
    failure_window: float = field(default=60.0, metadata=checks(in_range(1, 86400)))

    def cross_check(self) -> Problem | None:
        first_index: dict[str, int] = {}
        for index, entry in enumerate(self.tokens):
            if entry.token in first_index:
                return (
                    f"tokens[{index}].token",
                    f"duplicate token (same as tokens[{first_index[entry.token]}])",
                )
            first_index[entry.token] = index
        if not self.enabled:
            return None
        if len(self.secret_key) < 16:
            return "secret_key", "must be at least 16 characters when auth is enabled"
        if not self.tokens:
            return "tokens", "at least one token is required when auth is enabled"
        return None


@dataclass(frozen=True, kw_only=True)
class TlsSection:
    """TLS for the API; the certificate and key are read from files on the node."""

    enabled: bool = False
    cert_file: str | None = None
    key_file: str | None = None

    def cross_check(self) -> Problem | None:
        if not self.enabled:
            return None
        for name in ("cert_file", "key_file"):
            path = getattr(self, name)
            if path is None:
                return name, "required when tls is enabled"
            if not os.path.isfile(path):
                return name, f"no such file: {path!r}"
        return None


@dataclass(frozen=True, kw_only=True)
class ApiSection:
    """The HTTP API, served by whichever node is primary coordinator."""

    listen: str = field(default="0.0.0.0", metadata=checks(ip_address))
    port: int = field(default=7370, metadata=checks(in_range(1, 65535)))
    auth: AuthSection = field(default_factory=AuthSection)
    tls: TlsSection = field(default_factory=TlsSection)
    # the largest request body an endpoint reads unless it declares more (an upload); a client
    # not yet authenticated by its headers may send 64 KiB at most
    max_body_size: int = field(default=4 * 1024 * 1024,
                               metadata=checks(in_range(65536, 1024 * 1024 * 1024)))
    # how long a client may take to send a request's headers (and a kept-alive connection may
    # stay idle), and then its body
    header_timeout: float = field(default=10.0, metadata=checks(in_range(0.1, 3600)))
    body_timeout: float = field(default=60.0, metadata=checks(in_range(0.1, 3600)))
    # open connections: in all (at the cap a new one replaces the longest idle), and per
    # client address
    max_connections: int = field(default=1000, metadata=checks(in_range(1, 1000000)))
    max_connections_per_client: int = field(default=64, metadata=checks(in_range(1, 1000000)))
    # how long a request with `wait` waits for its task before answering 202 (extensions §0.2)
    task_wait: float = field(default=120.0, metadata=checks(in_range(1, 3600)))


@dataclass(frozen=True, kw_only=True)
class TimingSection:
    """Intervals and timeouts, in seconds unless said otherwise."""

    keepalive_interval: float = field(default=2.0, metadata=checks(in_range(0.05, 600)))
    # Counted in missed keepalive intervals, so it scales with keepalive_interval.
    dead_threshold: int = field(default=6, metadata=checks(in_range(1, 100)))
    resync_interval: float = field(default=60.0, metadata=checks(in_range(1, 86400)))
    handover_timeout: float = field(default=10.0, metadata=checks(in_range(0.5, 600)))
    shutdown_timeout: float = field(default=90.0, metadata=checks(in_range(1, 3600)))
    # SIGTERM to exit at most (with ZooKeeper away too): the daemon's own shutdown writes are
    # best effort within it; keep it below the unit's TimeoutStopSec.
    shutdown_budget: float = field(default=30.0, metadata=checks(in_range(1, 3600)))
    # One fence attempt (power off, confirm off, power on) may take this long.
    fence_timeout: float = field(default=60.0, metadata=checks(in_range(1, 3600)))


@dataclass(frozen=True, kw_only=True)
class FenceTargetSection:
    """How the primary fences one node. The primary's own authority: nothing of it is taken
    from the node's record in ZooKeeper, which anyone who can reach ZooKeeper could write."""

    node: str = field(metadata=checks(node_name))
    # ipmi: power off/on through `ipmitool`; watchdog: the node resets itself by its watchdog
    # (its own `watchdog_device`), the primary waits `watchdog_timeout` out; lab / lab-fail:
    # the lab's process-killing driver (lab-fail always fails), which only lab node daemons
    # have (`python -m pvcd.lab.node`): `pvcd run` refuses them.
    driver: str = field(metadata=checks(one_of("ipmi", "watchdog", "lab", "lab-fail")))
    ipmi_host: str | None = field(default=None, metadata=checks(not_empty))
    ipmi_user: str | None = field(default=None, metadata=checks(not_empty))
    ipmi_password: str | None = field(default=None, metadata=checks(not_empty))
    # the node's watchdog timeout (at least the node's own `fencing.watchdog_timeout`)
    watchdog_timeout: int | None = field(default=None, metadata=checks(in_range(5, 3600)))

    def cross_check(self) -> Problem | None:
        if self.driver == "ipmi" and not (self.ipmi_host and self.ipmi_user and
                                          self.ipmi_password):
            return "ipmi_host", "the ipmi driver needs ipmi_host, ipmi_user and ipmi_password"
        if self.driver == "watchdog" and self.watchdog_timeout is None:
            return "watchdog_timeout", "the watchdog driver needs the node's watchdog_timeout"
        return None


@dataclass(frozen=True, kw_only=True)
class FencingSection:
    """How the cluster fences its nodes (applied by whichever coordinator is primary), and this
    node's own watchdog."""

    # One entry per node this coordinator may have to fence; a node without one is never
    # fenced, and its VMs are never recovered elsewhere. Give every coordinator the same list.
    targets: tuple[FenceTargetSection, ...] = ()
    # Applied by the primary: after a failed fence, `none` leaves the VMs where they are (safe:
    # they may still run); `recover` starts them elsewhere anyway.
    on_fence_failure: str = field(default="none", metadata=checks(one_of("none", "recover")))
    attempts: int = field(default=3, metadata=checks(in_range(1, 100)))
    # A hardware watchdog or softdog device (e.g. /dev/watchdog) this node arms and pets while
    # the cluster hears from it; null: none. A `watchdog` target needs it on that node.
    watchdog_device: str | None = field(default=None, metadata=checks(absolute_path))
    # Seconds without a pet before the device resets the machine.
    watchdog_timeout: int = field(default=60, metadata=checks(in_range(5, 3600)))

    def cross_check(self) -> Problem | None:
        seen: set[str] = set()
        for index, target in enumerate(self.targets):
            if target.node in seen:
                return f"targets[{index}].node", f"node {target.node!r} is listed twice"
            seen.add(target.node)
        return None


@dataclass(frozen=True, kw_only=True)
class LibvirtDriverSection:
    """The connection to the node's libvirtd."""

    uri: str = field(default="qemu:///system", metadata=checks(not_empty))
    migration_uri: str | None = field(default=None, metadata=checks(not_empty))
    # how the other nodes' libvirt reaches this one for live migration (e.g.
    # qemu+tcp://10.0.0.2/system); null: the same as `uri`
    peer_uri: str | None = field(default=None, metadata=checks(not_empty))
    # the `type` of domains the provisioner generates: `kvm`, or `qemu` (TCG, no hardware
    # virtualisation: nested or KVM-less hosts)
    domain_type: str = field(default="kvm", metadata=checks(one_of("kvm", "qemu")))
    # where generated domains log their serial console (`<name>.log`), which the VM's node
    # follows for `GET /vm/<vm>/console`
    console_log_directory: str = field(default="/var/log/libvirt/pvcd",
                                       metadata=checks(absolute_path))
    # how many lines of each VM's console its node keeps in the cluster (extensions.md §7)
    console_log_lines: int = field(default=1000, metadata=checks(in_range(1, 100000)))


@dataclass(frozen=True, kw_only=True)
class NetworkDriverSection:
    """Client networks on this node: VXLAN underlay, vLAN uplink, gateway/DHCP state."""

    # the device and address VXLAN tunnels use (the cluster network); both null: this node
    # builds no managed networks
    underlay_device: str | None = field(default=None, metadata=checks(device_name))
    underlay_address: str | None = field(default=None, metadata=checks(ip_address))
    # the parent device of bridged networks' vLAN interfaces; null: no bridged networks
    uplink_device: str | None = field(default=None, metadata=checks(device_name))
    # lab only: act inside this network namespace instead of the daemon's own
    netns: str | None = field(default=None, metadata=checks(netns_name))
    # where the primary keeps each network's dnsmasq files (hosts, lease journal, log)
    state_dir: str = field(default="/var/lib/pvc/networks", metadata=checks(absolute_path))
    dnsmasq_user: str = field(default="nobody", metadata=checks(unix_user))
    # how often every network is re-checked (interfaces deleted by hand come back)
    resync_interval: float = field(default=10.0, metadata=checks(in_range(0.5, 86400)))

    def cross_check(self) -> Problem | None:
        if (self.underlay_device is None) != (self.underlay_address is None):
            return "underlay_address", "underlay_device and underlay_address go together"
        return None


@dataclass(frozen=True, kw_only=True)
class CephDriverSection:
    """The Ceph storage cluster (docs/storage.md): how this node reaches it as client.admin."""

    enabled: bool = False
    conf_file: str = field(default="/etc/ceph/ceph.conf", metadata=checks(absolute_path))
    keyring: str = field(default="/etc/ceph/ceph.client.admin.keyring",
                         metadata=checks(absolute_path))
    # every `ceph`/`rbd`/`rados` call
    command_timeout: float = field(default=30.0, metadata=checks(in_range(1, 600)))
    # how long the API waits for a storage request before it answers that it is still running
    request_timeout: float = field(default=120.0, metadata=checks(in_range(1, 3600)))
    # an OSD removal gives up (leaving the OSD out, never purged) after this long without
    # drain progress
    osd_removal_timeout: float = field(default=300.0, metadata=checks(in_range(5, 86400)))
    # how often the primary refreshes the OSD, pool and volume stats from Ceph
    stats_interval: float = field(default=5.0, metadata=checks(in_range(0.5, 3600)))
    # finished requests are kept (visible) this long
    request_retention: float = field(default=3600.0, metadata=checks(in_range(10, 604800)))
    # how this node starts the OSD daemons on its devices: `systemd` (ceph-osd@<id> units) or
    # `process` (a `ceph-osd -f` of pvcd's, for machines without systemd; pid files in
    # osd_run_dir)
    osd_launcher: str = field(default="systemd", metadata=checks(one_of("systemd", "process")))
    osd_run_dir: str = field(default="/run/pvcd/ceph-osd", metadata=checks(absolute_path))
    # how guests reach RBD in generated domain XML: the cephx user and the libvirt secret
    # holding its key (null: no <auth>, for clusters without cephx for guests)
    libvirt_user: str = field(default="libvirt", metadata=checks(not_empty))
    libvirt_secret_uuid: str | None = field(default=None, metadata=checks(uuid_text))


@dataclass(frozen=True, kw_only=True)
class DriversSection:
    """Settings of the adapters to the host."""

    libvirt: LibvirtDriverSection = field(default_factory=LibvirtDriverSection)
    network: NetworkDriverSection = field(default_factory=NetworkDriverSection)
    ceph: CephDriverSection = field(default_factory=CephDriverSection)


@dataclass(frozen=True, kw_only=True)
class TasksSection:
    """Long jobs run as tasks (docs/tasks.md)."""

    # tasks this node runs at once
    workers: int = field(default=2, metadata=checks(in_range(1, 64)))
    # seconds a finished task stays visible; then the primary deletes it
    retention: float = field(default=86400.0, metadata=checks(in_range(60, 31536000)))
    # at most this many finished tasks are kept (the oldest go first)
    keep: int = field(default=1000, metadata=checks(in_range(1, 1000000)))
    # seconds the primary's running tasks may go on after a handover before they are stopped
    # (and end `Interrupted`)
    handover_wait: float = field(default=30.0, metadata=checks(in_range(0, 3600)))


@dataclass(frozen=True, kw_only=True)
class SnapshotSection:
    """VM snapshots (docs/backups.md, "VM snapshots")."""

    # seconds a guest's filesystems may stay frozen for a snapshot; longer fails the task
    freeze_timeout: float = field(default=30.0, metadata=checks(in_range(1, 600)))


@dataclass(frozen=True, kw_only=True)
class MetadataSection:
    """The cloud-init metadata service on 169.254.169.254:80 (docs/provisioning.md)."""

    # the primary answers guests of managed networks; false: no listener, no address
    enabled: bool = True


@dataclass(frozen=True, kw_only=True)
class HealthCommandSection:
    """An operator's own health check: a command run every round (no shell). Exit 0: healthy;
    exit N: delta min(N, 100); its first line of output is the check's message."""

    name: str = field(metadata=checks(check_name))
    # the argument list; the first is the executable's absolute path
    command: tuple[str, ...] = field(metadata=checks(command_argv))
    timeout: float = field(default=CHECK_LIMIT, metadata=checks(in_range(0.1, CHECK_LIMIT)))

    def cross_check(self) -> Problem | None:
        if self.name in NODE_CHECKS:
            return "name", f"{self.name!r} is a built-in check's name"
        return None


@dataclass(frozen=True, kw_only=True)
class HealthSection:
    """Node health checks and cluster faults (docs/operations.md, extensions.md §8)."""

    # seconds between two rounds of node checks, and of the primary's fault checks
    interval: float = field(default=15.0, metadata=checks(in_range(1, 3600)))
    commands: tuple[HealthCommandSection, ...] = ()
    # the local ZooKeeper server the `zkpr` check asks (`srvr`, a plain client port); null:
    # the `cluster.coordinators` entry named like this node, else the one on an address of
    # this machine, else 127.0.0.1:2181
    zookeeper: str | None = field(default=None, metadata=checks(host_port))
    # the built-in checks this node runs; null: all that apply to it (last: the name hides
    # the `checks` function in this class body)
    checks: tuple[str, ...] | None = field(default=None,
                                           metadata=checks(each=one_of(*NODE_CHECKS)))

    def cross_check(self) -> Problem | None:
        seen: dict[str, int] = {}
        for index, command in enumerate(self.commands):
            if command.name in seen:
                return (f"commands[{index}].name",
                        f"{command.name!r} is used twice (also commands[{seen[command.name]}])")
            seen[command.name] = index
        return None


@dataclass(frozen=True, kw_only=True)
class BackupSection:
    """Where backups may be written on the primary (extensions.md §0.2 "host paths", §9)."""

    # absolute directories (shared storage mounted on every coordinator); empty: backups are
    # refused. A cluster state restore saves its pre-restore copy into the first one
    allowed_paths: tuple[str, ...] = field(default=(), metadata=checks(each=absolute_path))


@dataclass(frozen=True, kw_only=True)
class LoggingSection:
    """What the node keeps of its own log in the cluster (`GET /node/<node>/log`)."""

    # lines of the node's log (INFO and above) kept in ZooKeeper; also at most 512 KiB
    zookeeper_lines: int = field(default=2000, metadata=checks(in_range(1, 100000)))


@dataclass(frozen=True, kw_only=True)
class Config:
    """One node's whole configuration."""

    node: NodeSection
    cluster: ClusterSection
    networks: NetworksSection = field(default_factory=NetworksSection)
    api: ApiSection = field(default_factory=ApiSection)
    timing: TimingSection = field(default_factory=TimingSection)
    drivers: DriversSection = field(default_factory=DriversSection)
    fencing: FencingSection = field(default_factory=FencingSection)
    tasks: TasksSection = field(default_factory=TasksSection)
    metadata: MetadataSection = field(default_factory=MetadataSection)
    health: HealthSection = field(default_factory=HealthSection)
    backup: BackupSection = field(default_factory=BackupSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    snapshot: SnapshotSection = field(default_factory=SnapshotSection)
    # The file this came from, for messages; not a YAML key.
    path: str = field(default="", metadata={"yaml": False})
