"""The Ceph driver: pools, RBD volumes and snapshots, OSD state and safe OSD removal.

A thin adapter over the `ceph`, `rbd` and `rados` command-line tools (argument lists, a timeout
on every call, `--format json` wherever Ceph offers it). It knows nothing of ZooKeeper: the
storage controller decides *what* to do; this module does it and reports what Ceph says.

Every operator-given value (pool, volume and snapshot names, sizes, PG counts, OSD ids and flags)
is validated *before* any command runs, so a bad value never reaches Ceph and comes back as
`InvalidValue`. Ceph's own failures become `NotFound` (ENOENT), `Conflict` (EEXIST, EBUSY,
ENOTEMPTY: the object exists or is in use) or `BackendError`, each carrying Ceph's stderr text.
Some Ceph commands succeed on a missing object (`ceph osd out 99`, `ceph osd pool delete nope`)
or an existing one (`ceph osd pool create p` twice): those are checked first.

Safe OSD removal (`remove_osd_safely`) is the one place with real danger. Measured on 16.2.15:
`ceph osd safe-to-destroy` said "safe" while PG stats still lagged the OSD map, and the purge left
objects unfound. So the drain is judged on two sources that must agree: the PG mapping computed
from the *current* OSD map (`ceph osd getmap` + `osdmaptool --test-map-pgs-dump-all`, which
includes pg_temp, i.e. where data still is while backfilling) and the PG stats reported by the
OSDs (`ceph pg dump pgs`). Done means: no PG has the OSD in its up or acting set in the map, every
PG's reported up/acting equals the map's (so the stats are from the current interval), every PG
is active+clean, and `safe-to-destroy` agrees.

Races: a pool created or an OSD marked in by someone else during the drain only delays it (the
conditions are re-read on every poll). If the drain stops progressing the OSD is left *out* but
in place, never purged; `osd_in` undoes it.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound

log = logging.getLogger(__name__)

# `ceph osd set` flags an operator may set and unset (Ceph 16 accepts these; `full` is obsolete
# and `pglog_hardlimit` cannot be unset, so neither is offered).
OSD_FLAGS = (
    "noout", "noin", "nodown", "noup", "norebalance", "norecover", "nobackfill", "noscrub",
    "nodeep-scrub", "pause", "notieragent", "nosnaptrim",
)
# flags that stop data from moving off an OSD that is marked out
DRAIN_BLOCKING_FLAGS = ("pause", "norecover", "nobackfill", "norebalance")

SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_SIZE = (1 << 63) - 1
MAX_PGS = 32768
MAX_REPLICAS = 10
# Ceph takes almost any byte string as a name; we accept a portable subset that is safe in RBD
# specs (`pool/volume@snapshot`), QEMU's `rbd:` filenames (':' separates options) and shells.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
NAME_LIMITS = {"pool": 63, "volume": 96, "snapshot": 96}

_LOG_PREFIX_RE = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+[+-]\d{4} [0-9a-f]+ +-?\d+ ")
_PROGRESS_RE = re.compile(r"[A-Za-z ]+: \d+% complete\.\.\.(done|failed)?\.?")
_MAP_LINE_RE = re.compile(
    r"^(?P<pgid>\d+\.[0-9a-f]+) raw \(\[[^\]]*\], p-?\d+\) "
    r"up \(\[(?P<up>[^\]]*)\], p-?\d+\) acting \(\[(?P<acting>[^\]]*)\], p-?\d+\)$"
)
_CONFLICT_ERRNOS = (errno.EEXIST, errno.EBUSY, errno.ENOTEMPTY)


# -- validation: pure functions, run before any command ------------------------------------------

def parse_size(value: str | int) -> int:
    """Bytes from `1073741824`, `4096M` or `20G` (K/M/G/T are binary multiples)."""
    if isinstance(value, bool):
        raise InvalidValue(f"size {value!r} is invalid")
    if isinstance(value, int):
        number, unit = value, ""
    elif isinstance(value, str) and (match := re.fullmatch(r"(\d+)([KMGT]?)", value)):
        number, unit = int(match.group(1)), match.group(2)
    else:
        raise InvalidValue(
            f"size {value!r} is invalid: bytes, or a number with one of the suffixes K, M, G, T "
            "(binary multiples), e.g. 1073741824, 4096M or 20G"
        )
    size = number * SIZE_UNITS.get(unit, 1)
    if not 0 < size <= MAX_SIZE:
        raise InvalidValue(f"size {value!r} is out of range: more than 0 bytes, less than 8 EiB")
    return size


def check_name(kind: str, name: str) -> str:
    """A pool, volume or snapshot name (`kind`), or InvalidValue saying what is allowed."""
    limit = NAME_LIMITS[kind]
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > limit:
        raise InvalidValue(
            f"{kind} name {name!r} is invalid: 1-{limit} letters, digits, '_', '.', '+' or '-', "
            "not starting with '.', '+' or '-' (no '/', '@', ':' or whitespace)"
        )
    return name


def check_pool_name(name: str) -> str:
    return check_name("pool", name)


def check_volume_name(name: str) -> str:
    return check_name("volume", name)


def check_snapshot_name(name: str) -> str:
    return check_name("snapshot", name)


def check_pgs(pgs: int | str) -> int:
    """A placement group count: a power of two from 1 to 32768."""
    number = _integer(pgs)
    if number is None or not 1 <= number <= MAX_PGS or number & (number - 1):
        raise InvalidValue(f"pgs {pgs!r} is invalid: a power of two from 1 to {MAX_PGS}, "
                           "e.g. 64 or 256")
    return number


def check_replicas(replicas: int | str) -> int:
    number = _integer(replicas)
    if number is None or not 1 <= number <= MAX_REPLICAS:
        raise InvalidValue(f"replicas {replicas!r} is invalid: 1 to {MAX_REPLICAS} copies")
    return number


def check_osd_id(osd_id: int | str) -> int:
    number = _integer(osd_id)
    if number is None or number < 0:
        raise InvalidValue(f"OSD id {osd_id!r} is invalid: a number like 0 or 12")
    return number


def check_osd_flag(flag: str) -> str:
    if flag not in OSD_FLAGS:
        raise InvalidValue(f"OSD flag {flag!r} is invalid: one of {', '.join(OSD_FLAGS)}")
    return flag


def _integer(value: int | str) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,9}", value):
        return int(value)
    return None


# -- records -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CephHealth:
    status: str  # HEALTH_OK | HEALTH_WARN | HEALTH_ERR
    checks: dict[str, str] = field(default_factory=dict)  # check name -> summary message


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


ProgressCallback = Callable[[str], None]


# -- the removal rules: pure, so they can be read and tested on their own -------------------------

def check_osd_removal(osd_id: int, osds: Sequence[Osd], pools: Sequence[Pool],
                      flags: Sequence[str], pgs: Sequence[PgState]) -> None:
    """Refuse (NotFound/Conflict) a removal that would leave data without a copy or cannot
    finish; return if `osd_id` may be drained and removed."""
    target = next((osd for osd in osds if osd.id == osd_id), None)
    if target is None:
        raise NotFound(f"osd.{osd_id} does not exist")
    blocking = [flag for flag in DRAIN_BLOCKING_FLAGS if flag in flags]
    if blocking:
        raise Conflict(f"cannot remove osd.{osd_id}: the cluster flag(s) {', '.join(blocking)} "
                       "stop data from moving off it; unset them first")
    remaining = [osd for osd in osds if osd.up and osd.in_ and osd.id != osd_id]
    used_pools = [pool for pool in pools if pool.pg_num > 0]
    if used_pools and not remaining:
        raise Conflict(f"cannot remove osd.{osd_id}: it is the last OSD that is up and in; the "
                       f"PGs of {len(used_pools)} pool(s) would be left without a copy")
    short = [f"{pool.name} (size {pool.size})" for pool in used_pools
             if pool.size > len(remaining)]
    if short:
        raise Conflict(f"cannot remove osd.{osd_id}: only {len(remaining)} other OSD(s) are up "
                       f"and in, fewer than the copies kept by pool(s) {', '.join(short)}")
    if not target.up:
        unclean = _count_states(pg for pg in pgs if pg.state != "active+clean")
        holding = [pg.pgid for pg in pgs if osd_id in pg.up or osd_id in pg.acting]
        details = []
        if unclean:
            details.append(f"PG states {unclean}")
        if holding:
            details.append(f"PGs on it: {', '.join(holding[:10])}")
        if details:
            raise Conflict(f"cannot remove osd.{osd_id}: it is down and not all PGs are clean "
                           f"({'; '.join(details)}); it may hold their only copy: start it "
                           "again or let recovery finish first")


def drain_problems(osd_id: int, mapped: Sequence[PgState],
                   reported: Sequence[PgState]) -> tuple[list[str], list[str], list[str]]:
    """(PGs whose map up/acting still holds the OSD, PGs whose reported up/acting differs from
    the map or that have not reported, PGs that are not active+clean) — all empty when drained."""
    on_osd = [pg.pgid for pg in mapped if osd_id in pg.up or osd_id in pg.acting]
    by_id = {pg.pgid: pg for pg in reported}
    lagging = []
    for pg in mapped:
        stat = by_id.get(pg.pgid)
        if stat is None or stat.up != pg.up or stat.acting != pg.acting:
            lagging.append(pg.pgid)
    unclean = [pg.pgid for pg in reported if pg.state != "active+clean"]
    return on_osd, lagging, unclean


def _count_states(pgs: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pg in pgs:
        counts[pg.state] = counts.get(pg.state, 0) + 1
    return counts


# -- the driver ----------------------------------------------------------------------------------

class CephDriver:
    """Runs Ceph's tools as client.admin of the cluster described by `conf_path`."""

    def __init__(self, conf_path: Path | str, keyring_path: Path | str, timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.conf_path = str(conf_path)
        self.keyring_path = str(keyring_path)
        self.timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._rados: Any = None
        # PVCD_CEPH_CLI_ONLY=1: every command through the CLI (for comparisons and debugging)
        self._rados_failed = os.environ.get("PVCD_CEPH_CLI_ONLY") == "1"
        self._rados_lock = threading.Lock()

    # -- cluster -------------------------------------------------------------------------------

    def status_text(self) -> str:
        """The raw text of `ceph status` (the API's `ceph_data`)."""
        return self._run("ceph", ["status"])

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._json("ceph", ["status"])
        return doc

    def df_text(self) -> str:
        """The raw text of `rados df`."""
        return self._run("rados", ["df"])

    def df(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._json("rados", ["df"])
        return doc

    def health(self) -> CephHealth:
        doc = self._json("ceph", ["health"])
        checks = {name: check.get("summary", {}).get("message", "")
                  for name, check in doc.get("checks", {}).items()}
        return CephHealth(doc.get("status", "HEALTH_ERR"), checks)

    def osd_set(self, flag: str) -> None:
        self._run("ceph", ["osd", "set", check_osd_flag(flag)])
        log.info("ceph osd flag set flag=%s", flag)

    def osd_unset(self, flag: str) -> None:
        self._run("ceph", ["osd", "unset", check_osd_flag(flag)])
        log.info("ceph osd flag unset flag=%s", flag)

    def osd_flags(self) -> list[str]:
        """Every flag set in the OSD map (including Ceph's internal ones like sortbitwise)."""
        return list(self._json("ceph", ["osd", "dump"]).get("flags_set", []))

    # -- OSDs ----------------------------------------------------------------------------------

    def osd_list(self) -> list[Osd]:
        return _osds_from_dump(self._json("ceph", ["osd", "dump"]))

    def osd_stats(self) -> list[OsdStats]:
        """Every OSD with the API's statistics (see `OsdStats` for where each comes from)."""
        osds = self.osd_list()
        df = {node["id"]: node for node in self._json("ceph", ["osd", "df"]).get("nodes", [])}
        table = parse_osd_status(self._run("ceph", ["osd", "status"]))
        result = []
        for osd in osds:
            usage = df.get(osd.id, {})
            rates = table.get(osd.id, {})
            result.append(OsdStats(
                id=osd.id, uuid=osd.uuid, up=osd.up, in_=osd.in_,
                primary_affinity=osd.primary_affinity,
                utilization=usage.get("utilization"), var=usage.get("var"),
                pgs=usage.get("pgs"), kb=usage.get("kb"), weight=usage.get("crush_weight"),
                reweight=osd.reweight,
                node=rates.get("node") or None,
                used=_kib(usage.get("kb_used")), avail=_kib(usage.get("kb_avail")),
                wr_ops=rates.get("wr_ops"), wr_data=rates.get("wr_data"),
                rd_ops=rates.get("rd_ops"), rd_data=rates.get("rd_data"),
                state=",".join(osd.state),
            ))
        return result

    def osd_in(self, osd_id: int | str) -> None:
        number = self._existing_osd(osd_id)
        self._run("ceph", ["osd", "in", str(number)])
        log.info("ceph osd in osd=%d", number)

    def osd_out(self, osd_id: int | str) -> None:
        number = self._existing_osd(osd_id)
        self._run("ceph", ["osd", "out", str(number)])
        log.info("ceph osd out osd=%d", number)

    def _existing_osd(self, osd_id: int | str) -> int:
        number = check_osd_id(osd_id)
        if all(osd.id != number for osd in self.osd_list()):
            raise NotFound(f"osd.{number} does not exist")
        return number

    # -- pools ---------------------------------------------------------------------------------

    def pool_list(self) -> list[Pool]:
        """Every pool; `Pool.is_rbd` tells RBD pools from Ceph's own (device_health_metrics)."""
        return [
            Pool(name=p["pool_name"], id=p["pool_id"], size=p["size"], min_size=p["min_size"],
                 pg_num=p["pg_num"], applications=sorted(p.get("application_metadata", {})))
            for p in self._json("ceph", ["osd", "pool", "ls", "detail"])
        ]

    def pool_stats(self) -> list[PoolStats]:
        names = PoolStats.__dataclass_fields__
        return [PoolStats(**{k: v for k, v in p.items() if k in names})
                for p in self.df().get("pools", [])]

    def pool_create(self, name: str, pgs: int | str, replicas: int | str | None = None) -> None:
        """Create a replicated pool with `pgs` PGs (autoscaler off: the operator chose) and
        initialise it for RBD. `replicas` defaults to the cluster's `osd pool default size`."""
        check_pool_name(name)
        count = check_pgs(pgs)
        size = None if replicas is None else check_replicas(replicas)
        if any(pool.name == name for pool in self.pool_list()):
            raise Conflict(f"pool {name} already exists")
        args = ["osd", "pool", "create", name, str(count), str(count), "replicated",
                "--autoscale-mode", "off"]
        if size is not None:
            args += ["--size", str(size)]
        command: dict[str, Any] = {"prefix": "osd pool create", "pool": name, "pg_num": count,
                                   "pgp_num": count, "pool_type": "replicated",
                                   "autoscale_mode": "off"}
        if size is not None:
            command["size"] = size
        try:
            out = self._mon_write(command)
            if out is None:  # no librados here: the CLI
                out = self._run("ceph", args, want_stderr=True)
        except BackendError as exc:
            if "ERANGE" in str(exc):  # too many PGs for this cluster's OSDs
                raise InvalidValue(f"pgs {count} is too many for this cluster: {exc}") from exc
            raise
        if "already exists" in out:  # Ceph answers 0 to a duplicate create
            raise Conflict(f"pool {name} already exists")
        try:
            self._run("rbd", ["pool", "init", "--pool", name])
        except BackendError:
            self._run("ceph", ["osd", "pool", "delete", name, name,
                               "--yes-i-really-really-mean-it"])
            raise
        log.info("ceph pool created pool=%s pgs=%d size=%s", name, count, size or "default")

    def pool_delete(self, name: str) -> None:
        """Delete a pool and everything in it (the API asks for yes_i_really_mean_it first)."""
        check_pool_name(name)
        if all(pool.name != name for pool in self.pool_list()):
            raise NotFound(f"pool {name} does not exist")
        self._run("ceph", ["osd", "pool", "delete", name, name, "--yes-i-really-really-mean-it"])
        log.info("ceph pool deleted pool=%s", name)

    # -- volumes -------------------------------------------------------------------------------

    def volume_list(self, pool: str) -> list[str]:
        check_pool_name(pool)
        return list(self._json("rbd", ["ls", "--pool", pool]))

    def volume_info(self, pool: str, name: str) -> Volume:
        check_pool_name(pool)
        check_volume_name(name)
        doc = self._json("rbd", ["info", "--pool", pool, "--image", name])
        return Volume(pool, name, doc)

    def volume_create(self, pool: str, name: str, size_bytes: int | str) -> None:
        check_pool_name(pool)
        check_volume_name(name)
        size = parse_size(size_bytes)
        self._run("rbd", ["create", "--pool", pool, "--image", name, "--size", f"{size}B"])
        log.info("ceph volume created pool=%s volume=%s bytes=%d", pool, name, size)

    def volume_resize(self, pool: str, name: str, size_bytes: int | str,
                      allow_shrink: bool = False) -> None:
        """Grow a volume; shrinking (which cuts off its end) needs `allow_shrink`."""
        check_pool_name(pool)
        check_volume_name(name)
        size = parse_size(size_bytes)
        current = self.volume_info(pool, name).size
        if size < current and not allow_shrink:
            raise InvalidValue(f"volume {pool}/{name} is {current} bytes; shrinking it to {size} "
                               "would destroy the data beyond that size")
        args = ["resize", "--pool", pool, "--image", name, "--size", f"{size}B", "--no-progress"]
        if allow_shrink:
            args.append("--allow-shrink")
        self._run("rbd", args)
        log.info("ceph volume resized pool=%s volume=%s bytes=%d", pool, name, size)

    def volume_rename(self, pool: str, name: str, new_name: str) -> None:
        check_pool_name(pool)
        check_volume_name(name)
        check_volume_name(new_name)
        self._run("rbd", ["rename", "--pool", pool, "--image", name,
                          "--dest-pool", pool, "--dest", new_name])
        log.info("ceph volume renamed pool=%s volume=%s new=%s", pool, name, new_name)

    def volume_delete(self, pool: str, name: str, with_snapshots: bool = False) -> None:
        """Delete a volume; one with snapshots is a Conflict unless `with_snapshots`."""
        check_pool_name(pool)
        check_volume_name(name)
        if with_snapshots:
            self._run("rbd", ["snap", "purge", "--pool", pool, "--image", name, "--no-progress"])
        self._run("rbd", ["rm", "--pool", pool, "--image", name, "--no-progress"])
        log.info("ceph volume deleted pool=%s volume=%s", pool, name)

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot_list(self, pool: str, volume: str) -> list[Snapshot]:
        check_pool_name(pool)
        check_volume_name(volume)
        return [
            Snapshot(pool, volume, s["name"], int(s["id"]), int(s["size"]),
                     str(s.get("protected", "false")) == "true", str(s.get("timestamp", "")))
            for s in self._json("rbd", ["snap", "ls", "--pool", pool, "--image", volume])
        ]

    def snapshot_create(self, pool: str, volume: str, snapshot: str) -> None:
        self._snapshot_command("create", pool, volume, snapshot)
        log.info("ceph snapshot created pool=%s volume=%s snapshot=%s", pool, volume, snapshot)

    def snapshot_delete(self, pool: str, volume: str, snapshot: str) -> None:
        self._snapshot_command("rm", pool, volume, snapshot)
        log.info("ceph snapshot deleted pool=%s volume=%s snapshot=%s", pool, volume, snapshot)

    def _snapshot_command(self, action: str, pool: str, volume: str, snapshot: str) -> None:
        check_pool_name(pool)
        check_volume_name(volume)
        check_snapshot_name(snapshot)
        self._run("rbd", ["snap", action, "--pool", pool, "--image", volume,
                          "--snap", snapshot, "--no-progress"])

    # -- placement groups ----------------------------------------------------------------------

    def pg_map(self) -> list[PgState]:
        """Every PG's up and acting set under the current OSD map (pg_temp included)."""
        with tempfile.TemporaryDirectory(prefix="pvcd-osdmap-") as folder:
            path = str(Path(folder) / "osdmap")
            self._run("ceph", ["osd", "getmap", "-o", path])
            text = self._run_tool(["osdmaptool", path, "--test-map-pgs-dump-all"])
        return parse_pg_map(text)

    def pg_stats(self) -> list[PgState]:
        """Every PG as the OSDs last reported it (through the mgr; lags the map)."""
        doc = self._json("ceph", ["pg", "dump", "pgs"])
        if isinstance(doc, dict):
            if not doc.get("pg_ready", True):
                return []
            entries = doc.get("pg_stats", [])
        else:
            entries = doc
        result = []
        for pg in entries:
            sums = pg.get("stat_sum", {})
            to_move = int(sums.get("num_objects_misplaced", 0)) + int(
                sums.get("num_objects_degraded", 0))
            result.append(PgState(pg["pgid"], tuple(pg["up"]), tuple(pg["acting"]),
                                  pg["state"], to_move))
        return result

    # -- safe OSD removal ----------------------------------------------------------------------

    def remove_osd_safely(self, osd_id: int | str, stop_daemon: Callable[[int], None],
                          progress_timeout: float = 120.0, poll_interval: float = 0.5,
                          on_progress: ProgressCallback | None = None) -> OsdRemoval:
        """Drain `osd_id` and remove it without leaving any data without a copy.

        Refuses first (NotFound/Conflict) when that cannot be done (see `check_osd_removal`).
        Then: mark it out; wait until the map and the PG reports agree that no PG uses it and
        all PGs are active+clean (module docstring); call `stop_daemon(osd_id)` (whoever owns
        the process: the lab or a node); wait until the map has it down; `ceph osd purge`;
        remove its auth key. If the drain makes no progress for `progress_timeout` seconds,
        raise BackendError and leave the OSD out but in place.
        """
        number = check_osd_id(osd_id)
        started = self._clock()

        def say(message: str) -> None:
            log.info("ceph osd removal osd=%d %s", number, message)
            if on_progress is not None:
                on_progress(f"osd.{number}: {message}")

        dump = self._json("ceph", ["osd", "dump"])
        pools = [Pool(p["pool_name"], p["pool"], p["size"], p["min_size"], p["pg_num"], [])
                 for p in dump.get("pools", [])]
        check_osd_removal(number, _osds_from_dump(dump), pools, dump.get("flags_set", []),
                          self.pg_stats())
        pgs_moved = sum(1 for pg in self.pg_map() if number in pg.up or number in pg.acting)
        say(f"marking out ({pgs_moved} PGs to move)")
        self._run("ceph", ["osd", "out", str(number)])
        self._wait_drained(number, progress_timeout, poll_interval, say)
        drain_seconds = self._clock() - started
        say(f"drained in {drain_seconds:.1f} s; stopping its daemon")
        try:
            stop_daemon(number)
        except Exception as exc:
            raise BackendError(f"osd.{number} is drained and out, but stopping its daemon "
                               f"failed: {exc}; it was NOT purged") from exc
        self._wait_down(number, progress_timeout, poll_interval, say)
        self._run("ceph", ["osd", "purge", str(number), "--yes-i-really-mean-it"])
        try:
            self._run("ceph", ["auth", "rm", f"osd.{number}"])
        except NotFound:
            pass  # purge already removed it
        if any(osd.id == number for osd in self.osd_list()):
            raise BackendError(f"osd.{number} is still in the OSD map after `ceph osd purge`")
        total = self._clock() - started
        say(f"purged; removal took {total:.1f} s")
        return OsdRemoval(number, pgs_moved, drain_seconds, total)

    def _wait_drained(self, osd_id: int, progress_timeout: float, poll_interval: float,
                      say: ProgressCallback) -> None:
        best: int | None = None
        last_progress = self._clock()
        last_said = ""
        while True:
            mapped, reported = self.pg_map(), self.pg_stats()
            on_osd, lagging, unclean = drain_problems(osd_id, mapped, reported)
            moving = sum(pg.objects_to_move for pg in reported)
            if not (on_osd or lagging or unclean):
                verdict = self._json("ceph", ["osd", "safe-to-destroy", str(osd_id)],
                                     accept_codes=(0, errno.EBUSY, errno.EAGAIN))
                if osd_id in verdict.get("safe_to_destroy", []):
                    return
                lagging = [f"safe-to-destroy says not yet: {verdict}"]
            summary = (f"{len(on_osd)} PGs still on it, {len(unclean)} not active+clean, "
                       f"{len(lagging)} reports behind the map, {moving} objects to move")
            if summary != last_said:
                say(f"draining: {summary}")
                last_said = summary
            work = len(on_osd) + len(unclean) + len(lagging) + moving
            if best is None or work < best:
                best, last_progress = work, self._clock()
            elif self._clock() - last_progress > progress_timeout:
                states = _count_states(pg for pg in reported if pg.state != "active+clean")
                raise BackendError(
                    f"osd.{osd_id} drain made no progress for {progress_timeout:.0f} s: {summary}"
                    f" (PGs on it: {', '.join(on_osd[:10]) or 'none'}; states: {states or '-'}). "
                    f"osd.{osd_id} is out but was NOT removed; mark it in to undo"
                )
            self._sleep(poll_interval)

    def _wait_down(self, osd_id: int, timeout: float, poll_interval: float,
                   say: ProgressCallback) -> None:
        deadline = self._clock() + min(timeout, 30.0)
        while self._clock() < deadline:
            if not any(osd.id == osd_id and osd.up for osd in self.osd_list()):
                return
            self._sleep(poll_interval)
        say("daemon stopped but the map still has it up; marking it down")
        self._run("ceph", ["osd", "down", str(osd_id)])

    # -- running the tools ---------------------------------------------------------------------

    def _json(self, tool: str, args: Sequence[str], accept_codes: Sequence[int] = (0,)) -> Any:
        text = self._run(tool, [*args, "--format", "json"], accept_codes=accept_codes)
        try:
            return json.loads(text)
        except ValueError as exc:
            raise BackendError(f"`{tool} {' '.join(args)}` returned no valid JSON: "
                               f"{text[:200]!r}") from exc

    def _run(self, tool: str, args: Sequence[str], want_stderr: bool = False,
             accept_codes: Sequence[int] = (0,)) -> str:
        """Run `tool` as client.admin; stdout (plus stderr with `want_stderr`)."""
        if tool == "ceph" and not want_stderr:
            answer = self._fast_command(args)
            if answer is not None:
                return answer
        argv = [tool, "--conf", self.conf_path, "--keyring", self.keyring_path]
        if tool == "ceph":
            argv += ["--connect-timeout", str(max(1, int(self.timeout)))]
        return self._run_tool([*argv, *args], want_stderr, accept_codes, shown=[tool, *args])

    def _fast_command(self, args: Sequence[str]) -> str | None:
        """A read-only `ceph` command answered through the persistent librados connection, or
        None (then the CLI runs, and reports any error in Ceph's words)."""
        words = list(args)
        json_format = words[-2:] == ["--format", "json"]
        if json_format:
            words = words[:-2]
        known = _FAST_COMMANDS.get(tuple(words))
        if known is None:
            return None
        cluster = self._rados_cluster()
        if cluster is None:
            return None
        target, command = known
        command = {**command, **({"format": "json"} if json_format else {})}
        call = cluster.mon_command if target == "mon" else cluster.mgr_command
        try:
            code, out, _ = call(json.dumps(command), b"", timeout=int(self.timeout))
        except Exception as exc:  # librados' own errors: let the CLI try and report
            log.info("event=ceph-fast-command-failed command=%s error=%r", words, exc)
            return None
        return out.decode() if code == 0 else None

    def _mon_write(self, command: dict[str, Any]) -> str | None:
        """A state-changing mon command through librados (the JSON command the CLI would send,
        without starting a process): its status text, an error in Ceph's words, or None when
        librados is not available (the caller runs the CLI)."""
        cluster = self._rados_cluster()
        if cluster is None:
            return None
        code, out, status = cluster.mon_command(json.dumps(command), b"",
                                                timeout=int(self.timeout))
        if code != 0:
            name = errno.errorcode.get(-code, str(code))
            raise ceph_error(command["prefix"], -code, f"Error {name}: {status}")
        return str(status) + out.decode()

    def _rados_cluster(self) -> Any:
        with self._rados_lock:
            if self._rados is None and not self._rados_failed:
                try:
                    module = _load_rados()
                    cluster = module.Rados(conffile=self.conf_path,
                                           conf={"keyring": self.keyring_path})
                    cluster.connect(timeout=int(self.timeout))
                    self._rados = cluster
                except Exception as exc:  # no binding, or no cluster yet: the CLI path works
                    log.info("event=ceph-librados-unavailable error=%r", exc)
                    self._rados_failed = True
            return self._rados

    def close(self) -> None:
        with self._rados_lock:
            if self._rados is not None:
                self._rados.shutdown()
                self._rados = None

    def _run_tool(self, argv: list[str], want_stderr: bool = False,
                  accept_codes: Sequence[int] = (0,), shown: list[str] | None = None) -> str:
        command = " ".join(shown or argv)
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                                    check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"`{command}` timed out after {self.timeout:.0f} s "
                               "(is the Ceph cluster reachable, with a mgr?)") from exc
        except FileNotFoundError as exc:
            raise BackendError(f"{argv[0]} is not installed (package ceph-common)") from exc
        if result.returncode not in accept_codes:
            raise ceph_error(command, result.returncode, result.stderr or result.stdout)
        return result.stdout + (result.stderr if want_stderr else "")


# Read-only commands of the periodic sync answered in-process through librados (the `ceph` CLI
# is a Python program that costs ~0.3 s of CPU per run; a librados call costs ~1 ms): the CLI
# words -> (mon or mgr, the JSON command).
_FAST_COMMANDS: dict[tuple[str, ...], tuple[str, dict[str, Any]]] = {
    ("status",): ("mon", {"prefix": "status"}),
    ("health",): ("mon", {"prefix": "health"}),
    ("osd", "dump"): ("mon", {"prefix": "osd dump"}),
    ("osd", "tree"): ("mon", {"prefix": "osd tree"}),
    ("osd", "pool", "ls", "detail"): ("mon", {"prefix": "osd pool ls", "detail": "detail"}),
    ("osd", "df"): ("mgr", {"prefix": "osd df"}),
    ("osd", "status"): ("mgr", {"prefix": "osd status"}),
    ("pg", "dump", "pgs"): ("mgr", {"prefix": "pg dump", "dumpcontents": ["pgs"]}),
}
_RADOS_MODULE = "/usr/lib/python3/dist-packages/rados.cpython-311-x86_64-linux-gnu.so"


def _load_rados() -> Any:
    """Debian's python3-rados, loaded from its file (there is no PyPI package); importing the
    whole dist-packages folder into our environment would shadow our pinned packages."""
    if "rados" in sys.modules:
        return sys.modules["rados"]
    spec = importlib.util.spec_from_file_location("rados", _RADOS_MODULE)
    if spec is None or spec.loader is None:
        raise ImportError(f"no librados binding at {_RADOS_MODULE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["rados"] = module
    return module


def ceph_error(command: str, code: int, stderr: str) -> BackendError | NotFound | Conflict:
    """The domain error for a failed Ceph tool: its exit code is an errno (`Error ENOENT: ...`
    for `ceph`, `(2) No such file or directory` for `rbd`)."""
    message = f"`{command}` failed: {clean_stderr(stderr) or f'exit code {code}'}"
    if code == errno.ENOENT or "Error ENOENT" in stderr:
        return NotFound(message)
    if code in _CONFLICT_ERRNOS or re.search(r"Error (EEXIST|EBUSY|ENOTEMPTY)", stderr):
        return Conflict(message)
    return BackendError(message)


def clean_stderr(text: str) -> str:
    """Ceph's stderr without log prefixes and progress meters, one line."""
    lines = []
    for line in text.splitlines():
        line = _PROGRESS_RE.sub("", _LOG_PREFIX_RE.sub("", line)).strip()
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines)[-1000:]


def parse_pg_map(text: str) -> list[PgState]:
    """`osdmaptool --test-map-pgs-dump-all` output: one PgState per PG line."""
    result = []
    for line in text.splitlines():
        match = _MAP_LINE_RE.match(line.strip())
        if match:
            result.append(PgState(match["pgid"], _osd_tuple(match["up"]),
                                  _osd_tuple(match["acting"])))
    return result


def parse_osd_status(text: str) -> dict[int, dict[str, Any]]:
    """The mgr's `ceph osd status` table: host and I/O rates per OSD id."""
    rows: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) != 9 or not cells[0].isdigit():
            continue
        osd_id, host, _used, _avail, wr_ops, wr_data, rd_ops, rd_data, _state = cells
        rows[int(osd_id)] = {
            "node": host, "wr_ops": _human(wr_ops, 1000), "wr_data": _human(wr_data, 1024),
            "rd_ops": _human(rd_ops, 1000), "rd_data": _human(rd_data, 1024),
        }
    return rows


def _human(cell: str, factor: int) -> float | None:
    """'0', '12', '1.5k', '1023M' -> a number (the mgr's format_units, k/M/G/T/P)."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?)([kMGTP]?)", cell)
    if not match:
        return None
    power = " kMGTP".index(match[2]) if match[2] else 0
    return float(match[1]) * factor**power


def _osds_from_dump(dump: dict[str, Any]) -> list[Osd]:
    return [
        Osd(id=o["osd"], uuid=o.get("uuid", ""), up=bool(o["up"]), in_=bool(o["in"]),
            reweight=float(o.get("weight", 0)),
            primary_affinity=float(o.get("primary_affinity", 1)),
            state=list(o.get("state", [])))
        for o in dump.get("osds", [])
    ]


def _osd_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _kib(value: Any) -> int | None:
    return None if value is None else int(value) * 1024
