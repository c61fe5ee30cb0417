"""The node's configuration file, read into typed, frozen objects.

Each node reads one YAML file (default `/etc/pvc/pvcd.yaml`) when it starts. The whole file is
checked before the daemon touches ZooKeeper or the host, so a typo stops the node with one message
naming the file and the key (`/etc/pvc/pvcd.yaml: api.port: expected an integer, got 'abc'`) instead
of turning into a confusing failure an hour later.

The loader is generic: it walks the YAML mapping against the dataclass fields and their type hints
(str, int, float, bool, list/tuple of X, X | None, nested section). To add a config key, add a field
with its default and, if the value needs checking, a `checks(...)` in the field's metadata; checks
that relate several fields of one section go in that section's `cross_check()`. Then document the
key in `docs/configuration.md` and `etc/pvcd.example.yaml`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from pvcd.domain.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/pvc/pvcd.yaml"

# A value check returns what is wrong with a value ("must be between 1 and 65535"), or None.
Check = Callable[[Any], str | None]

# What `cross_check()` returns: the key relative to its section (may be "tokens[1].token"), and
# the problem.
Problem = tuple[str, str]


def checks(check: Check | None = None, *, each: Check | None = None) -> dict[str, Check]:
    """Field metadata: `check` applies to the whole value, `each` to every item of a list."""
    metadata: dict[str, Check] = {}
    if check is not None:
        metadata["check"] = check
    if each is not None:
        metadata["each"] = each
    return metadata


# --- value checks ------------------------------------------------------------------------------


def in_range(low: float, high: float) -> Check:
    """Accept numbers from `low` to `high`, both included."""

    def check(value: float) -> str | None:
        if low <= value <= high:  # also rejects NaN, which compares false to everything
            return None
        return f"must be between {low:g} and {high:g}, got {_describe(value)}"

    return check


def one_of(*allowed: str) -> Check:
    """Accept only the listed words."""

    def check(value: str) -> str | None:
        if value in allowed:
            return None
        return f"must be one of {', '.join(allowed)}, got {_describe(value)}"

    return check


def _not_empty(value: str | tuple[object, ...]) -> str | None:
    return None if value else "must not be empty"


_NODE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def _node_name(value: str) -> str | None:
    # The name is a ZooKeeper path component and a host name label, hence the DNS label rules.
    if _NODE_NAME.fullmatch(value):
        return None
    return (
        f"{value!r} is not a valid node name (lower-case letters, digits and '-', starting with"
        " a letter or digit, at most 63 characters)"
    )


# A bracketed IPv6 literal or a host name / IPv4 address, then the port.
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


def _host_port(value: str) -> str | None:
    found = _HOST_PORT.fullmatch(value)
    if found and 1 <= int(found.group(1)) <= 65535:
        return None
    return f"expected 'host:port' with a port between 1 and 65535, got {value!r}"


# Non-empty components of safe characters, no trailing slash.
_ZOOKEEPER_PATH = re.compile(r"(?:/[A-Za-z0-9_.-]+)+")


def _zookeeper_root(value: str) -> str | None:
    components = value.split("/")[1:]
    if (
        _ZOOKEEPER_PATH.fullmatch(value)
        and "." not in components  # ZooKeeper rejects relative components
        and ".." not in components
        and components[0] != "zookeeper"  # reserved by ZooKeeper itself
    ):
        return None
    return (
        f"{value!r} is not a valid ZooKeeper path (absolute, components of letters, digits,"
        " '_', '.', '-', no trailing slash, not under /zookeeper)"
    )


def _ip_address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"expected an IPv4 or IPv6 address, got {value!r}"
    return None


def _ip_network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"expected a network in CIDR notation (e.g. 10.0.0.0/24), got {value!r}"
    return None


def _address_with_prefix(value: str) -> str | None:
    try:
        if "/" in value:
            ipaddress.ip_interface(value)
            return None
    except ValueError:
        pass
    return f"expected an address with a prefix length (e.g. 10.0.0.254/24), got {value!r}"


def _device_name(value: str) -> str | None:
    # Linux limits interface names to 15 bytes (IFNAMSIZ - 1) and forbids '/' and whitespace.
    if 0 < len(value.encode()) <= 15 and "/" not in value and not any(c.isspace() for c in value):
        return None
    return f"{value!r} is not a valid network device name (1 to 15 characters, no '/' or spaces)"


def _token_value(value: str) -> str | None:
    # Never echo the token: the message ends up in the journal.
    if len(value) < 8:
        return "must be at least 8 characters"
    if any(c.isspace() for c in value):
        return "must not contain whitespace"
    return None


# --- the schema --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NodeSection:
    """This node's identity in the cluster."""

    name: str = field(metadata=checks(_node_name))
    coordinator: bool = False


