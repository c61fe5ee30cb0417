"""This node's block devices for OSDs: whether a device may take one, wiping it, and running the
host tools (`blkid`, `wipefs`, `ceph-volume`, `systemctl`) that OSDs on devices need.

A device takes a new OSD only if it is a block device of at least 5 GiB, writable, with no
partitions, no holders (LVM, RAID, dm), not mounted and without a filesystem or label signature
(`blkid -p`). Ceph would happily write over a disk that holds data; we refuse with the reason,
and the operator wipes it on purpose (`wipefs -a`) if that is what they want.

The tools read the machine's standard Ceph configuration (`/etc/ceph/ceph.conf`); `CEPH_CONF`
and `CEPH_ARGS` are removed from their environment so that a client configuration meant for
pvcd's own `ceph` calls never leaks into a daemon. Every command is an argv list with a timeout.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pvcd.domain.errors import BackendError

MIN_DEVICE_BYTES = 5 << 30  # what `ceph-volume inventory` requires of an available device
WIPE_BYTES = 10 << 20       # as `ceph-volume lvm zap`: the labels live at the start
TOOL_TIMEOUT = 60.0
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

