"""The node's watchdog: a timer that resets the machine unless the daemon keeps petting it.

`LinuxWatchdog` speaks the kernel's watchdog device API (a hardware watchdog, or `softdog`):
open `/dev/watchdog` (which starts the timer), `WDIOC_SETTIMEOUT` (which also pets it), a write
or `WDIOC_KEEPALIVE` to pet, and the "magic close" (write `V`, then close) to stop it on a clean
exit. A daemon that dies without the magic close leaves the timer running: the machine resets.

The daemon pets only right after it has proved to the cluster that it is alive (a keepalive
written with compare-and-set, answered within one keepalive interval), and never again once the
primary has declared it dead: see `docs/architecture.md`, "Self-fencing by watchdog", for why a
node then resets itself before the primary recovers its VMs.

The lab has no watchdog device; its fake (`pvcd.lab.watchdog`) comes in through `Plugins`.
"""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Protocol

from pvcd.domain.errors import BackendError

# ioctl numbers of <linux/watchdog.h>: _IOR('W', 5, int), _IOWR('W', 6, int), _IOR('W', 7, int)
WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
MAGIC_CLOSE = b"V"


class Watchdog(Protocol):
    def arm(self, timeout: int) -> int:
        """Start the timer with `timeout` seconds (it is petted by this); return the timeout
        the device took (some round it)."""

    def pet(self) -> None:
        """Start the timer's count again."""

    def disarm(self) -> None:
        """Stop the timer (a clean exit); the machine is not reset."""


class LinuxWatchdog:
    def __init__(self, device: str) -> None:
        self.device = device
        self._fd: int | None = None

    def arm(self, timeout: int) -> int:
        try:
            self._fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
            raw = fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", timeout))
            taken = struct.unpack("i", raw)[0]
            raw = fcntl.ioctl(self._fd, WDIOC_GETTIMEOUT, struct.pack("i", 0))
            return int(struct.unpack("i", raw)[0] or taken)
        except OSError as exc:
            raise BackendError(f"watchdog {self.device}: cannot arm it: {exc}") from exc

    def pet(self) -> None:
        if self._fd is None:
            raise BackendError(f"watchdog {self.device} is not armed")
        try:
            fcntl.ioctl(self._fd, WDIOC_KEEPALIVE, struct.pack("i", 0))
        except OSError as exc:
            raise BackendError(f"watchdog {self.device}: keepalive failed: {exc}") from exc

    def disarm(self) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, MAGIC_CLOSE)
        finally:
            os.close(self._fd)
            self._fd = None
