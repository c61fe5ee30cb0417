"""Reading a guest's console log file on its node, safely. Knows nothing of ZooKeeper.

Where the file is comes from the domain's XML (`<serial>`/`<console>` `<log file=...>`), which
comes from cluster state: anyone who can define a VM names it. So the file is followed only when
it lies inside the configured `console_log_directory` once symlinks are resolved, and the check
is made on what was actually opened (`/proc/self/fd`), not on the name: a symlink swapped in
between cannot point the daemon elsewhere. Only a regular file is read (a FIFO or a device
named there is refused; it is opened non-blocking, so a FIFO cannot hang the daemon).

Reads are bounded: `read(limit)` returns at most `limit` bytes. When more than that is waiting
(a guest flooding its console), the oldest is skipped and the caller is told how much, so the
daemon keeps the newest output at a bounded cost per round.
"""

from __future__ import annotations

import os
import stat
from xml.etree import ElementTree

from pvcd.domain.errors import InvalidValue


class ConsoleLogRefused(InvalidValue):
    """The console log named by a domain is not one this node may read."""


def console_log_path(xml: str) -> str | None:
    """The `<log file=...>` of the domain's first `<serial>`, else of its `<console>`."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    for device in ("serial", "console"):
        for element in root.findall(f"./devices/{device}/log"):
            path = element.get("file")
            if path:
                return path
    return None


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


class ConsoleLogFile:
    """An open console log: its identity (`dev:ino`), where reading stands, bounded reads."""

    def __init__(self, path: str, directory: str) -> None:
        """Open `path` if it is a regular file inside `directory` (symlinks resolved);
        ConsoleLogRefused says why not; FileNotFoundError when it does not exist (yet)."""
        if not os.path.isabs(path):
            raise ConsoleLogRefused(f"console log {path!r} is not an absolute path")
        base = os.path.realpath(directory)
        resolved = os.path.realpath(path)
        if not _inside(resolved, base):
            raise ConsoleLogRefused(f"console log {path!r} is outside the console log "
                                    f"directory {directory!r}")
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            opened = os.readlink(f"/proc/self/fd/{fd}")
            if not stat.S_ISREG(info.st_mode):
                raise ConsoleLogRefused(f"console log {path!r} is not a regular file")
            if not _inside(opened, base):
                raise ConsoleLogRefused(f"console log {path!r} is outside the console log "
                                        f"directory {directory!r}")
        except BaseException:
            os.close(fd)
            raise
        self.path = path
        self._resolved = resolved
        self._fd = fd
        self.identity = f"{info.st_dev}:{info.st_ino}"
        self.position = 0

    def seek(self, position: int) -> None:
        self.position = max(0, position)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read(self, limit: int) -> tuple[bytes, int]:
        """What was appended since the last read, at most `limit` bytes (the newest), and how
        many bytes before them were skipped. A file that shrank (truncated when the guest
        started again) is read from its start."""
        size = self.size()
        if size < self.position:
            self.position = 0
        skipped = max(0, size - self.position - limit)
        self.position += skipped
        data = os.pread(self._fd, min(limit, size - self.position), self.position)
        self.position += len(data)
        return data, skipped

    def replaced(self) -> bool:
        """The name now leads to another file (the log was rotated or re-created)."""
        try:
            info = os.stat(self._resolved, follow_symlinks=False)
        except OSError:
            return False
        return f"{info.st_dev}:{info.st_ino}" != self.identity

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