@dataclass(frozen=True, kw_only=True)
class ClusterSection:
    """How to reach the cluster's state: the ZooKeeper ensemble and where pvcd's tree lives."""

    coordinators: tuple[str, ...] = field(metadata=checks(_not_empty, each=_host_port))
    zookeeper_root: str = field(default="/pvc", metadata=checks(_zookeeper_root))
    session_timeout: float = field(default=10.0, metadata=checks(in_range(0.5, 600)))


@dataclass(frozen=True, kw_only=True)
class NetworkSection:
    """One host network: the device it is on, its subnet and the primary's floating address."""

    device: str | None = field(default=None, metadata=checks(_device_name))
    network: str | None = field(default=None, metadata=checks(_ip_network))
    floating_ip: str | None = field(default=None, metadata=checks(_address_with_prefix))

    def cross_check(self) -> Problem | None:
        if self.floating_ip is None or self.network is None:
            return None
        address = ipaddress.ip_interface(self.floating_ip).ip
        if address not in ipaddress.ip_network(self.network, strict=False):
            return "floating_ip", f"{self.floating_ip!r} is not inside network {self.network!r}"
        return None


@dataclass(frozen=True, kw_only=True)
class NetworksSection:
    """The host networks pvcd manages addresses on."""

    cluster: NetworkSection = field(default_factory=NetworkSection)
    upstream: NetworkSection | None = None


@dataclass(frozen=True, kw_only=True)
class TokenEntry:
    """One API token; the description says whose it is, for the operator's records."""

    token: str = field(metadata=checks(_token_value))
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class AuthSection:
    """API authentication by static tokens."""

    enabled: bool = False
    secret_key: str = ""
    tokens: tuple[TokenEntry, ...] = ()

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

    listen: str = field(default="0.0.0.0", metadata=checks(_ip_address))
    port: int = field(default=7370, metadata=checks(in_range(1, 65535)))
    auth: AuthSection = field(default_factory=AuthSection)
    tls: TlsSection = field(default_factory=TlsSection)


@dataclass(frozen=True, kw_only=True)
class TimingSection:
    """Intervals and timeouts, in seconds unless said otherwise."""

    keepalive_interval: float = field(default=2.0, metadata=checks(in_range(0.05, 600)))
    # Counted in missed keepalive intervals, so it scales with keepalive_interval.
    dead_threshold: int = field(default=6, metadata=checks(in_range(1, 100)))
    resync_interval: float = field(default=60.0, metadata=checks(in_range(1, 86400)))
    handover_timeout: float = field(default=10.0, metadata=checks(in_range(0.5, 600)))
    shutdown_timeout: float = field(default=90.0, metadata=checks(in_range(1, 3600)))
    # One fence attempt (power off, confirm off, power on) may take this long.
    fence_timeout: float = field(default=60.0, metadata=checks(in_range(1, 3600)))


