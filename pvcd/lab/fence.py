"""The lab's fence drivers, given to lab node daemons by `pvcd.lab.node` (never by `pvcd run`).

- `LabFence` ("lab"): a lab node is a process, so "power" is its daemon's process (with the
  test:/// libvirt its guests live inside it) and, with network namespaces, everything in its
  namespace: SIGKILL, confirm the process is gone, then start it again as the lab first did
  ("power on"). What to kill and how to start it comes from the node's launch record in the
  lab's folder (`pvcd.lab.launch`), not from anything the node published in ZooKeeper. While
  the lab is going down (`pvcd lab down`'s marker) the node is powered off and left off.
- `FailingFence` ("lab-fail"): always fails, to exercise the failed-fence path.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from pvcd.domain.errors import BackendError
from pvcd.drivers.fence import FenceDriver, FenceTarget
from pvcd.drivers.host import pid_alive, process_argv
from pvcd.lab.launch import going_down, launch, load_launch, power_lock

log = logging.getLogger(__name__)


class LabFence:
    def __init__(self, nodes_dir: Path | str) -> None:
        self.nodes_dir = Path(nodes_dir)  # the lab's `nodes/`: one folder per node

    def fence(self, target: FenceTarget, timeout: float) -> None:
        power_cycle(self.nodes_dir, target.node, timeout, "fence")


def power_cycle(nodes_dir: Path, node: str, timeout: float, why: str) -> None:
    """Power a lab node off (its daemon's process, and its namespace's), confirm it is off,
    and power it on again (unless the lab is going down); BackendError if unsure."""
    folder = nodes_dir / node
    with power_lock(folder):  # not while the lab restarts it (pvcd.lab.launch)
        _power_cycle(folder, node, timeout, why, nodes_dir)


def _power_cycle(folder: Path, node: str, timeout: float, why: str, nodes_dir: Path) -> None:
    try:
        record = load_launch(folder)
    except (OSError, ValueError, TypeError) as exc:
        raise BackendError(f"node {node}: no launch record in {folder}: {exc}") from exc
    pid = record.pid
    if pid > 0 and pid_alive(pid):
        if process_argv(pid) != record.command:
            raise BackendError(f"node {node}: pid {pid} is another process now; "
                               "refusing to kill it")
        os.kill(pid, signal.SIGCONT)  # a stopped process dies only when it runs
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pid > 0 and pid_alive(pid):
        if time.monotonic() > deadline:
            raise BackendError(f"node {node}: pid {pid} still alive after SIGKILL")
        time.sleep(0.01)
    if record.netns:  # the node's network goes down with it: its processes, floating IPs
        _power_off_netns(record.netns, record.floating)
    log.info("event=%s-power-off node=%s pid=%d confirmed=true", why, node, pid)
    if going_down(nodes_dir):  # `pvcd lab down`: the node stays off
        log.info("event=%s-power-on-skipped node=%s reason=lab-going-down", why, node)
        return
    new_pid = launch(folder, record)  # power on: the node boots, its daemon starts again
    log.info("event=%s-power-on node=%s pid=%d", why, node, new_pid)


class FailingFence:
    def fence(self, target: FenceTarget, timeout: float) -> None:
        raise BackendError(f"node {target.node}: the lab-fail fence driver always fails")


def lab_fence_drivers(nodes_dir: Path | str) -> dict[str, FenceDriver]:
    return {"lab": LabFence(nodes_dir), "lab-fail": FailingFence()}


def _power_off_netns(netns: str, floating: list[list[str]]) -> None:
    try:
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                              timeout=10, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        for device, cidr in floating:
            subprocess.run(["ip", "-n", netns, "addr", "del", cidr, "dev", device],
                           capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"powering off the network namespace {netns} failed: {exc}") from exc
