"""A node daemon and an unreachable ZooKeeper: it waits for it, and SIGTERM still stops it at
once (real daemon processes, a real ZooKeeper started late)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from kazoo.client import KazooClient

from pvcd.lab.zookeeper import ZooKeeperEnsemble, ZooKeeperServer, free_port
from pvcd.state.schema import Paths
from tests.integration.daemon_process import start_daemon


def stop(process: subprocess.Popen[bytes], within: float) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=within)
    assert code == 0, f"exit code {code}"
    return time.monotonic() - started


def started(folder: Path, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until the daemon says it runs (it logs `daemon-start` just before connecting)."""
    deadline = time.monotonic() + timeout
    while "event=daemon-start" not in (folder / "pvcd.log").read_text():
        assert process.poll() is None, (folder / "pvcd.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.02)


def test_sigterm_stops_a_daemon_that_never_reached_zookeeper(tmp_path: Path) -> None:
    process = start_daemon(tmp_path, free_port(), "/pvc", "lonely", session_timeout=3.0)
    try:
        started(tmp_path, process)  # imported, now retrying the connection
        assert process.poll() is None
        assert stop(process, within=5) < 1.5
    finally:
        process.kill()
    assert "daemon-stopped" in (tmp_path / "pvcd.log").read_text()


def test_the_daemon_registers_once_zookeeper_comes_up(tmp_path: Path) -> None:
    port = free_port()
    ensemble = ZooKeeperEnsemble(tmp_path / "zk", 1)
    ensemble.servers = [ZooKeeperServer(1, port, free_port(), free_port(), tmp_path / "zk" / "zk1")]
    process = start_daemon(tmp_path, port, "/late", "lonely", session_timeout=3.0)
    try:
        started(tmp_path, process)  # connection attempts fail until ZooKeeper is started
        assert process.poll() is None
        ensemble.start()
        client = KazooClient(ensemble.connect_string, timeout=5)
        client.start(timeout=10)
        try:
            alive = Paths("/late").node_alive("lonely")
            deadline = time.monotonic() + 30
            while not client.exists(alive) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.exists(alive), (tmp_path / "pvcd.log").read_text()[-2000:]
            stop(process, within=15)
            assert not client.exists(alive)  # a clean shutdown removes its liveness
        finally:
            client.stop()
            client.close()
    finally:
        process.kill()
        ensemble.stop()
