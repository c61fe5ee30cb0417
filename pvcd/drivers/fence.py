"""Fence drivers: make sure a dead node is really off before its VMs start elsewhere.

A fence is "power off, confirm off, power on". Success means the node is confirmed off (its
guests with it); only then may the cluster recover its VMs. Any doubt is a failure.

`IpmiFence` (`ipmitool -I lanplus` chassis power off / status / on) and `WatchdogFence` (a node
that resets itself: wait that out) are the production drivers.
Other drivers are given to a daemon by whoever builds it (`pvcd.plugins.Plugins`; the lab's are
in `pvcd.lab.fence`); a node that publishes a driver the primary was not given cannot be fenced.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pvcd.domain.errors import BackendError, InvalidValue


@dataclass(frozen=True)
class FenceTarget:
    """How to fence one node, from the primary's configuration (`fencing.targets`)."""

    node: str
    driver: str
    params: dict[str, Any] = field(default_factory=dict)


class FenceDriver(Protocol):
    # `target` comes from the primary's own configuration (`fencing.targets`), never from the
    # node's record in ZooKeeper
    def fence(self, target: FenceTarget, timeout: float) -> None:
        """Power the node off, confirm it is off, power it on; raise BackendError if unsure."""


class IpmiFence:
    def fence(self, target: FenceTarget, timeout: float) -> None:
        host, user, password = _credentials(target)
        deadline = time.monotonic() + timeout
        self._ipmi(host, user, password, ["chassis", "power", "off"], deadline)
        while time.monotonic() < deadline:
            out = self._ipmi(host, user, password, ["chassis", "power", "status"], deadline)
            if "is off" in out.lower():
                break
            time.sleep(1.0)
        else:
            raise BackendError(f"node {target.node}: power is not confirmed off")
        self._ipmi(host, user, password, ["chassis", "power", "on"], deadline)

    def query(self, target: FenceTarget, command: list[str], timeout: float) -> str:
        """Ask the node's BMC (`chassis power status`, `sdr type "Power Supply"`: the health
        checks' read-only questions); BackendError when it does not answer."""
        host, user, password = _credentials(target)
        return self._ipmi(host, user, password, command, time.monotonic() + timeout)

    def _ipmi(self, host: str, user: str, password: str, command: list[str],
              deadline: float) -> str:
        left = max(1.0, deadline - time.monotonic())
        try:
            result = subprocess.run(
                ["ipmitool", "-I", "lanplus", "-H", host, "-U", user, "-E", *command],
                env={**os.environ, "IPMI_PASSWORD": password}, capture_output=True, text=True,
                timeout=left, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendError(f"ipmitool {' '.join(command)} on {host} failed: {exc}") from exc
        if result.returncode != 0:
            raise BackendError(f"ipmitool {' '.join(command)} on {host}: "
                               f"{result.stderr.strip() or result.stdout.strip()}")
        return result.stdout


def _credentials(target: FenceTarget) -> tuple[str, str, str]:
    host, user, password = (target.params.get(k) for k in ("ipmi_host", "ipmi_user",
                                                          "ipmi_password"))
    if not (host and user and password):
        raise BackendError(f"node {target.node} publishes no complete IPMI settings")
    return str(host), str(user), str(password)


class WatchdogFence:
    """A node that fences itself (`fencing.driver: watchdog`): nothing to power off; wait until
    its watchdog must have reset it. The node pets its watchdog only within one keepalive
    interval after a keepalive it wrote with compare-and-set, and the fencing controller has
    marked it dead (compare-and-set on the same document) before this runs, after which none
    of its keepalives succeeds: its last pet was at most one interval after this fence began,
    so `watchdog_timeout + keepalive_interval` after it began the machine has reset.
    `MARGIN` covers clock drift and the reset itself (docs/architecture.md)."""

    MARGIN = 5.0

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self.sleep = sleep

    def fence(self, target: FenceTarget, timeout: float) -> None:
        # (from the primary's configuration: checked there, and again here)
        watchdog, interval = (target.params.get(k) for k in ("watchdog_timeout",
                                                             "keepalive_interval"))
        if not _number_in(watchdog, 1, 3600) or not _number_in(interval, 0.05, 600):
            raise BackendError(f"node {target.node}: no watchdog timeout configured for it "
                               f"(timeout {watchdog!r}, keepalive interval {interval!r}): it "
                               "cannot fence itself")
        assert isinstance(watchdog, (int, float)) and isinstance(interval, (int, float))
        self.sleep(float(watchdog) + float(interval) + self.MARGIN)


def _number_in(value: object, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        low <= value <= high


def fence_driver(name: str, extra: Mapping[str, FenceDriver] | None = None) -> FenceDriver:
    """The driver called `name`: a production one, or one of `extra` (given by the daemon's
    builder); InvalidValue when there is none of that name."""
    drivers: dict[str, FenceDriver] = {"ipmi": IpmiFence(), "watchdog": WatchdogFence(),
                                       **(extra or {})}
    if name not in drivers:
        raise InvalidValue(f"node cannot be fenced: fence driver {name!r}")
    return drivers[name]
