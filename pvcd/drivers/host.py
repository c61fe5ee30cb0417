"""Facts and live statistics of the host a node daemon runs on (procfs, uname), and its
processes (liveness, signals, command lines)."""

from __future__ import annotations

import ctypes
import os
import platform
import socket
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class HostStats:
    cpu_count: int
    kernel: str
    os: str
    arch: str
    load: float
    memory_total: int  # MiB
    memory_used: int
    memory_free: int


class HostDriver:
    """Reads the host's statistics; `proc` can point elsewhere for tests."""

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc

    def stats(self) -> HostStats:
        meminfo = self._meminfo()
        total = meminfo.get("MemTotal", 0) // 1024
        available = meminfo.get("MemAvailable", meminfo.get("MemFree", 0)) // 1024
        return HostStats(
            cpu_count=os.cpu_count() or 1,
            kernel=platform.release(),
            os=_os_name(),
            arch=platform.machine(),
            load=round(os.getloadavg()[0], 2),
            memory_total=total,
            memory_used=max(0, total - available),
            memory_free=available,
        )

    def _meminfo(self) -> dict[str, int]:
        values: dict[str, int] = {}
        with open(os.path.join(self._proc, "meminfo")) as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[key] = int(parts[0])  # KiB
        return values

    def boot_id(self) -> str:
        try:
            with open(os.path.join(self._proc, "sys/kernel/random/boot_id")) as handle:
                return handle.read().strip()
        except OSError:
            return ""


def _os_name() -> str:
    try:
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system().lower()


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def is_local_address(host: str) -> bool:
    """True when `host` (a name or an address) is one of this machine's addresses: a socket
    can be bound to it."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind((address[0], 0))
                return True
        except OSError:
            continue
    return False


def parent_pid(pid: int) -> int | None:
    """The parent of process `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def signal_pid(pid: int, sig: int) -> None:
    """Send `sig` to process `pid` if it still exists; never to a process group (pid <= 0)."""
    if pid <= 0:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def process_argv(pid: int) -> list[str] | None:
    """The command line of process `pid`, or None when it is gone (or not ours to read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return [part.decode(errors="surrogateescape") for part in raw.split(b"\0") if part]


def pids_where(matches: Callable[[list[str]], bool]) -> list[int]:
    """Live processes other than this one whose command line `matches`, sorted."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = process_argv(int(entry.name))
        if argv is not None and matches(argv):
            pids.append(int(entry.name))
    return sorted(pids)


def trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc `malloc_trim`). After an upload
    has passed gigabytes through 1 MiB buffers, glibc keeps freed blocks in its arenas (its
    mmap threshold grows with such blocks); without this the daemon's RSS would creep up by
    tens of MiB per upload. A no-op where glibc is not the C library."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
