"""OSD flags, out/in, statistics and safe removal on the real throwaway cluster."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from pvcd.domain.errors import Conflict, NotFound
from pvcd.drivers.ceph.driver import CephDriver
from pvcd.lab.ceph import ThrowawayCeph
from pvcd.lab.ceph_daemons import CephLabError

pytestmark = pytest.mark.ceph

OSD_STAT_FIELDS = {
    "uuid", "up", "in", "primary_affinity", "utilization", "var", "pgs", "kb", "weight",
    "reweight", "node", "used", "avail", "wr_ops", "wr_data", "rd_ops", "rd_data", "state",
}


def _tree_osd(tools: Any, osd_id: int) -> dict[str, Any]:
    """osd.`osd_id` as `ceph osd tree` shows it ({} when it is not in the tree)."""
    nodes = tools.json("ceph", "osd", "tree")["nodes"]
    return next((n for n in nodes if n["id"] == osd_id), {})


def test_noout_set_and_unset(ceph: CephDriver, tools: Any) -> None:
    try:
        ceph.osd_set("noout")
        assert "noout" in tools.json("ceph", "osd", "dump")["flags_set"]
        assert "noout" in ceph.osd_flags()
    finally:
        ceph.osd_unset("noout")
    assert "noout" not in tools.json("ceph", "osd", "dump")["flags_set"]


def test_osd_out_and_in(ceph: CephDriver, tools: Any, ceph_lab: ThrowawayCeph) -> None:
    osd_id = ceph_lab.osd_ids[0]
    try:
        ceph.osd_out(osd_id)
        assert _tree_osd(tools, osd_id)["reweight"] == 0
        assert not next(o for o in ceph.osd_list() if o.id == osd_id).in_
    finally:
        ceph.osd_in(osd_id)
    assert _tree_osd(tools, osd_id)["reweight"] == 1
    ceph_lab.wait_healthy(60)
    with pytest.raises(NotFound):
        ceph.osd_out(999)


def test_osd_stats(ceph: CephDriver, ceph_lab: ThrowawayCeph) -> None:
    # `ceph osd df` shows kb=0 for an OSD for a few seconds after it was marked in again
    deadline = time.monotonic() + 15
    while any(not s.kb for s in ceph.osd_stats()):
        assert time.monotonic() < deadline, "osd df never reported every OSD's capacity"
        time.sleep(0.5)
    stats = {s.id: s for s in ceph.osd_stats()}
    assert sorted(stats) == ceph_lab.osd_ids
    for entry in stats.values():
        doc = entry.stats()
        assert set(doc) == OSD_STAT_FIELDS
        assert doc["up"] is True and doc["in"] is True
        assert doc["node"] == socket.gethostname().split(".")[0]
        assert doc["kb"] == ceph_lab.memstore_bytes // 1024
        assert isinstance(doc["used"], int) and isinstance(doc["avail"], int)
        assert doc["state"] == "exists,up"


def test_removal_refused_when_a_pool_would_lack_copies(
        ceph: CephDriver, ceph_lab: ThrowawayCeph, tools: Any, pool_name: str) -> None:
    """A pool keeping one copy per OSD cannot lose an OSD: refused before anything changes."""
    ceph.pool_create(pool_name, 8, replicas=len(ceph_lab.osd_ids))
    ceph_lab.wait_healthy(30)
    victim = ceph_lab.osd_ids[-1]
    stopped: list[int] = []
    with pytest.raises(Conflict, match=f"fewer than the copies kept by pool.*{pool_name}"):
        ceph.remove_osd_safely(victim, stopped.append, progress_timeout=10)
    assert stopped == []
    assert _tree_osd(tools, victim)["reweight"] == 1  # still in
    with pytest.raises(NotFound):
        ceph.remove_osd_safely(999, stopped.append)


def test_removal_refused_while_recovery_is_blocked(ceph: CephDriver,
                                                   ceph_lab: ThrowawayCeph) -> None:
    try:
        ceph.osd_set("norebalance")
        with pytest.raises(Conflict, match="norebalance"):
            ceph.remove_osd_safely(ceph_lab.osd_ids[0], lambda osd: None)
    finally:
        ceph.osd_unset("norebalance")


def test_add_osd_then_remove_another_keeps_data(
        ceph: CephDriver, ceph_lab: ThrowawayCeph, tools: Any, pool_name: str,
        tmp_path: Path) -> None:
    before = ceph_lab.osd_ids
    added = ceph_lab.add_memstore_osd()
    assert added not in before
    assert _tree_osd(tools, added)["status"] == "up"

    ceph.pool_create(pool_name, 16)
    data = os.urandom(16 << 20)
    source = tmp_path / "disk.img"
    source.write_bytes(data)
    # 1 MiB objects: 16 objects spread over the pool's PGs and so over every OSD
    tools.run("rbd", "import", "--no-progress", "--object-size", "1M", str(source),
              f"{pool_name}/disk")
    checksum = hashlib.sha256(data).hexdigest()

    victim = _osd_holding_objects(tools, pool_name, [o for o in before])
    progress: list[str] = []
    report = ceph.remove_osd_safely(victim, ceph_lab.stop_osd, progress_timeout=60,
                                    on_progress=progress.append)

    assert report.osd_id == victim and report.pgs_moved > 0
    assert victim not in ceph_lab.osd_ids
    assert _tree_osd(tools, victim) == {}
    assert victim not in tools.json("ceph", "osd", "ls")
    assert tools.run("ceph", "auth", "get", f"osd.{victim}", check=False).returncode != 0
    exported = tools.run("rbd", "export", "--no-progress", f"{pool_name}/disk", "-",
                         stdout_bytes=True).stdout
    assert hashlib.sha256(exported).hexdigest() == checksum
    ceph_lab.wait_healthy(30)
    unfound = [p.num_objects_unfound for p in ceph.pool_stats()]
    assert not any(unfound)
    assert any("marking out" in line for line in progress), progress


def _osd_holding_objects(tools: Any, pool: str, candidates: list[int]) -> int:
    """One of `candidates` that holds objects of `pool` (PG stats lag the writes: poll)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for osd_id in candidates:
            doc = tools.json("ceph", "pg", "ls-by-pool", pool)
            pgs = doc.get("pg_stats", []) if isinstance(doc, dict) else doc  # none: absent
            objects = sum(pg["stat_sum"]["num_objects"] for pg in pgs if osd_id in pg["acting"])
            if objects:
                return osd_id
        time.sleep(0.5)
    raise AssertionError(f"none of {candidates} holds objects of {pool}")


def test_taken_mon_port_is_refused_clearly(ceph_lab: ThrowawayCeph, tmp_path: Path) -> None:
    assert ceph_lab.ports is not None
    other = ThrowawayCeph(tmp_path / "other", mon_port=ceph_lab.ports.mon_v2)
    with pytest.raises(CephLabError, match=f"port {ceph_lab.ports.mon_v2} .* in use"):
        other.start()
    assert not (tmp_path / "other" / "ceph-lab.json").exists()
