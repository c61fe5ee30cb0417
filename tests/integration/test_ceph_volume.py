"""The device checks and the OSD process launcher (`pvcd.drivers.ceph.devices`, `.launchers`),
on real loop devices and real processes (the full OSD path runs in tests/e2e/test_storage.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pvcd.drivers.ceph.devices import device_problems, wipe
from pvcd.drivers.ceph.launchers import ProcessOsdLauncher

pytestmark = pytest.mark.needs_root


def test_a_clean_large_disk_is_accepted(loop_devices: Callable[[int], str]) -> None:
    assert device_problems(loop_devices(6 << 30)) == []


def test_what_is_refused_and_why(loop_devices: Callable[[int], str], tmp_path: Path) -> None:
    assert device_problems("/dev/nosuchdisk") == ["/dev/nosuchdisk does not exist"]
    assert device_problems("/dev/null") == ["/dev/null is not a block device"]
    assert device_problems(str(tmp_path)) == [f"{tmp_path} is not a block device"]
    small = loop_devices(1 << 30)
    assert device_problems(small) == [
        f"{small} has 1.0 GiB, an OSD needs at least 5 GiB"]

    used = loop_devices(6 << 30)
    subprocess.run(["mkfs.ext4", "-q", "-F", used], check=True, capture_output=True)
    problems = device_problems(used)
    assert len(problems) == 1 and "signature (ext4)" in problems[0], problems
    assert f"wipefs -a {used}" in problems[0]

    # mounted: seen in mountinfo (a private mount namespace, so nothing leaks)
    target = tmp_path / "mnt"
    target.mkdir()
    script = ("import subprocess, sys; from pvcd.drivers.ceph.devices import device_problems;"
              f"subprocess.run(['mount', {used!r}, {str(target)!r}], check=True);"
              f"print('|'.join(device_problems({used!r})))")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                          "-c", script], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert f"{used} is mounted" in out.stdout.split("|"), out.stdout

    # wiped, it is clean again
    wipe(used)
    assert device_problems(used) == []


def test_partitions_are_refused(loop_devices: Callable[[int], str]) -> None:
    disk = loop_devices(6 << 30)
    subprocess.run(["sfdisk", "--quiet", disk], input="label: gpt\n,1GiB\n", text=True,
                   check=True, capture_output=True)
    subprocess.run(["partx", "--add", disk], check=False, capture_output=True)
    try:
        problems = device_problems(disk)
        assert any("signature (gpt)" in p for p in problems), problems
        if Path(f"{disk}p1").exists():  # the kernel shows the partition: refused as such too
            assert any("has partitions" in p for p in problems), problems
            assert any("is a partition" in p for p in device_problems(f"{disk}p1"))
    finally:  # a partition node left behind outlives the loop device (and trips ceph-volume)
        subprocess.run(["partx", "--delete", disk], check=False, capture_output=True)


def test_process_launcher_finds_its_osd_by_pid_file_and_not_a_stranger(
        tmp_path: Path) -> None:
    launcher = ProcessOsdLauncher(tmp_path)
    assert not launcher.running(7) and launcher.pids() == {}
    # a pid file that names a process that is not that OSD (pid reuse) is not "running"
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "osd.7.pid").write_text(f"{stranger.pid}\n")
        assert not launcher.running(7)
        launcher.stop(7)  # nothing of ours to stop: the stranger lives on
        time.sleep(0.3)  # (a signal sent by mistake has landed by now)
        assert stranger.poll() is None
        assert not (tmp_path / "osd.7.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()
