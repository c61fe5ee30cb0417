"""Typed records of the cluster (the documents stored in ZooKeeper) and their dict form.

Each record is a dataclass with `to_doc()` / `from_doc()`. `from_doc` ignores unknown keys and
fills missing ones with defaults, so a newer daemon can read an older record and vice versa
within one schema version.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, TypeVar

from pvcd.domain.states import PRIMARY_TARGET

T = TypeVar("T")


def from_dict(cls: type[T], doc: Any) -> T:
    """Build dataclass `cls` from a dict, ignoring unknown keys (nested dataclasses too)."""
    if not isinstance(doc, dict):
        doc = {}
    renamed: dict[str, str] = getattr(cls, "RENAMED", {})
    if renamed and any(old in doc for old in renamed):  # a record of an older schema
        doc = {**{renamed[k]: v for k, v in doc.items() if k in renamed and v is not None},
               **{k: v for k, v in doc.items() if k not in renamed}}
    kwargs: dict[str, Any] = {}
    for name, sub, items in _fields_of(cls):
        if name not in doc:
            continue
        value = doc[name]
        if sub is not None and value is not None:
            value = from_dict(sub, value)
        elif items is not None and isinstance(value, list):
            value = [from_dict(items, item) for item in value]
        kwargs[name] = value
    return cls(**kwargs)


_Fields = tuple[tuple[str, type | None, type | None], ...]
_FIELDS: dict[type, _Fields] = {}


def _fields_of(cls: type) -> _Fields:
    """Per field of record `cls`: its name, its dataclass type (a nested record), the record
    type of its items (a list of records). Worked out once per class, not per document."""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = tuple(
            (f.name, _dataclass_type(f.type),
             _NESTED_LISTS[str(f.type)] if f.type in _NESTED_LISTS else None)
            for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    return fields


def as_doc(record: Any) -> dict[str, Any]:
    """`dataclasses.asdict(record)`, the same dict (containers copied, nested records turned
    into dicts) made without its generic walk: every record's `to_doc`."""
    return {name: _plain(getattr(record, name)) for name, _, _ in _fields_of(type(record))}


