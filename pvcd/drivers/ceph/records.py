"""What Ceph reports, as typed records: OSDs, pools, volumes, snapshots, PGs, health.

Each record says which Ceph command it comes from, so a reader can check a field against Ceph's
own output. The driver builds them (`pvcd.drivers.ceph.driver`, `.parsers`); the storage
controller turns them into the ZooKeeper mirror.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CephHealthCheck:
    """One check of `ceph health --format json` (e.g. OSD_DOWN)."""

    name: str
    severity: str  # HEALTH_WARN | HEALTH_ERR
    message: str  # its summary

    def to_doc(self) -> dict[str, str]:
        return {"name": self.name, "severity": self.severity, "message": self.message}


@dataclass(frozen=True)
class CephHealth:
    """`ceph health --format json`: the status and the checks that are not muted."""

    status: str  # HEALTH_OK | HEALTH_WARN | HEALTH_ERR
    checks: tuple[CephHealthCheck, ...] = ()


@dataclass(frozen=True)
class Osd:
    """An OSD as the OSD map has it (`ceph osd dump`)."""

    id: int
    uuid: str
    up: bool
    in_: bool
    reweight: float
    primary_affinity: float
    state: list[str]


@dataclass(frozen=True)
class OsdStats:
    """The `osd` object of the API (objects.md). Sources, per field:
    `ceph osd dump`: uuid, up, in, primary_affinity, reweight (the map's `weight`: 1 in, 0
                     out), state (its state list joined by ',', e.g. "exists,up");
    `ceph osd df`:   utilization (%), var, pgs, kb (capacity, KiB), weight (CRUSH weight),
                     used and avail (bytes, from kb_used/kb_avail);
    `ceph osd status` (the mgr's table; Ceph 16 has no JSON form): node (the OSD's host),
                     wr_ops, rd_ops (ops/s), wr_data, rd_data (bytes/s) — rates as the mgr
                     prints them, so at most 4 significant digits.
    A field Ceph has no value for yet (a new OSD before its first report) is None; `ceph osd
    df` reports kb, used and avail as 0 for a few seconds after an OSD is marked in again."""

    id: int
    uuid: str
    up: bool
    in_: bool
    primary_affinity: float
    utilization: float | None
    var: float | None
    pgs: int | None
    kb: int | None
    weight: float | None
    reweight: float
    node: str | None
    used: int | None
    avail: int | None
    wr_ops: float | None
    wr_data: float | None
    rd_ops: float | None
    rd_data: float | None
    state: str

    def stats(self) -> dict[str, Any]:
        """The `stats` member of the API's osd object, with objects.md's field names."""
        return {
            "uuid": self.uuid, "up": self.up, "in": self.in_,
            "primary_affinity": self.primary_affinity, "utilization": self.utilization,
            "var": self.var, "pgs": self.pgs, "kb": self.kb, "weight": self.weight,
            "reweight": self.reweight, "node": self.node, "used": self.used,
            "avail": self.avail, "wr_ops": self.wr_ops, "wr_data": self.wr_data,
            "rd_ops": self.rd_ops, "rd_data": self.rd_data, "state": self.state,
        }


@dataclass(frozen=True)
class Pool:
    """A pool as the OSD map has it (`ceph osd pool ls detail`)."""

    name: str
    id: int
    size: int  # copies
    min_size: int
    pg_num: int
    applications: list[str]

    @property
    def is_rbd(self) -> bool:
        return "rbd" in self.applications


@dataclass(frozen=True)
class PoolStats:
    """The `stats` of the API's pool object: `rados df` (usage lags writes by a few seconds)."""

    name: str
    id: int
    size_bytes: int
    num_objects: int
    num_object_clones: int
    num_object_copies: int
    num_objects_missing_on_primary: int
    num_objects_unfound: int
    num_objects_degraded: int
    read_ops: int
    read_bytes: int
    write_ops: int
    write_bytes: int

    def stats(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "name"}


@dataclass(frozen=True)
class Volume:
    pool: str
    name: str
    stats: dict[str, Any]  # the fields of `rbd info --format json`, as Ceph names them

    @property
    def size(self) -> int:
        return int(self.stats["size"])


@dataclass(frozen=True)
class Snapshot:
    pool: str
    volume: str
    snapshot: str
    id: int
    size: int
    protected: bool
    timestamp: str


@dataclass(frozen=True)
class PgState:
    """One PG: its up/acting sets and state, from the map or from the OSDs' reports."""

    pgid: str
    up: tuple[int, ...]
    acting: tuple[int, ...]
    state: str = ""
    objects_to_move: int = 0  # misplaced + degraded (stats only)


@dataclass(frozen=True)
class OsdRemoval:
    """What `remove_osd_safely` did."""

    osd_id: int
    pgs_moved: int  # PGs that had the OSD in their up or acting set when it was marked out
    drain_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class PoolListing:
    """One pool's volumes and snapshots, from `rbd ls -l` (one call per pool, instead of one
    `rbd snap ls` per volume)."""

    volumes: list[str]
    snapshots: dict[str, list[dict[str, Any]]]  # volume -> [{name, id, size, ...}]
    sizes: dict[str, int] = field(default_factory=dict)  # volume -> bytes


ProgressCallback = Callable[[str], None]
