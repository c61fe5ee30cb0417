"""`CephDriver`: the Ceph operations pvcd carries out, one method per operation.

Cluster flags and status texts, OSDs (in/out, their CRUSH place and options), pools, RBD
volumes and snapshots, and the PG views the safe OSD removal judges by. Every operator-given
value is checked (`values`) before any command runs; Ceph's failures come back as `NotFound`,
`Conflict` or `BackendError` (`parsers.ceph_error`). Some Ceph commands succeed on a missing
object (`ceph osd out 99`, `ceph osd pool delete nope`) or an existing one (`ceph osd pool
create p` twice): those are checked first.

OSD ownership: an OSD belongs to the pvcd node whose name is its CRUSH host bucket. An OSD added
through pvcd is placed under `host=<node>` by that node (`osd_place`); `osd_hosts` reads every
OSD's host back for the mirror.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound
from pvcd.domain.pool_space import PoolSpace
from pvcd.drivers.ceph.client import CephClient
from pvcd.drivers.ceph.parsers import kib, osds_from_dump, parse_osd_status, parse_pg_map
from pvcd.drivers.ceph.rbd_files import import_argv
from pvcd.drivers.ceph.records import (
    CephHealth,
    CephHealthCheck,
    Osd,
    OsdRemoval,
    OsdStats,
    PgState,
    Pool,
    PoolListing,
    PoolStats,
    ProgressCallback,
    Snapshot,
    Volume,
)
from pvcd.drivers.ceph.removal import remove_osd_safely
from pvcd.drivers.ceph.values import (
    check_osd_flag,
    check_osd_id,
    check_pgs,
    check_pool_name,
    check_replicas,
    check_snapshot_name,
    check_volume_name,
    check_weight,
    parse_size,
)

log = logging.getLogger(__name__)

# a copy or a rollback moves the volume's data: its time limit grows with the size, allowing
# at least this rate (bytes/s) on top of the usual command timeout
MIN_DATA_RATE = 10 << 20


class CephDriver(CephClient):
    """The Ceph operations, as client.admin of the cluster described by `conf_path`."""

    # -- cluster -------------------------------------------------------------------------------

    def status_text(self) -> str:
        """The raw text of `ceph status` (the API's `ceph_data`)."""
        return self.run("ceph", ["status"])

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.run_json("ceph", ["status"])
        return doc

    def df_text(self) -> str:
        """The raw text of `rados df`."""
        return self.run("rados", ["df"])

    def df(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.run_json("rados", ["df"])
        return doc

    def health(self) -> CephHealth:
        """Ceph's health and its checks (muted ones left out: the operator silenced them)."""
        doc = self.run_json("ceph", ["health"])
        checks = doc.get("checks") if isinstance(doc, dict) else None
        found = []
        for name, check in sorted((checks or {}).items()):
            if not isinstance(check, dict) or check.get("muted"):
                continue
            summary = check.get("summary")
            message = summary.get("message", "") if isinstance(summary, dict) else ""
            found.append(CephHealthCheck(str(name), str(check.get("severity", "HEALTH_WARN")),
                                         str(message)))
        status = doc.get("status", "HEALTH_ERR") if isinstance(doc, dict) else "HEALTH_ERR"
        return CephHealth(str(status), tuple(found))

    def osd_set(self, flag: str) -> None:
        self.run("ceph", ["osd", "set", check_osd_flag(flag)])
        log.info("ceph osd flag set flag=%s", flag)

    def osd_unset(self, flag: str) -> None:
        self.run("ceph", ["osd", "unset", check_osd_flag(flag)])
        log.info("ceph osd flag unset flag=%s", flag)

    def osd_flags(self) -> list[str]:
        """Every flag set in the OSD map (including Ceph's internal ones like sortbitwise)."""
        return list(self.run_json("ceph", ["osd", "dump"]).get("flags_set", []))

    # -- OSDs ----------------------------------------------------------------------------------

    def osd_list(self) -> list[Osd]:
        return osds_from_dump(self.run_json("ceph", ["osd", "dump"]))

    def osd_stats(self) -> list[OsdStats]:
        """Every OSD with the API's statistics (see `OsdStats` for where each comes from)."""
        osds = self.osd_list()
        df = {node["id"]: node for node in self.run_json("ceph", ["osd", "df"]).get("nodes", [])}
        table = parse_osd_status(self.run("ceph", ["osd", "status"]))
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
                used=kib(usage.get("kb_used")), avail=kib(usage.get("kb_avail")),
                wr_ops=rates.get("wr_ops"), wr_data=rates.get("wr_data"),
                rd_ops=rates.get("rd_ops"), rd_data=rates.get("rd_data"),
                state=",".join(osd.state),
            ))
        return result

    def osd_in(self, osd_id: int | str) -> None:
        number = self._existing_osd(osd_id)
        self.run("ceph", ["osd", "in", str(number)])
        log.info("ceph osd in osd=%d", number)

    def osd_out(self, osd_id: int | str) -> None:
        number = self._existing_osd(osd_id)
        self.run("ceph", ["osd", "out", str(number)])
        log.info("ceph osd out osd=%d", number)

    def _existing_osd(self, osd_id: int | str) -> int:
        number = check_osd_id(osd_id)
        if all(osd.id != number for osd in self.osd_list()):
            raise NotFound(f"osd.{number} does not exist")
        return number

    def osd_hosts(self) -> dict[int, str]:
        """The CRUSH host bucket of every OSD placed under one."""
        tree = self.run_json("ceph", ["osd", "tree"])
        hosts: dict[int, str] = {}
        for node in tree.get("nodes", []):
            if node.get("type") == "host":
                for child in node.get("children", []):
                    if child >= 0:
                        hosts[int(child)] = str(node["name"])
        return hosts

    def osd_place(self, osd_id: int, weight: float, host: str) -> None:
        """Put `osd.<id>` under `host=<host>` (created if missing) with CRUSH weight `weight`."""
        number = check_osd_id(osd_id)
        placement = [f"osd.{number}", f"{check_weight(weight):g}", "root=default", f"host={host}"]
        try:
            self.run("ceph", ["osd", "crush", "set", *placement])
        except NotFound:  # not in the CRUSH map yet (it has not booted, or does not add itself)
            self.run("ceph", ["osd", "crush", "add", *placement])
        log.info("ceph osd placed osd=%d host=%s weight=%g", number, host, weight)

    def osd_configure(self, osd_id: int, options: dict[str, str]) -> None:
        """Set options of `osd.<id>` in the cluster's configuration database (before it
        starts: its CRUSH location and initial weight)."""
        number = check_osd_id(osd_id)
        for option, value in options.items():
            self.run("ceph", ["config", "set", f"osd.{number}", option, value])

    def osd_unconfigure(self, osd_id: int) -> None:
        """Forget every option set for `osd.<id>` (its id is reused by the next OSD)."""
        number = check_osd_id(osd_id)
        dump = self.run_json("ceph", ["config", "dump"])
        for entry in dump:
            if entry.get("section") == f"osd.{number}":
                self.run("ceph", ["config", "rm", f"osd.{number}", str(entry["name"])])

    def osd_purge(self, osd_id: int) -> None:
        """Remove an OSD that never held data from the map, its key and CRUSH entry."""
        number = check_osd_id(osd_id)
        self.run("ceph", ["osd", "purge", str(number), "--yes-i-really-mean-it"])

    def remove_osd_safely(self, osd_id: int | str, stop_daemon: Callable[[int], None],
                          progress_timeout: float = 120.0, poll_interval: float = 0.5,
                          on_progress: ProgressCallback | None = None) -> OsdRemoval:
        """Drain `osd_id`, stop it and purge it without leaving data without a copy
        (`pvcd.drivers.ceph.removal`: the rules and the procedure)."""
        return remove_osd_safely(self, osd_id, stop_daemon, progress_timeout, poll_interval,
                                 on_progress)

    # -- pools ---------------------------------------------------------------------------------

    def pool_list(self) -> list[Pool]:
        """Every pool; `Pool.is_rbd` tells RBD pools from Ceph's own (device_health_metrics)."""
        return [
            Pool(name=p["pool_name"], id=p["pool_id"], size=p["size"], min_size=p["min_size"],
                 pg_num=p["pg_num"], applications=sorted(p.get("application_metadata", {})))
            for p in self.run_json("ceph", ["osd", "pool", "ls", "detail"])
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
            out = self.mon_write(command)
            if out is None:  # no librados here: the CLI
                out = self.run("ceph", args, want_stderr=True)
        except BackendError as exc:
            if "ERANGE" in str(exc):  # too many PGs for this cluster's OSDs
                raise InvalidValue(f"pgs {count} is too many for this cluster: {exc}") from exc
            raise
        if "already exists" in out:  # Ceph answers 0 to a duplicate create
            raise Conflict(f"pool {name} already exists")
        try:
            self.run("rbd", ["pool", "init", "--pool", name])
        except BackendError:
            self.run("ceph", ["osd", "pool", "delete", name, name,
                               "--yes-i-really-really-mean-it"])
            raise
        log.info("ceph pool created pool=%s pgs=%d size=%s", name, count, size or "default")

    def pool_delete(self, name: str) -> None:
        """Delete a pool and everything in it (the API asks for yes_i_really_mean_it first)."""
        check_pool_name(name)
        if all(pool.name != name for pool in self.pool_list()):
            raise NotFound(f"pool {name} does not exist")
        self.run("ceph", ["osd", "pool", "delete", name, name, "--yes-i-really-really-mean-it"])
        log.info("ceph pool deleted pool=%s", name)

    # -- volumes -------------------------------------------------------------------------------

    def volume_list(self, pool: str) -> list[str]:
        check_pool_name(pool)
        return list(self.run_json("rbd", ["ls", "--pool", pool]))

    def pool_listing(self, pool: str) -> PoolListing:
        """Every volume and snapshot of `pool` in one `rbd ls -l` (a name Ceph gave us: not
        checked against our naming rules, so pools made outside pvcd are listed too)."""
        volumes: list[str] = []
        snapshots: dict[str, list[dict[str, Any]]] = {}
        sizes: dict[str, int] = {}
        for entry in self.run_json("rbd", ["ls", "-l", "--pool", pool]):
            image = str(entry.get("image", ""))
            if "snapshot" in entry:
                snapshots.setdefault(image, []).append({
                    "name": entry["snapshot"], "id": entry.get("snapshot_id"),
                    "size": entry.get("size")})
            elif image not in volumes:
                volumes.append(image)
                if isinstance(entry.get("size"), int):
                    sizes[image] = entry["size"]
        return PoolListing(volumes, snapshots, sizes)

    def volume_info(self, pool: str, name: str) -> Volume:
        check_pool_name(pool)
        check_volume_name(name)
        doc = self.run_json("rbd", ["info", "--pool", pool, "--image", name])
        return Volume(pool, name, doc)

    def volume_create(self, pool: str, name: str, size_bytes: int | str) -> None:
        check_pool_name(pool)
        check_volume_name(name)
        size = parse_size(size_bytes)
        self.run("rbd", ["create", "--pool", pool, "--image", name, "--size", f"{size}B"])
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
        self.run("rbd", args)
        log.info("ceph volume resized pool=%s volume=%s bytes=%d", pool, name, size)

    def volume_rename(self, pool: str, name: str, new_name: str) -> None:
        check_pool_name(pool)
        check_volume_name(name)
        check_volume_name(new_name)
        self.run("rbd", ["rename", "--pool", pool, "--image", name,
                          "--dest-pool", pool, "--dest", new_name])
        log.info("ceph volume renamed pool=%s volume=%s new=%s", pool, name, new_name)

    def volume_delete(self, pool: str, name: str, with_snapshots: bool = False) -> None:
        """Delete a volume; one with snapshots is a Conflict unless `with_snapshots`."""
        check_pool_name(pool)
        check_volume_name(name)
        if with_snapshots:
            self.run("rbd", ["snap", "purge", "--pool", pool, "--image", name, "--no-progress"])
        self.run("rbd", ["rm", "--pool", pool, "--image", name, "--no-progress"])
        log.info("ceph volume deleted pool=%s volume=%s", pool, name)

    def volume_copy(self, pool: str, name: str, new_name: str, snapshot: str | None = None,
                    size_bytes: int = 0) -> None:
        """A full, independent copy of `pool/name` (as it was at `snapshot`, if given) into the
        new volume `pool/new_name` (`rbd copy`, not a copy-on-write clone). `size_bytes` (the
        source's size) stretches the time limit."""
        check_pool_name(pool)
        check_volume_name(name)
        check_volume_name(new_name)
        source = ["--pool", pool, "--image", name]
        if snapshot is not None:
            source += ["--snap", check_snapshot_name(snapshot)]
        self.run("rbd", ["copy", *source, "--dest-pool", pool, "--dest", new_name,
                         "--no-progress"], timeout=self._data_timeout(size_bytes))
        log.info("ceph volume copied pool=%s volume=%s snapshot=%s new=%s", pool, name,
                 snapshot or "-", new_name)

    def volume_import(self, pool: str, name: str, path: str, diff: bool,
                      size_bytes: int = 0) -> None:
        """Import an export file (`rbd_files.import_argv`): a new volume with the snapshots of
        a format-2 export, or a diff onto the existing volume (it needs the diff's starting
        snapshot and adds its end snapshot). `size_bytes` (the file's) stretches the limit."""
        self.run("rbd", import_argv(pool, name, path, diff),
                 timeout=self._data_timeout(size_bytes))
        log.info("ceph volume imported pool=%s volume=%s diff=%s", pool, name, diff)

    def volume_watchers(self, pool: str, name: str) -> list[str]:
        """Who has the volume open (`rbd status`): one `client.<id> at <address>` each."""
        check_pool_name(pool)
        check_volume_name(name)
        doc = self.run_json("rbd", ["status", "--pool", pool, "--image", name])
        watchers = doc.get("watchers") if isinstance(doc, dict) else None
        return [f"client.{w.get('client')} at {w.get('address')}" for w in watchers or []]

    def pool_space(self, pool: str, wait: float = 10.0) -> PoolSpace:
        """What `pool` stores and can still take, after replication (`ceph df`). A pool made
        moments ago shows there only once the mgr has reported it: waited for up to `wait` s."""
        check_pool_name(pool)
        deadline = self.clock() + wait
        while True:
            for entry in self.run_json("ceph", ["df"]).get("pools", []):
                if entry.get("name") == pool:
                    stats = entry.get("stats") or {}
                    return PoolSpace(pool, int(stats.get("stored") or 0),
                                     int(stats.get("max_avail") or 0))
            if all(known.name != pool for known in self.pool_list()):
                raise NotFound(f"pool {pool} does not exist")
            if self.clock() >= deadline:
                raise BackendError(f"`ceph df` has no usage for pool {pool} yet (the mgr "
                                   "reports a new pool within seconds); try again")
            self.sleep(0.2)

    def _data_timeout(self, size_bytes: int) -> float:
        return self.timeout + max(0, size_bytes) / MIN_DATA_RATE

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot_list(self, pool: str, volume: str) -> list[Snapshot]:
        check_pool_name(pool)
        check_volume_name(volume)
        return [
            Snapshot(pool, volume, s["name"], int(s["id"]), int(s["size"]),
                     str(s.get("protected", "false")) == "true", str(s.get("timestamp", "")))
            for s in self.run_json("rbd", ["snap", "ls", "--pool", pool, "--image", volume])
        ]

    def snapshot_create(self, pool: str, volume: str, snapshot: str) -> None:
        self._snapshot_command("create", pool, volume, snapshot)
        log.info("ceph snapshot created pool=%s volume=%s snapshot=%s", pool, volume, snapshot)

    def snapshot_delete(self, pool: str, volume: str, snapshot: str) -> None:
        self._snapshot_command("rm", pool, volume, snapshot)
        log.info("ceph snapshot deleted pool=%s volume=%s snapshot=%s", pool, volume, snapshot)

    def snapshot_rename(self, pool: str, volume: str, snapshot: str, new_name: str) -> None:
        check_pool_name(pool)
        check_volume_name(volume)
        check_snapshot_name(snapshot)
        check_snapshot_name(new_name)
        self.run("rbd", ["snap", "rename", f"{pool}/{volume}@{snapshot}",
                         f"{pool}/{volume}@{new_name}"])
        log.info("ceph snapshot renamed pool=%s volume=%s snapshot=%s new=%s", pool, volume,
                 snapshot, new_name)

    def snapshot_rollback(self, pool: str, volume: str, snapshot: str,
                          size_bytes: int = 0) -> None:
        """Write the snapshot's contents back into the volume (`rbd snap rollback`: time
        proportional to the volume's size, which stretches the time limit)."""
        check_pool_name(pool)
        check_volume_name(volume)
        check_snapshot_name(snapshot)
        self.run("rbd", ["snap", "rollback", "--pool", pool, "--image", volume,
                         "--snap", snapshot, "--no-progress"],
                 timeout=self._data_timeout(size_bytes))
        log.info("ceph snapshot rolled back pool=%s volume=%s snapshot=%s", pool, volume,
                 snapshot)

    def _snapshot_command(self, action: str, pool: str, volume: str, snapshot: str) -> None:
        check_pool_name(pool)
        check_volume_name(volume)
        check_snapshot_name(snapshot)
        self.run("rbd", ["snap", action, "--pool", pool, "--image", volume,
                          "--snap", snapshot, "--no-progress"])

    # -- placement groups ----------------------------------------------------------------------

    def pg_map(self) -> list[PgState]:
        """Every PG's up and acting set under the current OSD map (pg_temp included)."""
        with tempfile.TemporaryDirectory(prefix="pvcd-osdmap-") as folder:
            path = str(Path(folder) / "osdmap")
            self.run("ceph", ["osd", "getmap", "-o", path])
            text = self.run_tool(["osdmaptool", path, "--test-map-pgs-dump-all"])
        return parse_pg_map(text)

    def pg_stats(self) -> list[PgState]:
        """Every PG as the OSDs last reported it (through the mgr; lags the map)."""
        doc = self.run_json("ceph", ["pg", "dump", "pgs"])
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