_ATOMIC = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in _ATOMIC:
        return value
    if kind is list:
        return [_plain(item) for item in value]
    if kind is dict:
        return {_plain(key): _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_doc(value)
    if kind is tuple:
        return tuple(_plain(item) for item in value)
    return copy.deepcopy(value)  # (as asdict does with anything else)


def _dataclass_type(annotation: Any) -> type | None:
    if isinstance(annotation, str):
        return _NESTED.get(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return annotation
    return None


@dataclasses.dataclass
class NodeSpec:
    """Desired state of a node: written at registration and by the API."""

    name: str
    coordinator: bool = False
    # The requested domain state (flush|ready) and a counter: every accepted request bumps it,
    # so re-requesting the same state after an incomplete change starts a fresh change.
    domain_state: str = "ready"
    domain_request: int = 0

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class NodeStats:
    """Live statistics reported by the node's keepalive. Memory in MiB."""

    cpu_count: int = 0
    kernel: str = ""
    os: str = ""
    arch: str = ""
    load: float = 0.0
    memory_total: int = 0
    memory_used: int = 0
    memory_free: int = 0
    memory_allocated: int = 0
    vcpu_total: int = 0
    vcpu_allocated: int = 0
    domains_count: int = 0
    running_domains: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class NodeStatus:
    """Observed state of a node, written by the node itself (and `dead` by the primary)."""

    daemon_state: str = "init"
    coordinator_state: str = "client"
    domain_state: str = "ready"
    domain_request_done: int = 0
    keepalive: float = 0.0
    started: float = 0.0
    pid: int = 0
    underlay_address: str = ""  # VXLAN endpoint of this node (client networks)
    libvirt_uri: str = ""  # how peers reach this node's libvirt (live migration)
    migration_uri: str | None = None
    stats: NodeStats = dataclasses.field(default_factory=NodeStats)
    # documents this node refuses to act on: key → reason (pvcd.controllers.refusals)
    refused: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        """`dataclasses.asdict(self)`, built by hand: every keepalive writes it (each second),
        and asdict deep-copies `running_domains` entry by entry, one per VM of the node."""
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        stats = doc["stats"] = {f.name: getattr(self.stats, f.name)
                                for f in dataclasses.fields(self.stats)}
        stats["running_domains"] = list(self.stats.running_domains)
        doc["refused"] = dict(self.refused)
        return doc


@dataclasses.dataclass
class Handover:
    """A request to move the primary role: from the current primary to `to` (or any other)."""

    from_node: str
    to_node: str | None
    requested: float

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class PrimaryLock:
    """Content of the ephemeral primary znode: who holds the role since when."""

    node: str
    since: float = 0.0

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class ApiSession:
    """A logged-in API session; `token_sha256` ties it to the token it was opened with."""

    token_sha256: str
    created: float
    expires: float

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)




@dataclasses.dataclass
class NetworkSpec:
    """Desired state of a client network, written by the API. Addresses are strings in the
    form the operator gave them, already validated (CIDR networks, gateways inside them)."""

    vni: int
    description: str
    type: str  # managed (VXLAN, gateway and DHCP on the primary) | bridged (vLAN on the uplink)
    domain: str | None = None
    ip4_network: str | None = None
    ip4_gateway: str | None = None
    dhcp4: bool = False
    dhcp4_start: str | None = None
    dhcp4_end: str | None = None
    ip6_network: str | None = None
    ip6_gateway: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class StaticLeaseSpec:
    """A DHCP reservation (desired state, API): `mac` always gets `ip` (and `hostname`)."""

    mac: str
    ip: str
    hostname: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class DhcpLease:
    """An active DHCP lease as the primary's dnsmasq reported it; `expires` 0 = infinite."""

    mac: str
    ip: str
    hostname: str | None = None
    expires: int = 0

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class AclSpec:
    """A firewall rule of a network: `rule` as the operator wrote it, `body` the nftables JSON
    form it was validated into (the only form ever applied), `order` its position (0 first)."""

    description: str
    direction: str  # in | out
    order: int
    rule: str
    body: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)




MIRRORED_MAX = 64  # paths a request records of its completion (a pool removal may have more)


@dataclasses.dataclass
class StorageRequest:
    """One storage operation asked for by the API and carried out by its `target` (the
    primary, or the node that owns an OSD): `pending` → `running` → `done` | `failed`.
    `executor` ("<node>/<pid>") claims it; `progress` says what a long one is doing;
    `error` is the domain error's class name when it failed."""

    id: str
    op: str
    args: dict[str, Any]
    target: str
    state: str = "pending"
    message: str = ""
    progress: str = ""
    error: str | None = None
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    executor: str | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    # the mirror's znodes its completion created or deleted (["create"|"delete", path]), so
    # the API answers once its cache shows them too (read your writes); at most MIRRORED_MAX
    mirrored: list[list[str]] = dataclasses.field(default_factory=list)

    @property
    def finished_state(self) -> bool:
        return self.state in ("done", "failed")

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class OsdRecord:
    """An OSD Ceph confirmed; `node` owns its device (carries out its add and removal)."""

    id: int
    node: str | None = None
    device: str | None = None
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class PoolRecord:
    name: str
    pgs: int | None = None
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class VolumeRecord:
    """`stats` holds the fields of `rbd info --format json`."""

    name: str
    pool: str
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class SnapshotRecord:
    pool: str
    volume: str
    snapshot: str
    id: int | None = None
    size: int | None = None
    timestamp: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class Migration:
    """A requested move of a running VM from `source` to the VM's (new) node.

    The source node carries it out (live, else shutdown + start on the target) and reports
    `migration_done = request` in the VM's status; until then the target must not start it.
    """

    source: str
    request: int
    action: str = "migrate"  # migrate | unmigrate (for the reported state)