@dataclass(frozen=True, kw_only=True)
class FencingSection:
    """How this node is fenced (published for the primary), and the cluster's fence policy."""

    # none: this node cannot be fenced, its VMs are never recovered elsewhere;
    # ipmi: power off/on through `ipmitool`; lab / lab-fail: the lab's process-killing driver
    # (lab-fail always fails, to exercise the failed-fence path), which only lab node daemons
    # have (`python -m pvcd.lab.node`): `pvcd run` refuses them.
    driver: str = field(default="none", metadata=checks(one_of("none", "ipmi", "lab",
                                                                "lab-fail")))
    ipmi_host: str | None = field(default=None, metadata=checks(_not_empty))
    ipmi_user: str | None = field(default=None, metadata=checks(_not_empty))
    ipmi_password: str | None = field(default=None, metadata=checks(_not_empty))
    # Applied by the primary: after a failed fence, `none` leaves the VMs where they are (safe:
    # they may still run); `recover` starts them elsewhere anyway.
    on_fence_failure: str = field(default="none", metadata=checks(one_of("none", "recover")))
    attempts: int = field(default=3, metadata=checks(in_range(1, 100)))

    def cross_check(self) -> Problem | None:
        if self.driver == "ipmi" and not (self.ipmi_host and self.ipmi_user and
                                          self.ipmi_password):
            return "ipmi_host", "the ipmi driver needs ipmi_host, ipmi_user and ipmi_password"
        return None


@dataclass(frozen=True, kw_only=True)
class LibvirtDriverSection:
    """The connection to the node's libvirtd."""

    uri: str = field(default="qemu:///system", metadata=checks(_not_empty))
    migration_uri: str | None = field(default=None, metadata=checks(_not_empty))
    # how the other nodes' libvirt reaches this one for live migration (e.g.
    # qemu+tcp://10.0.0.2/system); null: the same as `uri`
    peer_uri: str | None = field(default=None, metadata=checks(_not_empty))


def _netns_name(value: str) -> str | None:
    if 0 < len(value) <= 255 and "/" not in value and value not in (".", "..") and \
            value.isprintable() and not any(c.isspace() for c in value):
        return None
    return f"{value!r} is not a valid network namespace name (a file name under /run/netns)"


def _absolute_path(value: str) -> str | None:
    return None if value.startswith("/") else f"expected an absolute path, got {value!r}"


def _unix_user(value: str) -> str | None:
    if re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
        return None
    return f"{value!r} is not a valid user name"


@dataclass(frozen=True, kw_only=True)
class NetworkDriverSection:
    """Client networks on this node: VXLAN underlay, vLAN uplink, gateway/DHCP state."""

    # the device and address VXLAN tunnels use (the cluster network); both null: this node
    # builds no managed networks
    underlay_device: str | None = field(default=None, metadata=checks(_device_name))
    underlay_address: str | None = field(default=None, metadata=checks(_ip_address))
    # the parent device of bridged networks' vLAN interfaces; null: no bridged networks
    uplink_device: str | None = field(default=None, metadata=checks(_device_name))
    # lab only: act inside this network namespace instead of the daemon's own
    netns: str | None = field(default=None, metadata=checks(_netns_name))
    # where the primary keeps each network's dnsmasq files (hosts, lease journal, log)
    state_dir: str = field(default="/var/lib/pvc/networks", metadata=checks(_absolute_path))
    dnsmasq_user: str = field(default="nobody", metadata=checks(_unix_user))
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
    conf_file: str = field(default="/etc/ceph/ceph.conf", metadata=checks(_absolute_path))
    keyring: str = field(default="/etc/ceph/ceph.client.admin.keyring",
                         metadata=checks(_absolute_path))
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
    osd_run_dir: str = field(default="/run/pvcd/ceph-osd", metadata=checks(_absolute_path))


