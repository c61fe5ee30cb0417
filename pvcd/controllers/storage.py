"""Ceph storage: storage requests carried out on the right node, and ZooKeeper's mirror of Ceph.

Requests. The API writes `storage/requests/<id>` (`StorageRequest`: op, args, target) and waits for
its result; there is no shared command slot, so any number of requests can be in flight. The
target is `primary` for pools, volumes, snapshots, cluster flags and OSD in/out (cluster-map
changes, done by whichever node is primary), or a node's name for OSD add and removal (the node
that owns the device: `storage_backend`). The executor claims a pending request with a
compare-and-set (`running`, `executor`), runs Ceph's tools, and then writes the result *and* the
ZooKeeper objects Ceph confirmed in one transaction, so an object never appears before Ceph has
it and a `done` request always has its objects. Requests on the same object are serialised
(`KeyedLocks`); requests on different objects run in parallel (`REQUEST_WORKERS`).

Mirror. `storage/osds/<id>`, `storage/pools/<pool>`, `storage/volumes/<pool>/<volume>` and
`storage/snapshots/<pool>/<volume>/<snapshot>` mirror what Ceph has; reads (the API) come from
the cache of them. The primary's `sync` (every `stats_interval`, and right after each request)
re-reads Ceph: it refreshes the stats and the `ceph status` / `rados df` texts, adopts objects
made outside pvcd and drops objects deleted outside pvcd.

Races named. (1) A sync reads Ceph while a request changes it: every stats write is a
compare-and-set against the version cached *before* Ceph was read, so a sync never overwrites a
request's newer write; and membership changes (adopt/drop) of a category (OSDs, or
pools/volumes/snapshots) are skipped in a round during which a request of that category was in
flight or finished. (2) The primary changes while a request runs: the old primary's `stop()`
waits for its running requests; a request left `running` by a process that is gone (crash) is
marked `failed` ("interrupted") by the next executor, and the sync re-reads Ceph, so the mirror
shows what really happened. (3) A request for a node that is not running stays pending; the API
refuses to submit one, and the primary fails it after `request_timeout`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pvcd.config import CephDriverSection
from pvcd.controllers.base import DONE, Controller, Result, TemporaryError
from pvcd.controllers.storage_backend import (
    NodeOsdProvisioner,
    OsdProvisioner,
    PoolListing,
    StorageCeph,
)
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound, PvcError
from pvcd.domain.records import (
    OsdRecord,
    PoolRecord,
    SnapshotRecord,
    StorageRequest,
    VolumeRecord,
    from_dict,
)
from pvcd.domain.states import PRIMARY_TARGET
from pvcd.drivers.ceph import OsdStats, parse_size
from pvcd.drivers.ceph_volume import DeviceOsdProvisioner, make_launcher
from pvcd.state.schema import Paths
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

if TYPE_CHECKING:
    from pvcd.daemon import NodeDaemon

log = logging.getLogger(__name__)

REQUEST_WORKERS = 4
SYNC_KEY = "sync"
OSD_OPS = ("osd-add", "osd-remove")  # carried out by the node that owns the OSD
PRIMARY_OPS = ("cluster-option", "osd-state", "pool-add", "pool-remove", "volume-add",
               "volume-modify", "volume-remove", "snapshot-add", "snapshot-remove")
CLOCK_MARGIN = 2.0  # seconds: request timestamps come from other nodes' clocks
COMMIT_TRIES = 5
AFTER_REQUEST_SYNC_DELAY = 0.5  # seconds
SYNC_AFTER_OPS = ("cluster-option", "osd-state", "pool-add", "pool-remove")
VOLUME_INFOS_PER_SYNC = 4  # unchanged volumes whose full `rbd info` a sync refreshes, in turn


def request_key(request_id: str) -> str:
    return f"req/{request_id}"


def category(op: str) -> str:
    return "osd" if op in OSD_OPS or op == "osd-state" else "rbd"


@dataclass
class Outcome:
    """What an executed request reports, and the mirror changes Ceph confirmed (built from the
    cache at commit time, so a retry after a lost race builds them afresh)."""

    message: str
    result: dict[str, Any] = field(default_factory=dict)
    ops: Callable[[], list[Op]] = lambda: []


class KeyedLocks:
    """One lock per object name; `hold(names)` takes several in a fixed order (no deadlock)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, names: Iterable[str]) -> Iterator[None]:
        ordered = sorted(set(names))
        taken: list[str] = []
        try:
            for name in ordered:
                with self._guard:
                    lock, users = self._locks.get(name, (threading.Lock(), 0))
                    self._locks[name] = (lock, users + 1)
                taken.append(name)
                lock.acquire()
            yield
        finally:
            for name in reversed(taken):
                with self._guard:
                    lock, users = self._locks[name]
                    lock.release()
                    if users == 1:
                        del self._locks[name]
                    else:
                        self._locks[name] = (lock, users - 1)


