"""Starting and stopping the OSD daemons of this node's devices (`drivers.ceph.osd_launcher`).

`systemd` runs `systemctl start ceph-osd@<id>` (production; Debian's ceph-osd package ships the
unit template); `process` runs a `ceph-osd -f` of ours in a session of its own with a pid file
in `drivers.ceph.osd_run_dir`, for machines without systemd (the lab). A restart of pvcd does
not stop such a process: it is found again by its pid file, and never signalled once its pid
may belong to another process.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Protocol

from pvcd.drivers.ceph.devices import run_tool, tool_env
from pvcd.drivers.host import pid_alive, process_argv, signal_pid

log = logging.getLogger(__name__)

STOP_TIMEOUT = 60.0


class OsdLauncher(Protocol):
    def start(self, osd_id: int) -> None: ...

    def stop(self, osd_id: int) -> None: ...

    def running(self, osd_id: int) -> bool: ...


class SystemdOsdLauncher:
    """`ceph-osd@<id>` units (Debian's ceph-osd package ships the template)."""

    def start(self, osd_id: int) -> None:
        run_tool(["systemctl", "start", f"ceph-osd@{osd_id}"])

    def stop(self, osd_id: int) -> None:
        run_tool(["systemctl", "stop", f"ceph-osd@{osd_id}"], timeout=STOP_TIMEOUT + 30)

    def running(self, osd_id: int) -> bool:
        result = run_tool(["systemctl", "is-active", "--quiet", f"ceph-osd@{osd_id}"],
                          accept_codes=(0, 1, 3, 4))
        return result.returncode == 0


class ProcessOsdLauncher:
    """`ceph-osd -f` processes of ours, for machines without systemd. Each runs in its own
    session (a restart of pvcd does not stop it) and is found again by its pid file in
    `run_dir`; the daemon logs to Ceph's log folder as under systemd."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, osd_id: int) -> None:
        if self.running(osd_id):
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / f"osd.{osd_id}.out", "ab") as out:
            process = subprocess.Popen(
                ["ceph-osd", "-f", "--cluster", "ceph", "--id", str(osd_id),
                 "--setuser", "ceph", "--setgroup", "ceph"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=tool_env())
        self._children[osd_id] = process
        self._pid_file(osd_id).write_text(f"{process.pid}\n")
        log.info("event=osd-process-started osd=%d pid=%d", osd_id, process.pid)

    def stop(self, osd_id: int) -> None:
        pid = self._pid(osd_id)
        if pid and self._alive(osd_id, pid):  # never signal a pid reused by another process
            signal_pid(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while self._alive(osd_id, pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._alive(osd_id, pid):  # bluestore is crash-safe: a kill loses nothing
                signal_pid(pid, signal.SIGKILL)
                log.warning("event=osd-process-killed osd=%d pid=%d", osd_id, pid)
        self._pid_file(osd_id).unlink(missing_ok=True)

    def running(self, osd_id: int) -> bool:
        pid = self._pid(osd_id)
        return bool(pid) and self._alive(osd_id, pid)

    def pids(self) -> dict[int, int]:
        """The OSDs (id -> pid) whose processes run now, by their pid files."""
        found = {}
        for path in self.run_dir.glob("osd.*.pid") if self.run_dir.is_dir() else []:
            osd_id = int(path.name.split(".")[1])
            if self.running(osd_id):
                found[osd_id] = self._pid(osd_id)
        return found

    def _pid_file(self, osd_id: int) -> Path:
        return self.run_dir / f"osd.{osd_id}.pid"

    def _pid(self, osd_id: int) -> int:
        try:
            return int(self._pid_file(osd_id).read_text().strip())
        except (OSError, ValueError):
            return 0

    def _alive(self, osd_id: int, pid: int) -> bool:
        child = self._children.get(osd_id)
        if child is not None and child.pid == pid:
            if child.poll() is not None:
                del self._children[osd_id]
                return False
            return True
        if not pid_alive(pid):
            return False
        argv = process_argv(pid) or [""]  # the pid may belong to another process by now
        return "ceph-osd" in argv[0] and str(osd_id) in argv


def make_launcher(kind: str, run_dir: str) -> OsdLauncher:
    if kind == "systemd":
        return SystemdOsdLauncher()
    return ProcessOsdLauncher(run_dir)

