"""The primary's storage service: pools, volumes, snapshots, cluster flags and OSD in/out.

These change the cluster map, so whichever node is primary carries them out (requests with
target `primary`), and the primary alone keeps the mirror in sync with Ceph (`sync`). Both
controllers exist on every coordinator; `start()` and `stop()` run with the primary role
(a `PrimaryService`), so only the primary acts. `stop()` waits for its running requests, so a
new primary never runs a request the old one is still carrying out (`requests`: races).

After a request that changes what `ceph status` / `rados df` show (flags, in/out, pools) a sync
follows soon; a burst makes one sync, since each costs ≈ 6 runs of the `ceph` tool (≈ 0.3 s of
CPU each). The mirror of volumes and snapshots is exact already after their requests; their
stats come from one `rbd info` of the volume changed.

A clone or a grow first asks `ceph df` whether the pool has room (`pvcd.domain.pool_space`),
and a rollback asks `rbd status` whether anyone has the volume open: what only Ceph knows is
checked here, right before acting; the API checked the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pvcd.config import CephDriverSection
from pvcd.controllers.base import DONE, Controller, Result
from pvcd.controllers.storage.mirror import Mirror
from pvcd.controllers.storage.requests import Outcome, RequestExecutor
from pvcd.controllers.storage.sync import MirrorSync
from pvcd.domain.errors import Conflict, NotFound, PvcError
from pvcd.domain.pool_space import check_room
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
from pvcd.drivers.ceph.values import parse_size
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

REQUEST_WORKERS = 4
SYNC_KEY = "sync"
AFTER_REQUEST_SYNC_DELAY = 0.5  # seconds
SYNC_AFTER_OPS = ("cluster-option", "osd-state", "pool-add", "pool-remove")
VOLUME_OPS = ("volume-add", "volume-modify", "volume-clone", "volume-remove", "snapshot-add",
              "snapshot-remove", "snapshot-rename", "snapshot-rollback", "volume-import")
# requests after which the volume in their result gets its full `rbd info` at once
REFRESH_AFTER_OPS = ("volume-add", "volume-modify", "volume-clone", "snapshot-rollback")


def primary_lock_names(request: StorageRequest) -> list[str]:
    """The objects a primary request changes: requests on the same object run one at a time."""
    args = request.args
    if request.op in ("pool-add", "pool-remove"):
        return [f"pool/{args['pool']}"]
    if request.op in VOLUME_OPS:
        names = [f"volume/{args['pool']}/{args['volume']}"]
        if args.get("name"):
            names.append(f"volume/{args['pool']}/{args['name']}")
        if args.get("new_volume"):  # a clone's target
            names.append(f"volume/{args['pool']}/{args['new_volume']}")
        return names
    if request.op == "osd-state":
        return [f"osd/{args['osd']}"]
    return ["cluster"]



class PrimaryStorage:
    """The primary's storage service: started and stopped with the primary role."""

    def __init__(self, name: str, view: ClusterView, store: Store, ceph: CephDriver,
                 config: CephDriverSection, clock: Callable[[], float] = time.time,
                 resync_interval: float = 60.0) -> None:
        self.name = name
        self.view = view
        self.store = store
        self.ceph = ceph
        self.config = config
        self.mirror = Mirror(view)
        self.mirror_sync = MirrorSync(name, view, store, ceph, config, clock)
        self.requests = RequestExecutor(
            name, PRIMARY_TARGET, view, store, {
                "cluster-option": self._cluster_option, "osd-state": self._osd_state,
                "pool-add": self._pool_add, "pool-remove": self._pool_remove,
                "volume-add": self._volume_add, "volume-modify": self._volume_modify,
                "volume-remove": self._volume_remove, "snapshot-add": self._snapshot_add,
                "snapshot-remove": self._snapshot_remove, "volume-clone": self._volume_clone,
                "snapshot-rename": self._snapshot_rename,
                "snapshot-rollback": self._snapshot_rollback,
                "volume-import": self._volume_import,
            }, primary_lock_names, clock, on_finished=self._after_request, active=False)
        self.request_controller = Controller(
            "storage", self.requests.reconcile, self.requests.keys, workers=REQUEST_WORKERS,
            resync_interval=resync_interval)
        self.sync_controller = Controller("storage-sync", self.reconcile_sync, self.sync_keys,
                                          workers=2,
                                          resync_interval=max(60.0, config.stats_interval))

    # primary role
    def start(self) -> None:
        self.requests.active = True
        log.info("event=storage-primary-start node=%s", self.name)
        self.sync_controller.enqueue(SYNC_KEY)
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
            self.mirror_sync.refresh_volume(pool, volume)
            return DONE
        try:
            self.mirror_sync.run()
        except PvcError as exc:  # Ceph unreachable or slow: keep the last mirror, try again
            log.warning("event=storage-sync-failed node=%s error=%s", self.name, exc)
        return Result(requeue_after=self.config.stats_interval)

    def _after_request(self, request: StorageRequest) -> None:
        """A sync soon after flag, in/out and pool changes (module docstring); the new
        volume's `rbd info` at once."""
        if request.op in SYNC_AFTER_OPS:
            self.sync_controller.enqueue_after(SYNC_KEY, AFTER_REQUEST_SYNC_DELAY)
        if request.op in REFRESH_AFTER_OPS and request.state == "done":
            self.sync_controller.enqueue(
                f"vol/{request.result['pool']}/{request.result['volume']}")

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
            growth = int(size) - self.ceph.volume_info(pool, volume).size
            if growth > 0:  # thin volumes are counted at their full size, as PVC does
                check_room(self.ceph.pool_space(pool), growth, f"growing {pool}/{volume} to "
                           f"{int(size)} bytes", bool(args.get("force")))
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

    def _volume_clone(self, request: StorageRequest, progress: Callable[[str], None]
                      ) -> Outcome:
        """A full copy (extensions.md §2.2): the room for the source's size is checked against
        `ceph df` right before; a copy that fails halfway is removed again."""
        args = request.args
        pool, volume, new, snapshot = args["pool"], args["volume"], args["new_volume"], \
            args.get("snapshot")
        size = self.ceph.volume_info(pool, volume).size
        if snapshot is not None:
            sizes = {s.snapshot: s.size for s in self.ceph.snapshot_list(pool, volume)}
            if snapshot not in sizes:
                raise NotFound(f"RBD snapshot {pool}/{volume}@{snapshot} not found")
            size = sizes[snapshot]
        source = f"{pool}/{volume}" + (f"@{snapshot}" if snapshot else "")
        check_room(self.ceph.pool_space(pool), size, f"cloning {source} ({size} bytes)",
                   bool(args.get("force")))
        progress(f"copying {size} bytes from {source}")
        try:
            self.ceph.volume_copy(pool, volume, new, snapshot, size)
        except PvcError as exc:
            if not isinstance(exc, Conflict | NotFound):  # a partial copy of ours is left
                self._remove_partial(pool, new)
            raise
        # a copy has its source's size; the rest of `rbd info` follows from the volume refresh
        # queued after the request (as after volume-add): one Ceph client start less
        record = VolumeRecord(new, pool, {"name": new, "size": size})
        return Outcome(f"Cloned RBD volume {source} to {pool}/{new} ({size} bytes)",
                       {"pool": pool, "volume": new, "source": source, "size": size},
                       lambda: self.mirror.volume(record))

    def _volume_import(self, request: StorageRequest, progress: Callable[[str], None]
                       ) -> Outcome:
        """An export file into a new volume (with its snapshots), or a diff onto one
        (extensions.md §5.2); the volume and every snapshot Ceph then lists are mirrored."""
        args = request.args
        pool, volume, diff = args["pool"], args["volume"], bool(args.get("diff"))
        if not diff and self.view.cache.exists(self.view.paths.storage_volume(pool, volume)):
            raise Conflict(f"RBD volume {pool}/{volume} exists already")
        progress(f"importing {args['file']} into {pool}/{volume}")
        try:
            self.ceph.volume_import(pool, volume, args["file"], diff, int(args.get("bytes", 0)))
        except PvcError as exc:
            if not diff and not isinstance(exc, Conflict):  # a partial image of ours is left
                self._remove_partial(pool, volume)
            raise
        info = self.ceph.volume_info(pool, volume)
        snapshots = self.ceph.snapshot_list(pool, volume)

        def ops() -> list[Op]:
            result = self.mirror.volume(VolumeRecord(volume, pool, info.stats))
            for snap in snapshots:
                result += self.mirror.snapshot(SnapshotRecord(pool, volume, snap.snapshot,
                                                              snap.id, snap.size))
            return result

        return Outcome(f"Imported {'a diff' if diff else 'an export'} into RBD volume "
                       f"{pool}/{volume}",
                       {"pool": pool, "volume": volume, "size": info.size,
                        "snapshots": [s.snapshot for s in snapshots]}, ops)

    def _remove_partial(self, pool: str, volume: str) -> None:
        try:
            self.ceph.volume_delete(pool, volume)
        except NotFound:
            pass
        except PvcError as exc:
            log.warning("event=storage-partial-copy-left pool=%s volume=%s error=%s", pool,
                        volume, exc)

    def _snapshot_rename(self, request: StorageRequest, progress: Callable[[str], None]
                         ) -> Outcome:
        pool, volume, snapshot, new = (request.args[k] for k in
                                       ("pool", "volume", "snapshot", "new_name"))
        self.ceph.snapshot_rename(pool, volume, snapshot, new)

        def ops() -> list[Op]:
            old = next((r for r in self.mirror.snapshot_records(pool, volume)
                        if r.snapshot == snapshot), SnapshotRecord(pool, volume, snapshot))
            old.snapshot = new
            return self.mirror.snapshot_gone(pool, volume, snapshot) + self.mirror.snapshot(old)

        return Outcome(f"Renamed RBD snapshot {pool}/{volume}@{snapshot} to {new}",
                       {"pool": pool, "volume": volume, "snapshot": new}, ops)

    def _snapshot_rollback(self, request: StorageRequest, progress: Callable[[str], None]
                           ) -> Outcome:
        """Refused while anyone has the volume open: a guest or a mapping would see its disk
        change underneath it."""
        pool, volume, snapshot = (request.args[k] for k in ("pool", "volume", "snapshot"))
        watchers = self.ceph.volume_watchers(pool, volume)
        if watchers:
            raise Conflict(f"RBD volume {pool}/{volume} is open ({', '.join(watchers)}); "
                           "close it (stop the VM, unmap it) before a rollback; nothing was "
                           "changed")
        size = self.ceph.volume_info(pool, volume).size
        progress(f"rolling {pool}/{volume} back to {snapshot}")
        self.ceph.snapshot_rollback(pool, volume, snapshot, size)
        info = self.ceph.volume_info(pool, volume)  # the snapshot's size now
        record = VolumeRecord(volume, pool, info.stats)
        return Outcome(f"Rolled RBD volume {pool}/{volume} back to snapshot {snapshot}",
                       {"pool": pool, "volume": volume, "snapshot": snapshot},
                       lambda: self.mirror.volume(record))
