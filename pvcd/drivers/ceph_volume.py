"""OSDs on this node's block devices: `ceph-volume raw` (bluestore) and the OSD daemons.

What an OSD add on a node does (docs/storage.md, "OSDs on block devices"):

  1. check the device here, where it is: a block device, at least 5 GiB, writable, with no
     partitions, no holders (LVM, RAID, dm), not mounted and without a filesystem or label
     signature (`blkid -p`). Ceph would happily write over a disk that holds data; we refuse with
     the reason, and the operator wipes it on purpose (`wipefs -a`) if that is what they want.
  2. `ceph-volume raw prepare --bluestore --data DEV`: registers a new OSD id with the cluster
     (as client.bootstrap-osd, `/var/lib/ceph/bootstrap-osd/ceph.keyring`) and makes the
     bluestore on the device. LVM is not used: device-mapper is not available everywhere (not on
     this project's CI machines), and a raw OSD is what Rook deploys too.
  3. the OSD's CRUSH location (`root=default host=<node>`) and weight go into the cluster's
     configuration database before it starts, so it joins under its node at once, never under
     the machine's host name first.
  4. `ceph-volume raw activate --device DEV --no-systemd` (a tmpfs at
     `/var/lib/ceph/osd/ceph-<id>` primed from the bluestore label), then the launcher starts
     the daemon: `systemctl start ceph-osd@<id>` (production) or a `ceph-osd -f` process of
     ours (`process`, for machines without systemd: the lab).

A raw OSD's tmpfs does not survive a reboot and ceph-volume has no boot-time unit for raw OSDs:
`ensure()` (the node's OSD controller, at start and on resync) activates and starts every OSD
this node owns whose daemon is not running. Removal (`stop` then, after the purge, `release`)
stops the daemon, unmounts its folder, clears its configuration and wipes the device's labels
so that it can be used again.

The tools read the machine's standard Ceph configuration (`/etc/ceph/ceph.conf`); `CEPH_CONF`
and `CEPH_ARGS` are removed from their environment so that a client configuration meant for
pvcd's own `ceph` calls never leaks into a daemon. Every command is an argv list with a timeout;
the device path was validated by the API (`check_device`) and is checked again here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pvcd.domain.errors import BackendError, InvalidValue
from pvcd.drivers.host import pid_alive, process_argv, signal_pid

log = logging.getLogger(__name__)

MIN_DEVICE_BYTES = 5 << 30  # what `ceph-volume inventory` requires of an available device
WIPE_BYTES = 10 << 20       # as `ceph-volume lvm zap`: the labels live at the start
OSD_DATA = "/var/lib/ceph/osd/ceph-{id}"
PREPARE_TIMEOUT = 300.0
TOOL_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
_UNSET_ENV = ("CEPH_CONF", "CEPH_ARGS")


def tool_env() -> dict[str, str]:
    """Our environment without the variables that would point the tools at another config."""
    return {key: value for key, value in os.environ.items() if key not in _UNSET_ENV}


def run_tool(argv: Sequence[str], timeout: float = TOOL_TIMEOUT,
             accept_codes: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run a host tool (no shell); BackendError with its stderr if it fails or times out."""
    command = " ".join(argv)
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                check=False, stdin=subprocess.DEVNULL, env=tool_env())
    except subprocess.TimeoutExpired as exc:
        raise BackendError(f"`{command}` timed out after {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise BackendError(f"{argv[0]} is not installed") from exc
    if result.returncode not in accept_codes:
        detail = (result.stderr.strip() or result.stdout.strip())[-1500:]
        raise BackendError(f"`{command}` failed ({result.returncode}): {detail}")
    return result


# -- the device -------------------------------------------------------------------------------

def device_problems(device: str, sys_block: str = "/sys/class/block",
                    mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Why `device` cannot take a new OSD ([] if it can)."""
    try:
        info = os.stat(device)
    except FileNotFoundError:
        return [f"{device} does not exist"]
    except OSError as exc:
        return [f"{device} cannot be read: {exc.strerror}"]
    if not stat.S_ISBLK(info.st_mode):
        return [f"{device} is not a block device"]
    major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
    sysfs = Path(sys_block) / Path(os.path.realpath(device)).name
    if not sysfs.exists():  # by number: /dev/disk/by-id/... and friends
        sysfs = Path(os.path.realpath(f"/sys/dev/block/{major}:{minor}"))
    problems = []
    if (sysfs / "partition").exists():
        problems.append(f"{device} is a partition: give the whole disk")
    size = _read_int(sysfs / "size") * 512
    if size < MIN_DEVICE_BYTES:
        problems.append(f"{device} has {size / (1 << 30):.1f} GiB, an OSD needs at least "
                        f"{MIN_DEVICE_BYTES >> 30} GiB")
    if _read_int(sysfs / "ro"):
        problems.append(f"{device} is read-only")
    partitions = sorted(p.name for p in sysfs.iterdir() if (p / "partition").exists()) \
        if sysfs.is_dir() else []
    if partitions:
        problems.append(f"{device} has partitions ({', '.join(partitions)})")
    holders = sorted(p.name for p in (sysfs / "holders").iterdir()) \
        if (sysfs / "holders").is_dir() else []
    if holders:
        problems.append(f"{device} is in use by {', '.join(holders)} (LVM, RAID or dm)")
    if _mounted(major, minor, mountinfo):
        problems.append(f"{device} is mounted")
    signature = _signature(device)
    if signature:
        problems.append(f"{device} holds {signature}; wipe it first (`wipefs -a {device}`) if "
                        "its data is not needed")
    return problems


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _mounted(major: int, minor: int, mountinfo: str) -> bool:
    wanted = f"{major}:{minor}"
    with open(mountinfo, encoding="utf-8", errors="replace") as handle:
        return any(fields[2:3] == [wanted] for fields in map(str.split, handle))


def _signature(device: str) -> str:
    """What `blkid -p` finds on the device ("" for nothing): a filesystem, RAID or LVM label,
    a partition table, a bluestore label."""
    result = run_tool(["blkid", "-p", "-o", "export", device], accept_codes=(0, 2))
    if result.returncode == 2:
        return ""
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    kind = fields.get("TYPE") or fields.get("PTTYPE")
    return f"a signature ({kind})" if kind else "a signature"


def wipe(device: str) -> None:
    """Remove the labels (wipefs) and zero the first 10 MiB, as `ceph-volume lvm zap` does."""
    run_tool(["wipefs", "--all", device])
    fd = os.open(device, os.O_WRONLY)
    try:
        zeros = bytes(1 << 20)
        for _ in range(WIPE_BYTES // len(zeros)):
            os.write(fd, zeros)
        os.fsync(fd)
    finally:
        os.close(fd)


# -- starting and stopping OSD daemons ---------------------------------------------------------

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


# -- the provisioner --------------------------------------------------------------------------

class DeviceOsdProvisioner:
    """Creates, starts, stops and releases the bluestore OSDs on this node's block devices."""

    def __init__(self, node: str, launcher: OsdLauncher,
                 configure: Callable[[int, dict[str, str]], None],
                 unconfigure: Callable[[int], None],
                 purge: Callable[[int], None]) -> None:
        """`configure(osd, {option: value})` / `unconfigure(osd)` set and clear an OSD's
        options in the cluster's configuration database; `purge(osd)` removes an OSD that
        never became usable from the map (all as client.admin, through the node's driver)."""
        self.node = node
        self.launcher = launcher
        self._configure = configure
        self._unconfigure = unconfigure
        self._purge = purge

    def create(self, device: str, weight: float = 1.0) -> int:
        problems = device_problems(device)
        if problems:
            raise InvalidValue(f"cannot create an OSD on node {self.node}: "
                               + "; ".join(problems))
        started = time.monotonic()
        run_tool(["ceph-volume", "raw", "prepare", "--bluestore", "--data", device],
                 timeout=PREPARE_TIMEOUT)
        osd_id = self._osd_on(device)
        log.info("event=osd-prepared node=%s osd=%d device=%s seconds=%.1f", self.node, osd_id,
                 device, time.monotonic() - started)
        try:
            self._configure(osd_id, {"crush_location": f"root=default host={self.node}",
                                     "osd_crush_initial_weight": f"{weight:g}"})
            self._activate(device)
            self.launcher.start(osd_id)
        except BackendError as exc:  # nothing uses it yet: undo, so the device can be retried
            log.warning("event=osd-create-failed node=%s osd=%d: %s", self.node, osd_id, exc)
            self._undo(osd_id, device)
            raise BackendError(f"osd.{osd_id} on {device} could not be started ({exc}); it "
                               "was removed again and the device wiped") from exc
        return osd_id

    def ensure(self, osd_id: int) -> bool:
        """Make sure the daemon of this node's `osd_id` runs (activating its device first if
        its folder is not there, as after a reboot); True if it had to be started."""
        if self.launcher.running(osd_id):
            return False
        if not (Path(OSD_DATA.format(id=osd_id)) / "whoami").exists():
            device = self.device_of(osd_id)
            if device is None:
                raise BackendError(f"osd.{osd_id} is owned by node {self.node} but no device "
                                   "here holds it (`ceph-volume raw list`)")
            self._activate(device)
        self.launcher.start(osd_id)
        log.info("event=osd-ensured node=%s osd=%d", self.node, osd_id)
        return True

    def stop(self, osd_id: int) -> None:
        self.launcher.stop(osd_id)

    def release(self, osd_id: int) -> None:
        """After the purge: unmount its folder, clear its options, wipe its device."""
        device = self.device_of(osd_id)
        folder = OSD_DATA.format(id=osd_id)
        if os.path.ismount(folder):
            run_tool(["umount", folder])
        if os.path.isdir(folder):
            for entry in os.listdir(folder):
                os.unlink(os.path.join(folder, entry))
            os.rmdir(folder)
        self._unconfigure(osd_id)
        if device is not None:
            wipe(device)
        log.info("event=osd-released node=%s osd=%d device=%s", self.node, osd_id, device)

    def device_of(self, osd_id: int) -> str | None:
        for entry in self._raw_list().values():
            if int(entry.get("osd_id", -1)) == osd_id:
                return str(entry["device"])
        return None

    def _osd_on(self, device: str) -> int:
        for entry in self._raw_list(device).values():
            return int(entry["osd_id"])
        raise BackendError(f"`ceph-volume raw prepare` finished but {device} holds no OSD")

    def _raw_list(self, device: str | None = None) -> dict[str, Any]:
        argv = ["ceph-volume", "raw", "list", "--format", "json"]
        text = run_tool([*argv, device] if device else argv).stdout
        try:
            listing: dict[str, Any] = json.loads(text or "{}")
        except ValueError as exc:
            raise BackendError(f"`ceph-volume raw list` returned no valid JSON: "
                               f"{text[:200]!r}") from exc
        return listing

    def _activate(self, device: str) -> None:
        run_tool(["ceph-volume", "raw", "activate", "--device", device, "--no-systemd"])

    def _undo(self, osd_id: int, device: str) -> None:
        for step in (lambda: self.launcher.stop(osd_id), lambda: self._purge(osd_id),
                     lambda: self.release(osd_id), lambda: wipe(device)):
            try:
                step()
            except (BackendError, OSError) as exc:
                log.warning("event=osd-undo-step-failed osd=%d: %s", osd_id, exc)