@dataclass(frozen=True, kw_only=True)
class DriversSection:
    """Settings of the adapters to the host."""

    libvirt: LibvirtDriverSection = field(default_factory=LibvirtDriverSection)
    network: NetworkDriverSection = field(default_factory=NetworkDriverSection)
    ceph: CephDriverSection = field(default_factory=CephDriverSection)


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
    # The file this came from, for messages; not a YAML key.
    path: str = field(default="", metadata={"yaml": False})


# --- loading -----------------------------------------------------------------------------------


def load_config(path: str) -> Config:
    """Read and check the configuration file at `path`."""
    try:
        with open(path, "rb") as file:
            # Bytes, so that PyYAML detects the encoding and reports bad bytes as a YAML error.
            data = yaml.load(file.read(), Loader=_StrictLoader)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML{_yaml_error_text(exc)}") from exc
    return parse_config(data, path)


def parse_config(data: object, source: str) -> Config:
    """Check already-parsed YAML `data`; `source` names the file in error messages."""
    try:
        config: Config = _build_section(Config, data, "")
    except _Invalid as invalid:
        where = f"{invalid.key}: " if invalid.key else ""
        raise ConfigError(f"{source}: {where}{invalid.problem}") from None
    return dataclasses.replace(config, path=source)


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys, which plain YAML silently resolves last-wins."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys from `<<:` merges may legitimately be overridden
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_error_text(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return f": {exc}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"


class _Invalid(Exception):
    """The first problem found while walking the data; `parse_config` adds the file name."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem


def _build_section(section: type[Any], data: object, key: str) -> Any:
    if not isinstance(data, Mapping):
        raise _Invalid(key, f"expected a mapping, got {_describe(data)}")
    fields = [f for f in dataclasses.fields(section) if f.metadata.get("yaml", True)]
    allowed = [f.name for f in fields]
    for name in data:
        if name not in allowed:
            raise _Invalid(_join(key, str(name)), f"unknown key (allowed: {', '.join(allowed)})")
    hints = typing.get_type_hints(section)
    values: dict[str, object] = {}
    for f in fields:
        field_key = _join(key, f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Invalid(field_key, "required key is missing")
            continue
        value = _convert(hints[f.name], data[f.name], field_key)
        _check_value(f.metadata, value, field_key)
        values[f.name] = value
    built = section(**values)
    cross_check = getattr(built, "cross_check", None)
    if cross_check is not None and (problem := cross_check()) is not None:
        raise _Invalid(_join(key, problem[0]), problem[1])
    return built


def _convert(hint: Any, value: object, key: str) -> Any:
    """Return `value` as type `hint`, or raise `_Invalid` naming `key`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        others = [arg for arg in args if arg is not type(None)]
        if len(args) != 2 or len(others) != 1:
            raise TypeError(f"unsupported config type {hint!r}: only `X | None` unions")
        return None if value is None else _convert(others[0], value, key)
    if origin in (list, tuple):
        if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            raise TypeError(f"unsupported config type {hint!r}: only `tuple[X, ...]`")
        if not isinstance(value, list):
            raise _Invalid(key, f"expected a list, got {_describe(value)}")
        return origin(_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build_section(hint, value, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid(key, f"expected true or false, got {_describe(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):  # bool is an int in Python
            return value
        raise _Invalid(key, f"expected an integer, got {_describe(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Invalid(key, f"expected a number, got {_describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Invalid(key, f"expected a string, got {_describe(value)}")
    raise TypeError(f"unsupported config type {hint!r}")


def _check_value(metadata: Mapping[str, Any], value: Any, key: str) -> None:
    if value is None:
        return  # an optional key left unset: nothing to check
    check = metadata.get("check")
    if check is not None and (problem := check(value)) is not None:
        raise _Invalid(key, problem)
    each = metadata.get("each")
    if each is not None:
        for index, item in enumerate(value):
            if (problem := each(item)) is not None:
                raise _Invalid(f"{key}[{index}]", problem)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _describe(value: object) -> str:
    """Show a value as the operator wrote it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
