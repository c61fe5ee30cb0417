"""The throwaway Ceph's processes: its tools run to completion, its daemons stopped and reaped.

Why a module of its own: running Ceph's command-line tools with a bounded wait, and stopping the
daemons so that a memstore OSD keeps its data (SIGTERM: memstore dumps its store only on a full
shutdown, SIGKILL loses it) and nothing is left unreaped, do not depend on what the cluster's files
say (`pvcd.lab.ceph_conf`) nor on when the cluster counts as up (`pvcd.lab.ceph`, which spawns the
daemons with `die_with_parent` as their pre-exec hook). It owns `CephLabError` because every layer
of the throwaway cluster raises it, this lowest one first.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

from pvcd.drivers.host import pid_alive, signal_pid

TOOL_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


class CephLabError(RuntimeError):
    """The throwaway cluster could not be started or stopped; the message says what and why."""


@dataclass
class Daemon:
    """One daemon we started: `name` is Ceph's (`mon.a`, `mgr.x`, `osd.0`)."""

    name: str
    pid: int = 0
    log: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)


def stop_all(daemons: list[Daemon], timeout: float) -> list[str]:
    """SIGTERM every daemon (a clean shutdown), wait, SIGKILL stragglers, reap our children;
    return a line for each daemon that did not stop cleanly."""
    for daemon in daemons:
        signal_pid(daemon.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    problems = []
    for daemon in daemons:
        while _running(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = _running(daemon)
        if killed:
            signal_pid(daemon.pid, signal.SIGKILL)
            problems.append(f"{daemon.name} (pid {daemon.pid}) did not stop within "
                            f"{timeout:.0f} s and was killed (a memstore OSD lost its data); "
                            f"see {daemon.log}")
        if daemon.process is None:
            continue  # not our child (`load`ed from the state file): PID 1 reaps it
        try:
            code = daemon.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            problems.append(f"{daemon.name} (pid {daemon.pid}) could not be reaped")
            continue
        if not killed and code not in (0, -signal.SIGTERM):
            problems.append(f"{daemon.name} exited with {code} on SIGTERM; see {daemon.log}")
    return problems


def _running(daemon: Daemon) -> bool:
    if daemon.process is not None:
        return daemon.process.poll() is None
    return pid_alive(daemon.pid)


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the process that started us dies, so a
    crashed test run leaves no daemons behind."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_tool(argv: list[str], timeout: float = TOOL_TIMEOUT) -> str:
    """Run a Ceph tool to completion; its stdout, or CephLabError with its stderr."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise CephLabError(f"`{' '.join(argv)}` timed out after {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise CephLabError(f"{argv[0]} is not installed") from exc
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise CephLabError(f"`{' '.join(argv)}` failed ({result.returncode}): {detail}")
    return result.stdout


def require_tools() -> None:
    """Every program a throwaway cluster runs is installed, or CephLabError says which."""
    missing = [tool for tool in ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "monmaptool",
                                 "ceph-authtool") if shutil.which(tool) is None]
    if missing:
        raise CephLabError(f"missing {', '.join(missing)}: apt-get install --no-install-recommends "
                           "ceph-mon ceph-mgr ceph-osd ceph-common")
