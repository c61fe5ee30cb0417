"""Volume clone, snapshot rename and rollback, and a grow's room check, on a real throwaway
Ceph (extensions.md §2.2-§2.4): the primary's executor runs the requests; the bytes are written
and read back with Ceph's own `rbd` (import, bench, export), so a clone and a rollback are
judged by what the volumes hold. (The API's refusals: tests/fast/test_volume_api.py.)"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from pvcd.controllers.storage.primary import PrimaryStorage
from pvcd.lab.ceph import ThrowawayCeph
from tests.integration.ceph.conftest import CephTools, ceph_lab, pool_name, tools
from tests.integration.test_storage_controller import primary, run

__all__ = ["ceph_lab", "pool_name", "primary", "tools"]  # fixtures

pytestmark = [pytest.mark.slow, pytest.mark.ceph]

MIB = 1 << 20


def export(tools: CephTools, pool: str, volume: str, snapshot: str | None = None) -> bytes:
    spec = f"{pool}/{volume}" + (f"@{snapshot}" if snapshot else "")
    return bytes(tools.run("rbd", "export", "--no-progress", spec, "-",
                           stdout_bytes=True).stdout)


@pytest.fixture
def source(primary: PrimaryStorage, tools: CephTools, pool_name: str,
           tmp_path: os.PathLike[str]) -> Iterator[bytes]:
    """Pool `pool_name` with volume `src` (made by a request) holding known bytes: imported
    into a scratch volume, then written into `src` as a diff (rbd export-diff, import-diff)."""
    assert run(primary, "pool-add", pool=pool_name, pgs=8).state == "done"
    content = os.urandom(MIB) + b"pvcd" * (MIB // 4)  # 2 MiB
    assert run(primary, "volume-add", pool=pool_name, volume="src",
               size=len(content)).state == "done"
    image, diff = f"{tmp_path}/src.raw", f"{tmp_path}/src.diff"
    with open(image, "wb") as handle:
        handle.write(content)
    tools.run("rbd", "import", "--no-progress", image, f"{pool_name}/scratch")
    tools.run("rbd", "export-diff", "--no-progress", f"{pool_name}/scratch", diff)
    tools.run("rbd", "import-diff", "--no-progress", diff, f"{pool_name}/src")
    tools.run("rbd", "rm", "--no-progress", f"{pool_name}/scratch")
    assert export(tools, pool_name, "src") == content
    yield content


def overwrite(tools: CephTools, pool: str, volume: str) -> None:
    """Change the volume's first 64 KiB behind pvcd's back (as a guest would)."""
    tools.run("rbd", "bench", "--io-type", "write", "--io-size", "4K", "--io-total", "64K",
              "--io-pattern", "seq", f"{pool}/{volume}")


def test_clones_copy_the_volume_and_the_snapshot_and_a_rollback_restores_it(
        primary: PrimaryStorage, tools: CephTools, pool_name: str, source: bytes) -> None:
    assert run(primary, "snapshot-add", pool=pool_name, volume="src",
               snapshot="s").state == "done"
    overwrite(tools, pool_name, "src")
    now = export(tools, pool_name, "src")
    assert now != source and len(now) == len(source)

    copy = run(primary, "volume-clone", pool=pool_name, volume="src", new_volume="c1")
    assert copy.state == "done", copy.message
    assert export(tools, pool_name, "c1") == now
    at_snapshot = run(primary, "volume-clone", pool=pool_name, volume="src", new_volume="c2",
                      snapshot="s")
    assert at_snapshot.state == "done", at_snapshot.message
    assert export(tools, pool_name, "c2") == source
    assert tools.json("rbd", "info", f"{pool_name}/c2").get("parent") is None  # independent
    mirrored = primary.view.cache.get(primary.view.paths.storage_volume(pool_name, "c2"))
    assert mirrored["stats"]["size"] == len(source)
    taken = run(primary, "volume-clone", pool=pool_name, volume="src", new_volume="c1")
    assert (taken.state, taken.error) == ("failed", "Conflict")
    assert export(tools, pool_name, "c1") == now  # the existing volume is left alone

    rolled = run(primary, "snapshot-rollback", pool=pool_name, volume="src", snapshot="s")
    assert rolled.state == "done", rolled.message
    assert export(tools, pool_name, "src") == source


def test_a_snapshot_rename_keeps_its_contents(primary: PrimaryStorage, tools: CephTools,
                                              pool_name: str, source: bytes) -> None:
    assert run(primary, "snapshot-add", pool=pool_name, volume="src",
               snapshot="s").state == "done"
    overwrite(tools, pool_name, "src")
    renamed = run(primary, "snapshot-rename", pool=pool_name, volume="src", snapshot="s",
                  new_name="golden")
    assert renamed.state == "done", renamed.message
    names = [s["name"] for s in tools.json("rbd", "snap", "ls", f"{pool_name}/src")]
    assert names == ["golden"]
    assert export(tools, pool_name, "src", "golden") == source
    paths = primary.view.paths
    assert primary.view.cache.exists(paths.storage_snapshot(pool_name, "src", "golden"))
    assert not primary.view.cache.exists(paths.storage_snapshot(pool_name, "src", "s"))


def test_a_rollback_of_an_open_volume_is_refused_and_names_who_has_it(
        primary: PrimaryStorage, tools: CephTools, ceph_lab: ThrowawayCeph, pool_name: str,
        source: bytes) -> None:
    assert run(primary, "snapshot-add", pool=pool_name, volume="src",
               snapshot="s").state == "done"
    overwrite(tools, pool_name, "src")
    changed = export(tools, pool_name, "src")
    watcher = subprocess.Popen(["rbd", *ceph_lab.cluster_args, "watch", f"{pool_name}/src"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not tools.json("rbd", "status", f"{pool_name}/src").get("watchers"):
            assert time.monotonic() < deadline, "rbd watch never showed as a watcher"
            time.sleep(0.1)
        refused = run(primary, "snapshot-rollback", pool=pool_name, volume="src", snapshot="s")
        assert (refused.state, refused.error) == ("failed", "Conflict")
        assert "is open (client." in refused.message
        assert export(tools, pool_name, "src") == changed
    finally:
        watcher.communicate(b"\n", timeout=10)  # `rbd watch` ends (and unwatches) on enter


def test_a_grow_reads_the_pools_room_from_ceph(primary: PrimaryStorage, tools: CephTools,
                                               pool_name: str, source: bytes) -> None:
    space = primary.ceph.pool_space(pool_name)
    assert space.free > 0 and space.pool == pool_name
    grown = run(primary, "volume-modify", pool=pool_name, volume="src", size=4 * MIB)
    assert grown.state == "done", grown.message
    too_big = run(primary, "volume-modify", pool=pool_name, volume="src",
                  size=space.capacity + 4 * MIB, force=True)
    assert (too_big.state, too_big.error) == ("failed", "InvalidValue")
    assert "bytes free" in too_big.message
    assert int(tools.json("rbd", "info", f"{pool_name}/src")["size"]) == 4 * MIB
