"""`pvcd lab down` while a lab fence restarts a node: no daemon of the lab is left running (a
real lab: ZooKeeper and node daemons; the fence runs in the test process so that it can be held
exactly in the window between its check of `down`'s marker and its start of the node).

Before, `down` looked for the lab's daemons once, at its start: a daemon a fence started after
that look ran on, talking to a ZooKeeper that was gone.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pvcd.drivers.fence import FenceTarget
from pvcd.drivers.host import pid_alive
from pvcd.lab import fence as lab_fence
from pvcd.lab.lab import Lab
from pvcd.lab.launch import NodeLaunch, going_down, node_daemons
from tests.e2e.labclient import wait_until

pytestmark = pytest.mark.needs_root


def test_down_stops_a_daemon_a_fence_starts_while_it_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = Lab(tmp_path / "lab")
    info = lab.up(nodes=2)
    configs = [node.config for node in info.nodes]
    nodes_dir = tmp_path / "lab" / "nodes"
    started: list[int] = []
    in_window = threading.Event()
    real_launch = lab_fence.launch

    def launch_once_down_began(folder: Path | str, record: NodeLaunch) -> int:
        in_window.set()  # powered off, checked for the marker, about to power on
        wait_until(lambda: going_down(nodes_dir), timeout=60)
        pid = real_launch(folder, record)
        started.append(pid)
        return pid

    # the fence's check ran before `down` left its marker; the start comes after
    monkeypatch.setattr(lab_fence, "going_down", lambda nodes: False)
    monkeypatch.setattr(lab_fence, "launch", launch_once_down_began)
    errors: list[BaseException] = []

    def fence() -> None:
        try:
            lab_fence.LabFence(nodes_dir).fence(FenceTarget("node2", "lab"), timeout=10)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    fencing = threading.Thread(target=fence)
    try:
        assert len(node_daemons(configs)) == 2
        fencing.start()
        assert in_window.wait(30)
        lab.down()
        fencing.join(30)
        assert not errors, errors
        assert started, "the fence did not start the node again"
        assert not pid_alive(started[0])
        assert node_daemons(configs) == []
        assert not (tmp_path / "lab").exists()
    finally:
        fencing.join(30)
        if lab.info is not None:
            lab.down()
