"""One throwaway Ceph cluster (1 mon, 1 mgr, 2 memstore OSDs) for the whole test session.

Starting it takes ≈ 5 s, so every test shares it: each test works in pools of its own
(`pool_name`), deleted afterwards, and a test that changes the cluster itself (OSD out/in, flags,
OSD removal) puts it back to HEALTH_OK before it ends. OSD ids are not fixed: the removal test
adds one and removes another, so read `ceph_lab.osd_ids`.

The `tools` fixture runs `ceph`, `rbd` and `rados` directly, so tests check what the driver did
with Ceph's own tools rather than with the driver.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from pvcd.drivers.ceph.driver import CephDriver
from pvcd.lab.ceph import ThrowawayCeph

TIMEOUT = 60


class CephTools:
    """Ceph's command-line tools pointed at the test cluster (argument lists, timeouts)."""

    def __init__(self, lab: ThrowawayCeph) -> None:
        self.lab = lab

    def run(self, tool: str, *args: str, check: bool = True,
            stdout_bytes: bool = False) -> subprocess.CompletedProcess[Any]:
        argv = [tool, *self.lab.cluster_args, *args]
        result = subprocess.run(argv, capture_output=True, text=not stdout_bytes,
                                timeout=TIMEOUT, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): "
                                 f"{result.stderr!r}")
        return result

    def json(self, tool: str, *args: str) -> Any:
        return json.loads(self.run(tool, *args, "--format", "json").stdout)

    def pools(self) -> list[str]:
        return list(self.json("ceph", "osd", "pool", "ls"))

    def delete_pool(self, name: str) -> None:
        self.run("ceph", "osd", "pool", "delete", name, name, "--yes-i-really-really-mean-it",
                 check=False)


@pytest.fixture(scope="session")
def ceph_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayCeph]:
    for tool in ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "rbd", "rados", "osdmaptool"):
        assert shutil.which(tool), (f"{tool} is missing: apt-get install "
                                    "--no-install-recommends ceph-mon ceph-mgr ceph-osd "
                                    "ceph-common")
    lab = ThrowawayCeph(tmp_path_factory.mktemp("ceph"), osds=2)
    lab.start(timeout=90)
    yield lab
    lab.stop()


@pytest.fixture(scope="session")
def ceph(ceph_lab: ThrowawayCeph) -> CephDriver:
    return CephDriver(ceph_lab.conf_path, ceph_lab.keyring_path, timeout=30)


@pytest.fixture(scope="session")
def tools(ceph_lab: ThrowawayCeph) -> CephTools:
    return CephTools(ceph_lab)


@pytest.fixture
def pool_name(tools: CephTools) -> Iterator[str]:
    """A pool name no other test uses; the pool is deleted afterwards if it exists."""
    name = f"t-{secrets.token_hex(4)}"
    yield name
    if name in tools.pools():
        tools.delete_pool(name)