@dataclasses.dataclass
class VmRemoval:
    """A requested removal of a VM, carried out by the VM's node (docs/vms.md): it destroys and
    undefines the domain, then deletes the VM's records in one transaction that also creates
    the storage requests removing `disks`. The API chose their ids, so it can wait on them."""

    disks: list[list[str]] = dataclasses.field(default_factory=list)  # [pool, volume, id]

    def volume_requests(self, created: float) -> list[StorageRequest]:
        """The storage requests that remove the disks (each with its snapshots)."""
        return [StorageRequest(id=request_id, op="volume-remove", target=PRIMARY_TARGET,
                               args={"pool": pool, "volume": volume, "with_snapshots": True},
                               created=created)
                for pool, volume, request_id in self.disks]


@dataclasses.dataclass
class VmTag:
    """A VM's tag (extensions.md §6.3): `type` user (the API) or system (pvcd itself)."""

    name: str = ""  # (a junk entry reads as a nameless tag, which the rules refuse)
    type: str = "user"
    protected: bool = False


@dataclasses.dataclass
class VmSpec:
    """Desired state of a VM, written by the API (and by recovery decisions)."""

    uuid: str
    name: str
    xml: str
    node: str
    memory: int = 0  # MiB, from the XML (placement and allocation)
    vcpu: int = 0
    state: str = "start"  # start | shutdown | stop | disable
    last_node: str | None = None
    restart_request: int = 0  # bumped by every restart request
    state_request: int = 0  # bumped by every state request: a fresh try after a failure
    migration: Migration | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # objects.md fields of the XML
    remove: VmRemoval | None = None  # set once by DELETE /vm/<vm>; never cleared
    profile: str | None = None  # the provisioner profile it was made from (§3.9, §4 user-data)
    # metadata (extensions.md §6, pvcd.domain.vm_meta): where it may run and how it moves
    node_limit: list[str] = dataclasses.field(default_factory=list)  # empty: any node
    node_selector: str = "none"  # none: the cluster default
    # started when its node becomes ready, then reset (a flush with no target sets it)
    node_autostart: bool = False
    migration_method: str = "none"  # live | shutdown | none (live, else shutdown)
    migration_max_downtime: int = 300  # ms, handed to libvirt before a live migration
    tags: list[VmTag] = dataclasses.field(default_factory=list)

    # schema 1 called `node_selector` `selector` (a rolling upgrade may still meet one)
    RENAMED: ClassVar[dict[str, str]] = {"selector": "node_selector"}

    @property
    def removing(self) -> bool:
        return self.remove is not None

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class VmStatus:
    """Observed state of a VM, written by the node that runs (or last ran) it."""

    node: str = ""
    state: str = "stopped"  # running | stopped | shutting-down | crashed | failed | migrating
    libvirt_state: str = ""
    libvirt_reason: str = ""
    failed_reason: str = ""
    restart_done: int = 0
    migration_done: int = 0
    state_request_done: int = 0
    since: float = 0.0
    defined_xml_hash: str = ""  # of the spec XML the node last defined (a change redefines)
    # what the node did for a snapshot's guest hold (`pvcd.domain.vm_snapshots.HeldGuest`)
    hold: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class VmClaim:
    """`vms/<uuid>/owner`: the one node that may run the VM (pvcd.controllers.vm_claim)."""

    node: str
    since: float = 0.0

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


@dataclasses.dataclass
class FenceRecord:
    """The primary's record of fencing a node: `fencing` → `fenced` | `failed`."""

    state: str
    attempts: int = 0
    message: str = ""
    since: float = 0.0
    recovered: bool = False

    def to_doc(self) -> dict[str, Any]:
        return as_doc(self)


_NESTED: dict[str, type] = {"NodeStats": NodeStats, "Migration": Migration,
                            "Migration | None": Migration, "VmRemoval | None": VmRemoval}
_NESTED_LISTS: dict[str, type] = {"list[VmTag]": VmTag}