class Mirror:
    """ZooKeeper ops that make the mirror match what Ceph confirmed, from the cache's state."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view
        self.paths: Paths = view.paths
        self.cache = view.cache

    def upsert(self, path: str, doc: Any) -> list[Op]:
        entry = self.cache.entry(path)
        if entry is None:
            return [Op.create(path, doc)]
        if entry.doc == doc:
            return []
        return [Op.set(path, doc, entry.version)]

    def ensure(self, path: str) -> list[Op]:
        return [] if self.cache.exists(path) else [Op.create(path, {})]

    def delete_tree(self, path: str) -> list[Op]:
        """Deletes of `path` and everything below it, leaves first."""
        if not self.cache.exists(path):
            return []
        ops: list[Op] = []
        for child in list(self.cache.children(path)):
            ops += self.delete_tree(f"{path}/{child}")
        return [*ops, Op.delete(path)]

    # objects
    def pool(self, record: PoolRecord) -> list[Op]:
        paths = self.paths
        return (self.upsert(paths.storage_pool(record.name), record.to_doc())
                + self.ensure(paths.storage_pool_volumes(record.name))
                + self.ensure(paths.storage_pool_snapshots(record.name)))

    def pool_gone(self, pool: str) -> list[Op]:
        paths = self.paths
        return (self.delete_tree(paths.storage_pool_snapshots(pool))
                + self.delete_tree(paths.storage_pool_volumes(pool))
                + self.delete_tree(paths.storage_pool(pool)))

    def volume(self, record: VolumeRecord) -> list[Op]:
        paths = self.paths
        return (self.upsert(paths.storage_volume(record.pool, record.name), record.to_doc())
                + self.ensure(paths.storage_volume_snapshots(record.pool, record.name)))

    def volume_gone(self, pool: str, volume: str) -> list[Op]:
        paths = self.paths
        return (self.delete_tree(paths.storage_volume_snapshots(pool, volume))
                + self.delete_tree(paths.storage_volume(pool, volume)))

    def snapshot(self, record: SnapshotRecord) -> list[Op]:
        return self.upsert(self.paths.storage_snapshot(record.pool, record.volume,
                                                       record.snapshot), record.to_doc())

    def snapshot_gone(self, pool: str, volume: str, snapshot: str) -> list[Op]:
        return self.delete_tree(self.paths.storage_snapshot(pool, volume, snapshot))

    def osd(self, record: OsdRecord) -> list[Op]:
        return self.upsert(self.paths.storage_osd(record.id), record.to_doc())

    def osd_gone(self, osd_id: int) -> list[Op]:
        return self.delete_tree(self.paths.storage_osd(osd_id))

    def volume_record(self, pool: str, volume: str) -> VolumeRecord | None:
        doc = self.cache.get(self.paths.storage_volume(pool, volume))
        return None if not isinstance(doc, dict) else from_dict(VolumeRecord, doc)

    def snapshot_records(self, pool: str, volume: str) -> list[SnapshotRecord]:
        path = self.paths.storage_volume_snapshots(pool, volume)
        docs = (self.cache.get(f"{path}/{name}") for name in self.cache.children(path))
        return [from_dict(SnapshotRecord, d) for d in docs if isinstance(d, dict)]


class RequestExecutor:
    """Claims, runs and finishes the storage requests addressed to `target` (shared by the
    primary's and the nodes' storage services)."""

    def __init__(self, name: str, target: str, view: ClusterView, store: Store,
                 handlers: dict[str, Callable[[StorageRequest, Callable[[str], None]], Outcome]],
                 lock_names: Callable[[StorageRequest], list[str]],
                 clock: Callable[[], float] = time.time,
                 on_finished: Callable[[StorageRequest], None] = lambda request: None) -> None:
        self.name = name
        self.target = target
        self.view = view
        self.store = store
        self.handlers = handlers
        self.lock_names = lock_names
        self.clock = clock
        self.on_finished = on_finished
        self.executor_id = f"{name}/{os.getpid()}"
        self.locks = KeyedLocks()
        self.active = True
        self._running: set[str] = set()
        self._running_changed = threading.Condition()

    def keys(self) -> list[str]:
        paths = self.view.paths
        keys = []
        for request_id in self.view.cache.children(paths.storage_requests):
            doc = self.view.cache.get(paths.storage_request(request_id))
            if isinstance(doc, dict) and doc.get("target") == self.target and \
                    doc.get("state") in ("pending", "running"):
                keys.append(request_key(request_id))
        return keys

    def key_of_path(self, path: str) -> str | None:
        prefix = self.view.paths.storage_requests + "/"
        if not path.startswith(prefix):
            return None
        request_id = path[len(prefix):]
        doc = self.view.cache.get(path)
        if "/" in request_id or not isinstance(doc, dict) or doc.get("target") != self.target:
            return None
        return request_key(request_id) if doc.get("state") in ("pending", "running") else None

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._running_changed:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._running_changed.wait(left)
        return True

    def running_count(self) -> int:
        return len(self._running)

    # reconcile
    def reconcile(self, key: str) -> Result:
        request_id = key.split("/", 1)[1]
        path = self.view.paths.storage_request(request_id)
        entry = self.view.cache.entry(path)
        if not self.active or entry is None or not isinstance(entry.doc, dict):
            return DONE
        request = from_dict(StorageRequest, entry.doc)
        if request.target != self.target or request_id in self._running:
            return DONE
        if request.state == "running":
            # not running here: its executor is gone (crash, restart, lost primary role)
            self._finish(path, request, entry.version, ok=False, error="BackendError",
                         message=f"interrupted: {request.executor or 'its executor'} stopped "
                                 "while carrying it out; Ceph was re-read, the storage objects "
                                 "show what was done")
            return DONE
        if request.state != "pending":
            return DONE
        request.state, request.executor, request.started = "running", self.executor_id, \
            self.clock()
        try:
            version = self.store.commit([Op.set(path, request.to_doc(), entry.version)])[0].version
        except Conflict:
            return DONE  # changed meanwhile (deleted, or claimed): the watch brings it back
        with self._running_changed:
            self._running.add(request_id)
        try:
            self._execute(path, request, version)
        finally:
            with self._running_changed:
                self._running.discard(request_id)
                self._running_changed.notify_all()
        return DONE

    def _execute(self, path: str, request: StorageRequest, version: int) -> None:
        started = time.monotonic()
        handler = self.handlers.get(request.op)
        versions = [version]

        def progress(text: str) -> None:
            request.progress = text
            try:
                versions[0] = self.store.commit(
                    [Op.set(path, request.to_doc(), versions[0])])[0].version
            except PvcError as exc:
                log.info("event=storage-progress-not-written request=%s error=%s", request.id,
                         exc)

        try:
            if handler is None:
                raise InvalidValue(f"unknown storage operation {request.op!r}")
            with self.locks.hold(self.lock_names(request)):
                outcome = handler(request, progress)
        except PvcError as exc:
            log.info("event=storage-request-failed node=%s request=%s op=%s error=%s",
                     self.name, request.id, request.op, exc)
            self._finish(path, request, versions[0], ok=False, error=type(exc).__name__,
                         message=str(exc))
            return
        except Exception as exc:  # a bug or an unexpected tool failure: report it, keep going
            log.exception("event=storage-request-error node=%s request=%s", self.name, request.id)
            self._finish(path, request, versions[0], ok=False, error="BackendError",
                         message=f"internal error: {exc!r}")
            return
        log.info("event=storage-request-done node=%s request=%s op=%s seconds=%.3f", self.name,
                 request.id, request.op, time.monotonic() - started)
        self._finish(path, request, versions[0], ok=True, message=outcome.message,
                     result=outcome.result, ops=outcome.ops)

    def _finish(self, path: str, request: StorageRequest, version: int, ok: bool, message: str,
                error: str | None = None, result: dict[str, Any] | None = None,
                ops: Callable[[], list[Op]] | None = None) -> None:
        request.state = "done" if ok else "failed"
        request.message, request.error = message, error
        request.result = result or {}
        request.finished = self.clock()
        problem: PvcError | None = None
        for _ in range(COMMIT_TRIES):
            mirror_ops = ops() if ops is not None else []
            try:
                self.store.commit([*mirror_ops, Op.set(path, request.to_doc(), version)])
                self.on_finished(request)
                return
            except PvcError as exc:
                problem = exc
                current = self.store.read_optional(path)
                if current is None:
                    return  # the request was deleted meanwhile: nobody waits for it
                version = current[1].version
        # the mirror could not be written (e.g. its pool was deleted meanwhile): say so; the
        # next sync makes the mirror match Ceph
        request.state, request.error = "failed", "Conflict"
        request.message = (f"{message}; but recording it in ZooKeeper failed ({problem}); the "
                           "next refresh from Ceph shows the real state")
        try:
            self.store.commit([Op.set(path, request.to_doc(), version)])
        except PvcError as exc:
            log.warning("event=storage-request-unrecorded request=%s error=%s", request.id, exc)
        self.on_finished(request)


# -- the primary: pools, volumes, snapshots, flags, OSD in/out; the mirror's sync -------------

@dataclass
class CephState:
    """What one sync read from Ceph."""

    status_text: str
    df_text: str
    osds: list[OsdStats]
    osd_hosts: dict[int, str]
    pools: dict[str, PoolRecord]
    volumes: dict[tuple[str, str], VolumeRecord]
    snapshots: dict[tuple[str, str, str], SnapshotRecord]


class PrimaryStorage:
    """The primary's storage service: started and stopped with the primary role."""

    def __init__(self, name: str, view: ClusterView, store: Store, ceph: StorageCeph,
                 config: CephDriverSection, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.view = view
        self.store = store
        self.ceph = ceph
        self.config = config
        self.clock = clock
        self.mirror = Mirror(view)
        self.requests = RequestExecutor(
            name, PRIMARY_TARGET, view, store, {
                "cluster-option": self._cluster_option, "osd-state": self._osd_state,
                "pool-add": self._pool_add, "pool-remove": self._pool_remove,
                "volume-add": self._volume_add, "volume-modify": self._volume_modify,
                "volume-remove": self._volume_remove, "snapshot-add": self._snapshot_add,
                "snapshot-remove": self._snapshot_remove,
            }, primary_lock_names, clock)
        self.requests.active = False
        self.request_controller: Controller | None = None
        self.sync_controller: Controller | None = None
        self._sync_lock = threading.Lock()
        self._volume_read_at: dict[tuple[str, str], float] = {}  # last `rbd info`, monotonic
        self.last_sync_seconds = 0.0

    # primary role
    def start(self) -> None:
        self.requests.active = True
        log.info("event=storage-primary-start node=%s", self.name)
        if self.sync_controller is not None:
            self.sync_controller.enqueue(SYNC_KEY)
        if self.request_controller is not None:
            self.request_controller.resync()

    def stop(self) -> None:
        self.requests.active = False
        if not self.requests.wait_idle(self.config.command_timeout * 2):
            log.warning("event=storage-primary-stop-busy node=%s running=%d", self.name,
                        self.requests.running_count())
        log.info("event=storage-primary-stop node=%s", self.name)

    # sync key
    def sync_keys(self) -> list[str]:
        return [SYNC_KEY]

    def reconcile_sync(self, key: str) -> Result:
        if not self.requests.active:
            return DONE
        if key.startswith("vol/"):
            _, pool, volume = key.split("/", 2)
            self._refresh_volume(pool, volume)
            return DONE
        started = time.monotonic()
        try:
            with self._sync_lock:
                self.sync()
        except PvcError as exc:  # Ceph unreachable or slow: keep the last mirror, try again
            log.warning("event=storage-sync-failed node=%s error=%s", self.name, exc)
        self.last_sync_seconds = time.monotonic() - started
        return Result(requeue_after=self.config.stats_interval)

    # request handlers (run under the object locks of `primary_lock_names`)
    def _cluster_option(self, request: StorageRequest, progress: Callable[[str], None]
                        ) -> Outcome:
        action, option = request.args["action"], request.args["option"]
        if action == "set":
            self.ceph.osd_set(option)
        else:
            self.ceph.osd_unset(option)
        return Outcome(f"{'Set' if action == 'set' else 'Unset'} OSD flag {option}")

    def _osd_state(self, request: StorageRequest, progress: Callable[[str], None]) -> Outcome:
        osd_id, state = int(request.args["osd"]), request.args["state"]
        if state == "in":
            self.ceph.osd_in(osd_id)
        else:
            self.ceph.osd_out(osd_id)

        def ops() -> list[Op]:
            doc = self.view.cache.get(self.view.paths.storage_osd(osd_id))
            if not isinstance(doc, dict):
                return []
            record = from_dict(OsdRecord, doc)
            record.stats = {**record.stats, "in": state == "in"}
            return self.mirror.osd(record)

        return Outcome(f"Set OSD {osd_id} {state}", {"osd": osd_id, "state": state}, ops)

    def _pool_add(self, request: StorageRequest, progress: Callable[[str], None]) -> Outcome:
        pool, pgs = request.args["pool"], int(request.args["pgs"])
        self.ceph.pool_create(pool, pgs)
        return Outcome(f"Created RBD pool {pool} with {pgs} placement groups",
                       {"pool": pool}, lambda: self.mirror.pool(PoolRecord(pool, pgs)))

    def _pool_remove(self, request: StorageRequest, progress: Callable[[str], None]) -> Outcome:
        pool = request.args["pool"]
        self.ceph.pool_delete(pool)
        return Outcome(f"Removed RBD pool {pool} and all its volumes", {"pool": pool},
                       lambda: self.mirror.pool_gone(pool))

    def _volume_add(self, request: StorageRequest, progress: Callable[[str], None]) -> Outcome:
        pool, volume, size = request.args["pool"], request.args["volume"], \
            parse_size(request.args["size"])
        self.ceph.volume_create(pool, volume, size)
        # the rest of `rbd info` follows from the volume refresh queued after the request
        record = VolumeRecord(volume, pool, {"name": volume, "size": size})
        return Outcome(f"Created RBD volume {pool}/{volume} of {size} bytes",
                       {"pool": pool, "volume": volume, "size": size},
                       lambda: self.mirror.volume(record))

    def _volume_modify(self, request: StorageRequest, progress: Callable[[str], None]
                       ) -> Outcome:
        args = request.args
        pool, volume = args["pool"], args["volume"]
        size, new_name = args.get("size"), args.get("name")
        done = []
        if size is not None:
            self.ceph.volume_resize(pool, volume, int(size),
                                    allow_shrink=bool(args.get("allow_shrink")))
            done.append(f"resized to {int(size)} bytes")
        if new_name is not None and new_name != volume:
            self.ceph.volume_rename(pool, volume, new_name)
            done.append(f"renamed to {new_name}")
        final = new_name or volume
        info = self.ceph.volume_info(pool, final)

        def ops() -> list[Op]:
            result = self.mirror.volume(VolumeRecord(final, pool, info.stats))
            if final != volume:
                snapshots = self.mirror.snapshot_records(pool, volume)
                result = self.mirror.volume_gone(pool, volume) + result
                for snap in snapshots:
                    snap.volume = final
                    result += self.mirror.snapshot(snap)
            return result

        return Outcome(f"RBD volume {pool}/{volume} " + " and ".join(done or ["unchanged"]),
                       {"pool": pool, "volume": final, "size": info.size}, ops)

    def _volume_remove(self, request: StorageRequest, progress: Callable[[str], None]
                       ) -> Outcome:
        pool, volume = request.args["pool"], request.args["volume"]
        self.ceph.volume_delete(pool, volume,
                                with_snapshots=bool(request.args.get("with_snapshots")))
        return Outcome(f"Removed RBD volume {pool}/{volume}", {"pool": pool, "volume": volume},
                       lambda: self.mirror.volume_gone(pool, volume))

    def _snapshot_add(self, request: StorageRequest, progress: Callable[[str], None]
                      ) -> Outcome:
        pool, volume, snapshot = (request.args[k] for k in ("pool", "volume", "snapshot"))
        self.ceph.snapshot_create(pool, volume, snapshot)
        record = SnapshotRecord(pool, volume, snapshot)
        return Outcome(f"Created RBD snapshot {pool}/{volume}@{snapshot}",
                       {"pool": pool, "volume": volume, "snapshot": snapshot},
                       lambda: self.mirror.snapshot(record))

    def _snapshot_remove(self, request: StorageRequest, progress: Callable[[str], None]
                         ) -> Outcome:
        pool, volume, snapshot = (request.args[k] for k in ("pool", "volume", "snapshot"))
        self.ceph.snapshot_delete(pool, volume, snapshot)
        return Outcome(f"Removed RBD snapshot {pool}/{volume}@{snapshot}",
                       {"pool": pool, "volume": volume, "snapshot": snapshot},
                       lambda: self.mirror.snapshot_gone(pool, volume, snapshot))

    # the mirror's sync
    def sync(self) -> None:
        """Re-read Ceph and make the mirror match it (module docstring: races)."""
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
            state = CephState(status.result(), df_text.result(), osds.result(), hosts.result(),
                              {}, {}, {})
            for p in pools:
                state.pools[p.name] = PoolRecord(p.name, p.pg_num, stats_by_name.get(p.name, {}))
            state.volumes.update(kept)
            for (pool_name, volume), future in infos.items():
                try:
                    stats = future.result().stats
                except NotFound:
                    continue  # deleted between the listing and the info
                state.volumes[(pool_name, volume)] = VolumeRecord(volume, pool_name, stats)
                self._volume_read_at[(pool_name, volume)] = time.monotonic()
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
                stale.append((self._volume_read_at.get((pool, volume), 0.0), volume))
        for _, volume in sorted(stale)[:VOLUME_INFOS_PER_SYNC]:
            chosen[volume] = None
        return chosen

    def _status_ops(self, state: CephState) -> list[Op]:
        health = next((line.split(":", 1)[1].strip() for line in state.status_text.splitlines()
                       if line.strip().startswith("health:")), None)
        now = self.clock()
        status = {"type": "status", "primary_node": self.name, "ceph_data": state.status_text,
                  "health": health, "updated": now}
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
        if not ops:
            return
        try:
            self.store.commit(ops)
            return
        except Conflict:
            pass
        for op in ops:  # in order: containers before their children, leaves before parents
            try:
                self.store.commit([op])
            except Conflict as exc:
                log.info("event=storage-sync-skipped path=%s reason=%s", op.path, exc)

    def _refresh_volume(self, pool: str, volume: str) -> None:
        path = self.view.paths.storage_volume(pool, volume)
        entry = self.view.cache.entry(path)
        if entry is None:
            return
        try:
            info = self.ceph.volume_info(pool, volume)
        except NotFound:
            return
        self._volume_read_at[(pool, volume)] = time.monotonic()
        record = from_dict(VolumeRecord, entry.doc)
        record.stats = info.stats
        if record.to_doc() != entry.doc:
            try:
                self.store.commit([Op.set(path, record.to_doc(), entry.version)])
            except Conflict:
                pass  # changed meanwhile: the next sync brings the stats



def primary_lock_names(request: StorageRequest) -> list[str]:
    args = request.args
    if request.op in ("pool-add", "pool-remove"):
        return [f"pool/{args['pool']}"]
    if request.op in ("volume-add", "volume-modify", "volume-remove", "snapshot-add",
                      "snapshot-remove"):
        names = [f"volume/{args['pool']}/{args['volume']}"]
        if args.get("name"):
            names.append(f"volume/{args['pool']}/{args['name']}")
        return names
    if request.op == "osd-state":
        return [f"osd/{args['osd']}"]
    return ["cluster"]


# -- the OSD owner: OSD add and removal on this node ---------------------------------------------

class NodeStorage:
    """This node's part: the OSDs whose devices it owns."""

    def __init__(self, name: str, view: ClusterView, store: Store, ceph: StorageCeph,
                 provisioner: OsdProvisioner, config: CephDriverSection,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.view = view
        self.ceph = ceph
        self.provisioner = provisioner
        self.config = config
        self.mirror = Mirror(view)
        self.requests = RequestExecutor(name, name, view, store, {
            "osd-add": self._osd_add, "osd-remove": self._osd_remove,
        }, lambda request: [f"osd/{request.args.get('osd', 'new')}"], clock)
        self._removing: set[int] = set()
        self._removing_lock = threading.Lock()

    # the OSD daemons of this node's devices run (after a reboot: activated again)
    def osd_keys(self) -> list[str]:
        root = self.view.paths.storage_osds
        return [child for child in self.view.cache.children(root) if self._owns_device_osd(child)]

    def _owns_device_osd(self, key: str) -> bool:
        doc = self.view.cache.get(self.view.paths.storage_osd(key))
        return isinstance(doc, dict) and doc.get("node") == self.name and \
            str(doc.get("device") or "").startswith("/dev/")

    def key_of_osd_path(self, path: str) -> str | None:
        prefix = self.view.paths.storage_osds + "/"
        rest = path.removeprefix(prefix) if path.startswith(prefix) else ""
        return rest if rest.isdigit() else None

    def reconcile_osd(self, key: str) -> Result:
        osd_id = int(key)
        with self._removing_lock:
            if osd_id in self._removing:
                return DONE
        if not self._owns_device_osd(key):
            return DONE
        try:
            if self.provisioner.ensure(osd_id):
                log.info("event=osd-started-again node=%s osd=%d", self.name, osd_id)
        except BackendError as exc:
            raise TemporaryError(f"osd.{osd_id}: {exc}") from exc
        return DONE

    def _osd_add(self, request: StorageRequest, progress: Callable[[str], None]) -> Outcome:
        device, weight = request.args["device"], float(request.args["weight"])
        progress(f"creating an OSD on {device}")
        osd_id = self.provisioner.create(device, weight)
        progress(f"osd.{osd_id} started; placing it under host={self.name}")
        self.ceph.osd_place(osd_id, weight, self.name)
        stats = self._wait_up(osd_id, progress)
        record = OsdRecord(osd_id, self.name, device, stats)
        return Outcome(f"Created OSD {osd_id} on node {self.name} (device {device}, weight "
                       f"{weight:g})", {"osd": osd_id, "node": self.name},
                       lambda: self.mirror.osd(record))

    def _wait_up(self, osd_id: int, progress: Callable[[str], None]) -> dict[str, Any]:
        deadline = time.monotonic() + max(30.0, self.config.command_timeout)
        while time.monotonic() < deadline:
            osd = next((o for o in self.ceph.osd_list() if o.id == osd_id), None)
            # PGs that move to it peer first: until they are active, I/O to them blocks
            if osd is not None and osd.up and osd.in_ and all(
                    pg.state.startswith("active") for pg in self.ceph.pg_stats()):
                return {"uuid": osd.uuid, "up": True, "in": True, "node": self.name,
                        "reweight": osd.reweight, "primary_affinity": osd.primary_affinity,
                        "state": ",".join(osd.state)}
            time.sleep(0.2)
        raise BackendError(f"osd.{osd_id} was created on node {self.name} but is not up and in "
                           "(with every PG active) after "
                           f"{max(30.0, self.config.command_timeout):.0f} s; see its log")

    def _osd_remove(self, request: StorageRequest, progress: Callable[[str], None]) -> Outcome:
        osd_id = int(request.args["osd"])
        with self._removing_lock:
            self._removing.add(osd_id)  # the OSD controller must not start it again
        try:
            removal = self.ceph.remove_osd_safely(
                osd_id, stop_daemon=self.provisioner.stop,
                progress_timeout=self.config.osd_removal_timeout, on_progress=progress)
            progress("purged; releasing its device")
            self.provisioner.release(osd_id)
        finally:
            with self._removing_lock:
                self._removing.discard(osd_id)
        return Outcome(f"Removed OSD {osd_id} from node {self.name} ({removal.pgs_moved} PGs "
                       f"moved off it in {removal.drain_seconds:.1f} s)",
                       {"osd": osd_id, "pgs_moved": removal.pgs_moved,
                        "seconds": round(removal.total_seconds, 3)},
                       lambda: self.mirror.osd_gone(osd_id))


def install(daemon: NodeDaemon) -> None:
    """Wire Ceph storage into a node daemon (called from its __init__)."""
    config = daemon.config.drivers.ceph
    if not config.enabled:
        return
    ceph = StorageCeph(config.conf_file, config.keyring, timeout=config.command_timeout)
    devices = DeviceOsdProvisioner(
        daemon.name, make_launcher(config.osd_launcher, config.osd_run_dir),
        configure=ceph.osd_configure, unconfigure=ceph.osd_unconfigure, purge=ceph.osd_purge)
    provisioner = NodeOsdProvisioner(
        daemon.name, devices, daemon.plugins.extra_osds)  # type: ignore[arg-type]
    requests_prefix = daemon.paths.storage_requests + "/"
    node = NodeStorage(daemon.name, daemon.view, daemon.store, ceph, provisioner, config,
                       daemon.clock)
    node_controller = Controller("storage-node", node.requests.reconcile, node.requests.keys,
                                 workers=2, resync_interval=daemon.config.timing.resync_interval)
    daemon.add_controller(node_controller)
    daemon.watch(requests_prefix, node_controller, node.requests.key_of_path)
    osd_controller = Controller("storage-osd", node.reconcile_osd, node.osd_keys,
                                resync_interval=daemon.config.timing.resync_interval)
    daemon.add_controller(osd_controller)
    daemon.watch(daemon.paths.storage_osds + "/", osd_controller, node.key_of_osd_path)
    daemon.storage_node = node  # type: ignore[attr-defined]
    if daemon.coordinator is None:
        return
    primary = PrimaryStorage(daemon.name, daemon.view, daemon.store, ceph, config, daemon.clock)
    primary.request_controller = Controller(
        "storage", primary.requests.reconcile, primary.requests.keys, workers=REQUEST_WORKERS,
        resync_interval=daemon.config.timing.resync_interval)
    primary.sync_controller = Controller("storage-sync", primary.reconcile_sync,
                                         primary.sync_keys, workers=2,
                                         resync_interval=max(60.0, config.stats_interval))
    for controller in (primary.request_controller, primary.sync_controller):
        daemon.add_controller(controller)
    daemon.watch(requests_prefix, primary.request_controller, primary.requests.key_of_path)
    sync = primary.sync_controller

    def refresh_volume_after(request: StorageRequest) -> None:
        # flags, in/out and pools show in `ceph status` / `rados df`: refresh them soon (a burst
        # makes one sync; each costs ≈ 6 runs of the `ceph` tool, ≈ 0.3 s of CPU each). The
        # mirror of volumes and snapshots is exact already; their stats: one `rbd info`.
        if request.op in SYNC_AFTER_OPS:
            sync.enqueue_after(SYNC_KEY, AFTER_REQUEST_SYNC_DELAY)
        if request.op in ("volume-add", "volume-modify") and request.state == "done":
            sync.enqueue(f"vol/{request.result['pool']}/{request.result['volume']}")

    primary.requests.on_finished = refresh_volume_after
    daemon.services.add("storage", primary.start, primary.stop)
    daemon.storage_primary = primary  # type: ignore[attr-defined]
