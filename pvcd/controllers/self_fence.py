"""This node's side of self-fencing: its watchdog is petted only while the cluster hears from it.

The rule (the argument is in docs/architecture.md, "Self-fencing by watchdog"):
- the watchdog is armed only right after this node read its status document and found that
  the primary has not declared it dead, and before it registers; the device's timeout is at
  most `fencing.watchdog_timeout`, which the coordinators' `fencing.targets` entry for this
  node repeats and the primary's `WatchdogFence` waits out;
- afterwards it is petted only right after a keepalive written with compare-and-set on the
  status document succeeded, and only if that write was answered within one keepalive
  interval of being sent;
- the primary declares a node dead by a compare-and-set write of the same document, so once
  it has, no keepalive of this node succeeds any more: the node finds `dead` there, gives up
  (`declared_dead`: no pet ever again, no VM acted on) and the device resets the machine;
- a clean stop disarms the device (magic close); a crash or a stop while declared dead does not.
"""

from __future__ import annotations

import logging
import time

from pvcd.domain.errors import BackendError
from pvcd.drivers.watchdog import Watchdog

log = logging.getLogger(__name__)


class DeclaredDead(Exception):
    """The primary has declared this node dead (it is fencing it): do not write over that."""


class SelfFence:
    def __init__(self, name: str, watchdog: Watchdog | None, timeout: int,
                 interval: float) -> None:
        self.name = name
        self.watchdog = watchdog
        self.timeout = timeout
        self.interval = interval
        self.taken: int | None = None  # the timeout the armed device took
        self.given_up = False

    @property
    def enabled(self) -> bool:
        return self.watchdog is not None

    def arm(self, read_started: float) -> None:
        """Arm the device, right after a read (sent at monotonic `read_started`) found this
        node not declared dead; TimeoutError if that read is older than one interval."""
        if self.watchdog is None or self.taken is not None:
            return
        if time.monotonic() - read_started > self.interval:
            raise TimeoutError("the status read took longer than a keepalive interval: read "
                               "again before arming the watchdog")
        taken = self.watchdog.arm(self.timeout)
        if taken > self.timeout:  # the primary would recover its VMs before the reset
            raise BackendError(f"watchdog: the device took a timeout of {taken} s, more than "
                               f"fencing.watchdog_timeout ({self.timeout} s): configure "
                               f"{taken} s here and in the coordinators' fencing.targets")
        self.taken = taken
        log.warning("event=watchdog-armed node=%s timeout=%d", self.name, self.taken)

    def proven_alive(self, write_started: float) -> None:
        """A compare-and-set write of this node's status, sent at monotonic `write_started`,
        succeeded: pet the watchdog if it was answered within one keepalive interval."""
        if self.watchdog is None or self.taken is None or self.given_up:
            return
        took = time.monotonic() - write_started
        if took > self.interval:
            log.warning("event=watchdog-not-petted node=%s reason=keepalive took %.2f s",
                        self.name, took)
            return
        self.watchdog.pet()

    def declared_dead(self, why: str) -> None:
        if self.given_up:
            return
        self.given_up = True
        log.critical("event=self-fence node=%s reason=%s watchdog=%s", self.name, why,
                     "armed: this machine resets" if self.taken is not None else "none")

    def stop(self) -> None:
        """A clean stop: disarm, unless declared dead (then the reset must still come)."""
        if self.watchdog is None or self.taken is None or self.given_up:
            return
        self.watchdog.disarm()
        self.taken = None
        log.info("event=watchdog-disarmed node=%s", self.name)
