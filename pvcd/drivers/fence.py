"""Fence drivers: make sure a dead node is really off before its VMs start elsewhere.

A fence is "power off, confirm off, power on". Success means the node is confirmed off (its
guests with it); only then may the cluster recover its VMs. Any doubt is a failure.

- `IpmiFence`: `ipmitool -I lanplus` chassis power off / status / on.
- `LabFence`: the lab's nodes are processes, so "power" is the node daemon's process (and, with
  the test:/// libvirt, its guests live inside it): SIGKILL, confirm the process is gone, then
  start the same command line again ("power on"). Real processes, really killed.
- `FailingFence`: a lab driver that always fails, to exercise the failed-fence path.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from pvcd.domain.errors import BackendError, InvalidValue
from pvcd.drivers.host import pid_alive, process_argv
from pvcd.lab import mountns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FenceTarget:
    """What a node publishes about itself so that others can fence it."""

    node: str
    driver: str
    params: dict[str, Any] = field(default_factory=dict)


class FenceDriver(Protocol):
    def fence(self, target: FenceTarget, timeout: float) -> None:
        """Power the node off, confirm it is off, power it on; raise BackendError if unsure."""


class IpmiFence:
    def fence(self, target: FenceTarget, timeout: float) -> None:
        host, user, password = (target.params.get(k) for k in ("ipmi_host", "ipmi_user",
                                                              "ipmi_password"))
        if not (host and user and password):
            raise BackendError(f"node {target.node} publishes no complete IPMI settings")
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


class LabFence:
    def fence(self, target: FenceTarget, timeout: float) -> None:
        pid = int(target.params.get("pid", 0))
        cmdline = target.params.get("cmdline") or []
        cwd = target.params.get("cwd") or "/"
        if pid > 0 and pid_alive(pid):
            if not _same_process(pid, cmdline):
                raise BackendError(f"node {target.node}: pid {pid} is another process now; "
                                   "refusing to kill it")
            os.kill(pid, signal.SIGCONT)  # a stopped process dies only when it runs
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while pid > 0 and pid_alive(pid):
            if time.monotonic() > deadline:
                raise BackendError(f"node {target.node}: pid {pid} still alive after SIGKILL")
            time.sleep(0.01)
        netns = target.params.get("netns")
        if netns:  # the node's network goes down with it: its processes, its floating IPs
            _power_off_netns(str(netns), target.params.get("floating") or [])
        log.info("event=fence-power-off node=%s pid=%d confirmed=true", target.node, pid)
        if cmdline:  # power on: the node boots and its daemon starts again
            binds = target.params.get("binds") or []
            if binds:  # in a mount namespace of its own, as the lab started it
                cmdline = mountns.wrap(binds, cmdline)
            if netns:
                cmdline = ["ip", "netns", "exec", str(netns), *cmdline]
            log_path = target.params.get("log") or os.devnull
            with open(log_path, "ab") as out:
                subprocess.Popen(cmdline, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 env=target.params.get("env") or None)
            log.info("event=fence-power-on node=%s", target.node)


class FailingFence:
    def fence(self, target: FenceTarget, timeout: float) -> None:
        raise BackendError(f"node {target.node}: the lab-fail fence driver always fails")


def fence_driver(name: str) -> FenceDriver:
    drivers: dict[str, FenceDriver] = {"ipmi": IpmiFence(), "lab": LabFence(),
                                       "lab-fail": FailingFence()}
    if name not in drivers:
        raise InvalidValue(f"node cannot be fenced: fence driver {name!r}")
    return drivers[name]


def _power_off_netns(netns: str, floating: list[list[str]]) -> None:
    try:
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                              timeout=10, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        for device, cidr in floating:
            subprocess.run(["ip", "-n", netns, "addr", "del", cidr, "dev", device],
                           capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"powering off the network namespace {netns} failed: {exc}") from exc


def _same_process(pid: int, cmdline: list[str]) -> bool:
    current = process_argv(pid)
    return current is not None and (not cmdline or current == list(cmdline))
