"""Pools, RBD volumes and snapshots through the driver, checked with `ceph` and `rbd` themselves."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pvcd.domain.errors import Conflict, InvalidValue, NotFound
from pvcd.drivers.ceph.driver import CephDriver
from pvcd.lab.ceph import ThrowawayCeph

pytestmark = pytest.mark.ceph

MiB = 1 << 20


def test_status_and_df_raw_and_json(ceph: CephDriver, ceph_lab: ThrowawayCeph) -> None:
    assert "HEALTH_OK" in ceph.status_text()
    assert ceph.status()["fsid"] == ceph_lab.fsid
    assert "POOL_NAME" in ceph.df_text()
    assert "pools" in ceph.df()
    assert ceph.health().status == "HEALTH_OK"


def test_pool_create_list_delete(ceph: CephDriver, tools: Any, pool_name: str) -> None:
    ceph.pool_create(pool_name, 8)

    assert pool_name in tools.pools()
    assert tools.json("ceph", "osd", "pool", "get", pool_name, "pg_num")["pg_num"] == 8
    assert "rbd" in tools.json("ceph", "osd", "pool", "application", "get", pool_name)
    pool = next(p for p in ceph.pool_list() if p.name == pool_name)
    assert pool.is_rbd and pool.pg_num == 8
    with pytest.raises(Conflict, match="already exists"):
        ceph.pool_create(pool_name, 8)

    # `rados df` learns of a new pool a little later (mgr stats)
    deadline = time.monotonic() + 15
    while pool_name not in [p.name for p in ceph.pool_stats()]:
        assert time.monotonic() < deadline, "new pool never appeared in rados df"
        time.sleep(0.5)
    stats = next(p for p in ceph.pool_stats() if p.name == pool_name).stats()
    assert set(stats) == {
        "id", "size_bytes", "num_objects", "num_object_clones", "num_object_copies",
        "num_objects_missing_on_primary", "num_objects_unfound", "num_objects_degraded",
        "read_ops", "read_bytes", "write_ops", "write_bytes"}

    ceph.pool_delete(pool_name)
    assert pool_name not in tools.pools()
    with pytest.raises(NotFound):
        ceph.pool_delete(pool_name)


def test_pool_with_replicas(ceph: CephDriver, tools: Any, pool_name: str,
                            ceph_lab: ThrowawayCeph) -> None:
    ceph.pool_create(pool_name, 8, replicas=len(ceph_lab.osd_ids))
    size = tools.json("ceph", "osd", "pool", "get", pool_name, "size")["size"]
    assert size == len(ceph_lab.osd_ids)


def test_volume_create_resize_rename_delete(ceph: CephDriver, tools: Any,
                                            pool_name: str) -> None:
    ceph.pool_create(pool_name, 8)
    ceph.volume_create(pool_name, "vm1_disk0", "20M")
    assert tools.json("rbd", "info", f"{pool_name}/vm1_disk0")["size"] == 20 * MiB
    with pytest.raises(Conflict):
        ceph.volume_create(pool_name, "vm1_disk0", "20M")

    ceph.volume_resize(pool_name, "vm1_disk0", 40 * MiB)
    assert tools.json("rbd", "info", f"{pool_name}/vm1_disk0")["size"] == 40 * MiB
    with pytest.raises(InvalidValue, match="shrinking"):
        ceph.volume_resize(pool_name, "vm1_disk0", "10M")
    ceph.volume_resize(pool_name, "vm1_disk0", "10M", allow_shrink=True)
    assert tools.json("rbd", "info", f"{pool_name}/vm1_disk0")["size"] == 10 * MiB

    ceph.volume_rename(pool_name, "vm1_disk0", "vm1_root")
    assert tools.json("rbd", "ls", pool_name) == ["vm1_root"]
    assert ceph.volume_list(pool_name) == ["vm1_root"]
    info = ceph.volume_info(pool_name, "vm1_root")
    assert info.size == 10 * MiB
    assert {"name", "id", "size", "objects", "order", "object_size", "block_name_prefix",
            "format", "features"} <= set(info.stats)
    with pytest.raises(NotFound):
        ceph.volume_info(pool_name, "vm1_disk0")

    ceph.volume_delete(pool_name, "vm1_root")
    assert tools.json("rbd", "ls", pool_name) == []
    with pytest.raises(NotFound):
        ceph.volume_delete(pool_name, "vm1_root")


def test_volume_in_missing_pool(ceph: CephDriver, pool_name: str) -> None:
    with pytest.raises(NotFound):
        ceph.volume_create(pool_name, "v", "1M")
    with pytest.raises(NotFound):
        ceph.volume_list(pool_name)


def test_snapshots(ceph: CephDriver, tools: Any, pool_name: str) -> None:
    ceph.pool_create(pool_name, 8)
    ceph.volume_create(pool_name, "v", "4M")
    ceph.snapshot_create(pool_name, "v", "before-upgrade")
    names = [s["name"] for s in tools.json("rbd", "snap", "ls", f"{pool_name}/v")]
    assert names == ["before-upgrade"]
    [snap] = ceph.snapshot_list(pool_name, "v")
    assert (snap.pool, snap.volume, snap.snapshot, snap.size) == (
        pool_name, "v", "before-upgrade", 4 * MiB)
    with pytest.raises(Conflict):
        ceph.snapshot_create(pool_name, "v", "before-upgrade")

    with pytest.raises(Conflict, match="snapshots"):
        ceph.volume_delete(pool_name, "v")
    with pytest.raises(NotFound):
        ceph.snapshot_delete(pool_name, "v", "nope")

    ceph.snapshot_delete(pool_name, "v", "before-upgrade")
    assert tools.json("rbd", "snap", "ls", f"{pool_name}/v") == []
    ceph.snapshot_create(pool_name, "v", "s2")
    ceph.volume_delete(pool_name, "v", with_snapshots=True)
    assert tools.json("rbd", "ls", pool_name) == []


def test_invalid_names_never_reach_ceph(ceph: CephDriver, tools: Any, pool_name: str) -> None:
    """Ceph itself would create a pool named '-x' (it did, on 16.2.15); we refuse first."""
    with pytest.raises(InvalidValue):
        ceph.pool_create("-x", 8)
    assert "-x" not in tools.pools()
    ceph.pool_create(pool_name, 8)
    for bad in ("a/b", "a@b", "a b"):
        with pytest.raises(InvalidValue):
            ceph.volume_create(pool_name, bad, "1M")
    assert tools.json("rbd", "ls", pool_name) == []


def test_too_many_pgs_for_the_cluster(ceph: CephDriver, tools: Any, pool_name: str) -> None:
    """A valid power of two that the cluster's OSDs cannot hold: Ceph's ERANGE, as a bad value."""
    with pytest.raises(InvalidValue, match="too many"):
        ceph.pool_create(pool_name, 32768)
    assert pool_name not in tools.pools()
