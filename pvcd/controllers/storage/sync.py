"""The mirror's sync: the primary re-reads Ceph and makes ZooKeeper's mirror match it.

Every `stats_interval`, and soon after a request that changes what `ceph status` / `rados df`
show, the primary reads Ceph (status and df texts, OSDs with their stats and CRUSH hosts, RBD
pools, one `rbd ls -l` per pool, `rbd info` for the volumes that need it), refreshes the stats
in the mirror, adopts objects made outside pvcd and drops objects deleted outside pvcd. It also
expires finished requests and fails node requests that can never run. An `rbd info` per volume
and sync would cost a process per volume every few seconds, so only new and resized volumes
and the `VOLUME_INFOS_PER_SYNC` read longest ago are read each round; a volume changed through
pvcd is refreshed on its own right after its request (`refresh_volume`).

Races named. A sync reads Ceph while a request changes it: every stats write is a
compare-and-set against the version cached *before* Ceph was read, so a sync never overwrites a
request's newer write; and membership changes (adopt/drop) of a category (OSDs, or
pools/volumes/snapshots) are skipped in a round during which a request of that category was in
flight or finished. An OSD adopted before the node named by its CRUSH host registered gets that
node on a later sync. A request for a node that is not running stays pending; the API refuses
to submit one, and the sync fails it after `request_timeout`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pvcd.config import CephDriverSection
from pvcd.controllers.storage.mirror import Mirror
from pvcd.controllers.storage.requests import OSD_OPS
from pvcd.domain.errors import Conflict, NotFound
from pvcd.domain.records import (
    OsdRecord,
    PoolRecord,
    SnapshotRecord,
    StorageRequest,
    VolumeRecord,
    from_dict,
)
from pvcd.domain.states import PRIMARY_TARGET
from pvcd.drivers.ceph.driver import CephDriver
from pvcd.drivers.ceph.records import CephHealth, OsdStats, PoolListing
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

CLOCK_MARGIN = 2.0  # seconds: request timestamps come from other nodes' clocks
VOLUME_INFOS_PER_SYNC = 4  # unchanged volumes whose full `rbd info` a sync refreshes, in turn


def category(op: str) -> str:
    """Which part of the mirror a request changes: `osd` or `rbd` (pools, volumes, snapshots)."""
    return "osd" if op in OSD_OPS or op == "osd-state" else "rbd"


@dataclass
class CephState:
    """What one sync read from Ceph."""

    status_text: str
    df_text: str
    health: CephHealth
    osds: list[OsdStats]
    osd_hosts: dict[int, str]
    pools: dict[str, PoolRecord]
    volumes: dict[tuple[str, str], VolumeRecord]
    snapshots: dict[tuple[str, str, str], SnapshotRecord]


class MirrorSync:
    """Re-reads Ceph and brings the mirror up to date (run by the primary's sync controller)."""

    def __init__(self, name: str, view: ClusterView, store: Store, ceph: CephDriver,
                 config: CephDriverSection, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.view = view
        self.store = store
        self.ceph = ceph
        self.config = config
        self.clock = clock
        self.mirror = Mirror(view)
        self.volume_read_at: dict[tuple[str, str], float] = {}  # last `rbd info`, monotonic
        self._lock = threading.Lock()  # one round at a time

    def run(self) -> None:
        """Re-read Ceph and make the mirror match it (module docstring: races)."""
        with self._lock:
            started = self.clock()
            before = self._mirror_versions()
            state = self._read_ceph()
            ops = [*self._status_ops(state)]
            busy = self._busy_categories(started)
            ops += self._osd_ops(state, before, adopt_and_drop="osd" not in busy)
            ops += self._rbd_ops(state, before, adopt_and_drop="rbd" not in busy)
            ops += self._expired_request_ops()
            self._commit_each(ops)

    def _mirror_versions(self) -> dict[str, int]:
        """Version of every mirrored object now, before Ceph is read (the CAS base)."""
        cache, paths = self.view.cache, self.view.paths
        versions: dict[str, int] = {}

        def walk(path: str, depth: int) -> None:
            for child in cache.children(path):
                sub = f"{path}/{child}"
                entry = cache.entry(sub)
                if entry is None:
                    continue
                if depth == 0:
                    versions[sub] = entry.version
                else:
                    walk(sub, depth - 1)

        walk(paths.storage_osds, 0)
        walk(paths.storage_pools, 0)
        walk(paths.storage_volumes, 1)
        walk(paths.storage_snapshots, 2)
        return versions

    def _read_ceph(self) -> CephState:
        ceph = self.ceph
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="storage-sync") as pool:
            status = pool.submit(ceph.status_text)
            health = pool.submit(ceph.health)
            df_text = pool.submit(ceph.df_text)
            osds = pool.submit(ceph.osd_stats)
            hosts = pool.submit(ceph.osd_hosts)
            pool_stats = pool.submit(ceph.pool_stats)
            pools = [p for p in ceph.pool_list() if p.is_rbd]
            listings = {p.name: pool.submit(ceph.pool_listing, p.name) for p in pools}
            infos = {}
            kept: dict[tuple[str, str], VolumeRecord] = {}
            for name, listing in listings.items():
                for volume, record in self._volumes_to_read(name, listing.result()).items():
                    if record is None:
                        infos[(name, volume)] = pool.submit(ceph.volume_info, name, volume)
                    else:
                        kept[(name, volume)] = record
            stats_by_name = {s.name: s.stats() for s in pool_stats.result()}
            state = CephState(status.result(), df_text.result(), health.result(), osds.result(),
                              hosts.result(), {}, {}, {})
            for p in pools:
                state.pools[p.name] = PoolRecord(p.name, p.pg_num, stats_by_name.get(p.name, {}))
            state.volumes.update(kept)
            for (pool_name, volume), future in infos.items():
                try:
                    stats = future.result().stats
                except NotFound:
                    continue  # deleted between the listing and the info
                state.volumes[(pool_name, volume)] = VolumeRecord(volume, pool_name, stats)
                self.volume_read_at[(pool_name, volume)] = time.monotonic()
            for name, listing in listings.items():
                for volume, snaps in listing.result().snapshots.items():
                    for snap in snaps:
                        state.snapshots[(name, volume, snap["name"])] = SnapshotRecord(
                            name, volume, snap["name"], snap.get("id"), snap.get("size"))
        return state

    def _volumes_to_read(self, pool: str, listing: PoolListing
                         ) -> dict[str, VolumeRecord | None]:
        """Which volumes of `pool` need an `rbd info` in this sync (None) and which keep their
        mirrored record: one `rbd info` per volume and sync would cost a process per volume
        every few seconds. Read: volumes not mirrored yet, volumes whose size in the listing
        differs from the mirror (resized behind our back), and the VOLUME_INFOS_PER_SYNC read
        longest ago (so object counts and timestamps are refreshed in turn)."""
        chosen: dict[str, VolumeRecord | None] = {}
        stale: list[tuple[float, str]] = []
        for volume in listing.volumes:
            doc = self.view.cache.get(self.view.paths.storage_volume(pool, volume))
            record = from_dict(VolumeRecord, doc) if isinstance(doc, dict) else None
            size = listing.sizes.get(volume)
            if record is None or (size is not None and record.stats.get("size") != size):
                chosen[volume] = None
            else:
                chosen[volume] = record
                stale.append((self.volume_read_at.get((pool, volume), 0.0), volume))
        for _, volume in sorted(stale)[:VOLUME_INFOS_PER_SYNC]:
            chosen[volume] = None
        return chosen

    def _status_ops(self, state: CephState) -> list[Op]:
        health = next((line.split(":", 1)[1].strip() for line in state.status_text.splitlines()
                       if line.strip().startswith("health:")), None)
        now = self.clock()
        # `checks`: Ceph's health checks, which the primary's fault monitor raises as faults
        status = {"type": "status", "primary_node": self.name, "ceph_data": state.status_text,
                  "health": health, "checks": [c.to_doc() for c in state.health.checks],
                  "updated": now}
        df = {"type": "utilization", "primary_node": self.name, "ceph_data": state.df_text,
              "updated": now}
        paths = self.view.paths
        return self.mirror.upsert(paths.storage_status, status) + \
            self.mirror.upsert(paths.storage_df, df)

    def _busy_categories(self, since: float) -> set[str]:
        """Categories with a request in flight, or finished since `since` (minus a margin)."""
        paths, cache = self.view.paths, self.view.cache
        busy = set()
        for request_id in cache.children(paths.storage_requests):
            doc = cache.get(paths.storage_request(request_id))
            if not isinstance(doc, dict):
                continue
            finished = doc.get("finished")
            if doc.get("state") in ("pending", "running") or \
                    (finished is not None and finished >= since - CLOCK_MARGIN):
                busy.add(category(str(doc.get("op"))))
        return busy

    def _osd_ops(self, state: CephState, before: dict[str, int], adopt_and_drop: bool
                 ) -> list[Op]:
        paths, cache = self.view.paths, self.view.cache
        nodes = set(self.view.node_names())
        ops: list[Op] = []
        seen = set()
        for osd in state.osds:
            path = paths.storage_osd(osd.id)
            seen.add(path)
            doc = cache.get(path)
            host = state.osd_hosts.get(osd.id)
            owner = host if host in nodes else None  # its CRUSH host, when that is a node of ours
            if path in before and isinstance(doc, dict):
                record = from_dict(OsdRecord, doc)
                record.stats = osd.stats()
                if record.node is None:  # adopted before its node registered: owned now
                    record.node = owner
                if record.to_doc() != doc:
                    ops.append(Op.set(path, record.to_doc(), before[path]))
            elif adopt_and_drop and doc is None:
                ops.append(Op.create(path, OsdRecord(osd.id, owner, None, osd.stats()).to_doc()))
        if adopt_and_drop:
            ops += [Op.delete(path, version) for path, version in before.items()
                    if path.startswith(paths.storage_osds + "/") and path not in seen]
        return ops

    def _rbd_ops(self, state: CephState, before: dict[str, int], adopt_and_drop: bool
                 ) -> list[Op]:
        paths, cache = self.view.paths, self.view.cache
        creates: list[Op] = []
        sets: list[Op] = []
        wanted: set[str] = set()

        def place(path: str, doc: dict[str, Any], containers: Sequence[str] = ()) -> None:
            wanted.add(path)
            wanted.update(containers)
            current = cache.get(path)
            if path in before and isinstance(current, dict):
                if current != doc:
                    sets.append(Op.set(path, doc, before[path]))
            elif adopt_and_drop and current is None:
                creates.append(Op.create(path, doc))
                creates.extend(Op.create(c, {}) for c in containers if not cache.exists(c))

        for pool in state.pools.values():
            place(paths.storage_pool(pool.name), pool.to_doc(),
                  [paths.storage_pool_volumes(pool.name), paths.storage_pool_snapshots(pool.name)])
        for (pool_name, name), volume in state.volumes.items():
            if pool_name in state.pools:
                place(paths.storage_volume(pool_name, name), volume.to_doc(),
                      [paths.storage_volume_snapshots(pool_name, name)])
        for (pool_name, volume_name, snap_name), snap in state.snapshots.items():
            if (pool_name, volume_name) in state.volumes:
                place(paths.storage_snapshot(pool_name, volume_name, snap_name), snap.to_doc())
        ops = creates + sets
        if adopt_and_drop:
            gone = [path for path in before if path not in wanted and not
                    path.startswith(paths.storage_osds + "/")]
            # deepest first, with the container znodes of what goes
            for path in sorted(gone, key=lambda p: -p.count("/")):
                ops += [op for op in self._drop_object(path) if op.path not in
                        {o.path for o in ops}]
        return ops

    def _drop_object(self, path: str) -> list[Op]:
        paths = self.view.paths
        if path.startswith(paths.storage_pools + "/"):
            return self.mirror.pool_gone(path.rsplit("/", 1)[1])
        if path.startswith(paths.storage_volumes + "/"):
            pool, volume = path[len(paths.storage_volumes) + 1:].split("/", 1)
            return self.mirror.volume_gone(pool, volume)
        return self.mirror.delete_tree(path)

    def _expired_request_ops(self) -> list[Op]:
        """Delete requests finished longer than `request_retention` ago; fail node requests
        pending longer than `request_timeout` for a node that is not running."""
        paths, cache = self.view.paths, self.view.cache
        now = self.clock()
        ops: list[Op] = []
        for request_id in cache.children(paths.storage_requests):
            entry = cache.entry(paths.storage_request(request_id))
            if entry is None or not isinstance(entry.doc, dict):
                continue
            request = from_dict(StorageRequest, entry.doc)
            path = paths.storage_request(request_id)
            if request.finished_state and (request.finished or 0) < \
                    now - self.config.request_retention:
                ops.append(Op.delete(path, entry.version))
            elif request.state == "pending" and request.target != PRIMARY_TARGET and \
                    request.created < now - self.config.request_timeout and \
                    not self.view.node_alive(request.target):
                request.state, request.error, request.finished = "failed", "Conflict", now
                request.message = f"node {request.target} is not running; nothing was done"
                ops.append(Op.set(path, request.to_doc(), entry.version))
        return ops

    def _commit_each(self, ops: list[Op]) -> None:
        """One transaction when nothing raced; else object by object, skipping lost races (the
        next sync retries them)."""
        # in order: containers before their children, leaves before parents
        for op, exc in self.store.commit_each(ops):
            log.info("event=storage-sync-skipped path=%s reason=%s", op.path, exc)

    def refresh_volume(self, pool: str, volume: str) -> None:
        """One volume's `rbd info` into its mirror record (after a request changed it)."""
        path = self.view.paths.storage_volume(pool, volume)
        entry = self.view.cache.entry(path)
        if entry is None:
            return
        try:
            info = self.ceph.volume_info(pool, volume)
        except NotFound:
            return
        self.volume_read_at[(pool, volume)] = time.monotonic()
        record = from_dict(VolumeRecord, entry.doc)
        record.stats = info.stats
        if record.to_doc() != entry.doc:
            try:
                self.store.commit([Op.set(path, record.to_doc(), entry.version)])
            except Conflict:
                pass  # changed meanwhile: the next sync brings the stats


