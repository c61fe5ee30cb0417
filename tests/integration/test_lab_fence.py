"""The lab fence on real processes: "power off" kills the node's daemon, "power on" starts the
same command line again, in a mount namespace of its own when the node had one (a Ceph lab
node's /etc/ceph and /var/lib/ceph)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pvcd.drivers.fence import FenceTarget, LabFence
from pvcd.drivers.host import pid_alive, pids_where
from tests.e2e.labclient import wait_until

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
pytestmark = pytest.mark.needs_root


def find(marker: str) -> list[int]:
    return pids_where(lambda argv: marker in argv)


def test_power_cycle_restarts_the_daemon_in_its_own_mount_namespace(tmp_path: Path) -> None:
    source, target = tmp_path / "node-etc", tmp_path / "etc"
    source.mkdir()
    target.mkdir()
    (source / "ceph.conf").write_text("the node's own\n")
    marker = f"fake-node-daemon-{uuid.uuid4().hex[:8]}"
    cmdline = [sys.executable, "-c", "import time; time.sleep(120)", marker]
    first = subprocess.Popen(cmdline)
    try:
        params = {"pid": first.pid, "cmdline": cmdline, "cwd": str(tmp_path),
                  "log": str(tmp_path / "node.log"),
                  "env": {"PYTHONPATH": PACKAGE_PARENT, "PATH": os.environ["PATH"]},
                  "binds": [[str(source), str(target)]]}
        LabFence().fence(FenceTarget("node9", "lab", params), timeout=10)
        first.wait(timeout=5)
        assert first.returncode == -9  # powered off for real
        [again] = wait_until(lambda: find(marker), timeout=10)
        try:
            # the same command line, now seeing the node's folder at the bind target; this
            # process (the host) still sees the empty folder
            seen = Path(f"/proc/{again}/root{target}/ceph.conf")
            wait_until(seen.exists, timeout=10)
            assert seen.read_text() == "the node's own\n"
            assert list(target.iterdir()) == []
            assert os.readlink(f"/proc/{again}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        finally:
            os.kill(again, 9)
            deadline = time.monotonic() + 5
            while pid_alive(again) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        first.kill()
