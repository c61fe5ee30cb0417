"""The ZooKeeper mirror of Ceph's objects: the ops that make it match what Ceph confirmed.

`storage/osds/<id>`, `storage/pools/<pool>`, `storage/volumes/<pool>/<volume>` and
`storage/snapshots/<pool>/<volume>/<snapshot>` mirror what Ceph has; reads (the API) come from
the cache of them. `Mirror` builds the ZooKeeper ops for one object from the cache's current
state (create, compare-and-set against the cached version, or deletes leaves first, with the
container znodes of pools and volumes). It writes nothing itself: a request commits them with
its result (`requests`), the sync with its refresh (`sync`).
"""

from __future__ import annotations

from typing import Any

from pvcd.domain.records import OsdRecord, PoolRecord, SnapshotRecord, VolumeRecord, from_dict
from pvcd.state.schema import Paths
from pvcd.state.store import Op
from pvcd.state.view import ClusterView


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

