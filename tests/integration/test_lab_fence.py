"""The lab fence on real processes: "power off" kills the node's daemon, "power on" starts the
same command line again, in a mount namespace of its own when the node had one (a Ceph lab
node's /etc/ceph and /var/lib/ceph). What it kills and starts comes from the node's launch
record in the lab's folder, nothing from the node's ZooKeeper record."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pvcd.domain.errors import BackendError
from pvcd.drivers.fence import FenceTarget
from pvcd.drivers.host import pid_alive, pids_where
from pvcd.lab.fence import LabFence
from pvcd.lab.launch import NodeLaunch, launch, load_launch, mark_going_down, save_launch
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
    folder = tmp_path / "nodes" / "node9"
    folder.mkdir(parents=True)
    try:
        save_launch(folder, NodeLaunch(
            node="node9", command=cmdline, cwd=str(tmp_path), log=str(tmp_path / "node.log"),
            env={"PYTHONPATH": PACKAGE_PARENT, "PATH": os.environ["PATH"]},
            binds=[[str(source), str(target)]], pid=first.pid))
        # the target publishes nothing but the driver's name
        LabFence(tmp_path / "nodes").fence(FenceTarget("node9", "lab"), timeout=10)
        first.wait(timeout=5)
        assert first.returncode == -9  # powered off for real
        [again] = wait_until(lambda: find(marker), timeout=10)
        assert load_launch(folder).pid == again  # the lab finds the node's new daemon
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


def test_a_pid_reused_by_another_process_is_not_killed(tmp_path: Path) -> None:
    folder = tmp_path / "nodes" / "node9"
    folder.mkdir(parents=True)
    record = NodeLaunch(node="node9", command=[sys.executable, "-c", "import time; "
                                               "time.sleep(120)", "the-node"],
                        cwd=str(tmp_path), log=str(tmp_path / "node.log"),
                        env={"PATH": os.environ["PATH"]})
    launch(folder, record)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "other"])
    try:
        os.kill(record.pid, 9)
        os.waitpid(record.pid, 0)
        save_launch(folder, NodeLaunch(**{**record.__dict__, "pid": other.pid}))
        with pytest.raises(BackendError, match="another process"):
            LabFence(tmp_path / "nodes").fence(FenceTarget("node9", "lab"), timeout=5)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_lab_going_down_keeps_the_fenced_node_off(tmp_path: Path) -> None:
    marker = f"fake-node-daemon-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "nodes" / "node9"
    folder.mkdir(parents=True)
    record = NodeLaunch(node="node9", command=[sys.executable, "-c", "import time; "
                                               "time.sleep(120)", marker],
                        cwd=str(tmp_path), log=str(tmp_path / "node.log"),
                        env={"PATH": os.environ["PATH"]})
    first = launch(folder, record)
    try:
        mark_going_down(tmp_path / "nodes")  # `pvcd lab down` has begun
        LabFence(tmp_path / "nodes").fence(FenceTarget("node9", "lab"), timeout=10)
        os.waitpid(first, 0)
        assert not pid_alive(first)
        assert find(marker) == []  # powered off, and left off
        assert load_launch(folder).pid == first
    finally:
        for pid in [first, *find(marker)]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def test_a_restart_racing_a_fence_leaves_one_daemon(tmp_path: Path) -> None:
    """The chaos test's "two daemons": the lab restarts a killed node's daemon (as systemd)
    while a fence power-cycles the node. Whatever their order, one daemon runs: a start finds
    the fence's daemon running and starts none, a fence kills what a start launched."""
    from concurrent.futures import ThreadPoolExecutor

    from pvcd.lab.launch import start_unless_running

    marker = f"fake-node-daemon-{uuid.uuid4().hex[:8]}"
    cmdline = [sys.executable, "-c", "import time; time.sleep(120)", marker]
    folder = tmp_path / "nodes" / "node9"
    folder.mkdir(parents=True)
    record = NodeLaunch(node="node9", command=cmdline, cwd=str(tmp_path),
                        log=str(tmp_path / "node.log"),
                        env={"PYTHONPATH": PACKAGE_PARENT, "PATH": os.environ["PATH"]})
    try:
        first = start_unless_running(folder, record)
        assert start_unless_running(folder, record) == first  # running: no second one
        for _ in range(5):
            with ThreadPoolExecutor(2) as pool:
                fenced = pool.submit(LabFence(tmp_path / "nodes").fence,
                                     FenceTarget("node9", "lab"), 10)
                started = pool.submit(start_unless_running, folder, record)
                fenced.result()
                started.result()
            [running] = wait_until(lambda: [p for p in find(marker) if pid_alive(p)],
                                   timeout=10)
            assert load_launch(folder).pid == running
    finally:
        for pid in find(marker):
            os.kill(pid, 9)
