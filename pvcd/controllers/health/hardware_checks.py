"""The checks that read hardware (extensions.md §8.3): `nics`, `disk`, `edac`, `ipmi`, `psur`.

Their sources are given to them: a sysfs root (`/sys` in production, a recorded tree in the
tests), a command runner (`smartctl`), the node's own IPMI settings and the IPMI driver. Where
a source is absent (no bond and no physical device among the configured ones, no `smartctl`,
no EDAC memory controller, no IPMI fencing) the check says "not applicable" with delta 0: the
development machine and the lab have none of this hardware.

`nics` reads only sysfs: a bond's members and their MII state, each device's link state and
speed. sysfs does not list a device's supported speeds (ethtool asks the driver for them), so
"below its best speed" is judged among a bond's members: a member slower than the fastest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvcd.controllers.health.rounds import Finding
from pvcd.domain.errors import PvcError
from pvcd.domain.health_checks import DELTAS, DISK, EDAC, IPMI, NICS, NOT_APPLICABLE, PSUR
from pvcd.drivers.fence import FenceTarget, IpmiFence
from pvcd.drivers.host_commands import NOT_FOUND, CommandRunner

SMARTCTL_TIMEOUT = 4.0  # seconds per smartctl call (the check has 10 in all)
IPMI_TIMEOUT = 8.0
WEAR_LIMIT = 90  # percent of an NVMe drive's rated endurance used


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _speed(net: Path, device: str) -> int | None:
    """Mb/s, None when unknown (-1: no link, or a virtual device)."""
    text = _read(net / device / "speed")
    try:
        speed = int(text) if text is not None else -1
    except ValueError:
        return None
    return speed if speed > 0 else None


class NicsCheck:
    """`nics`: per configured device, a bond with fewer active members than members, a member
    slower than the bond's fastest, a physical device whose link is down: delta 10 each."""

    def __init__(self, devices: Sequence[str], sysfs: Path = Path("/sys")) -> None:
        self.devices, self.net = list(devices), sysfs / "class" / "net"

    def run(self) -> Finding:
        problems: list[str] = []
        seen: dict[str, Any] = {}
        for device in self.devices:
            path = self.net / device
            if (path / "bonding").is_dir():
                seen[device] = self._bond(device, problems)
            elif (path / "device").exists():  # a physical device (virtual ones have none)
                state = _read(path / "operstate")
                seen[device] = {"state": state, "speed": _speed(self.net, device)}
                if state != "up":
                    problems.append(f"{device}: link {state or 'unknown'}")
        data = {"devices": seen, "failing": problems}
        if not seen:
            return Finding(0, f"{NOT_APPLICABLE}: no bond or physical device configured", data)
        if problems:
            return Finding(DELTAS[NICS] * len(problems), "; ".join(problems), data)
        return Finding(0, f"{len(seen)} devices fine", data)

    def _bond(self, bond: str, problems: list[str]) -> dict[str, Any]:
        members = (_read(self.net / bond / "bonding" / "slaves") or "").split()
        states = {m: _read(self.net / m / "bonding_slave" / "mii_status") for m in members}
        speeds = {m: _speed(self.net, m) for m in members}
        active = [m for m in members if states[m] == "up"]
        if len(active) < len(members):
            down = ", ".join(m for m in members if m not in active)
            problems.append(f"{bond}: {len(active)} of {len(members)} members active "
                            f"({down} down)")
        known = [s for m, s in speeds.items() if s is not None and m in active]
        best = max(known, default=None)
        for member in active:
            speed = speeds[member]
            if best is not None and speed is not None and speed < best:
                problems.append(f"{bond}: {member} runs at {speed} Mb/s, below its peers' "
                                f"{best} Mb/s")
        return {"members": members, "active": active, "speeds": speeds}


class EdacCheck:
    """`edac`: a memory controller counted uncorrected errors (`ue_count`)."""

    def __init__(self, sysfs: Path = Path("/sys")) -> None:
        self.mc = sysfs / "devices" / "system" / "edac" / "mc"

    def run(self) -> Finding:
        controllers = sorted(self.mc.glob("mc[0-9]*")) if self.mc.is_dir() else []
        if not controllers:
            return Finding(0, f"{NOT_APPLICABLE}: no EDAC memory controller")
        counts = {}
        for controller in controllers:
            counts[controller.name] = {
                "ue": int(_read(controller / "ue_count") or 0),
                "ce": int(_read(controller / "ce_count") or 0)}
        uncorrected = sum(c["ue"] for c in counts.values())
        corrected = sum(c["ce"] for c in counts.values())
        data = {"controllers": counts}
        if uncorrected:
            return Finding(DELTAS[EDAC], f"{uncorrected} uncorrected memory errors "
                           f"({corrected} corrected)", data)
        return Finding(0, f"no uncorrected memory errors ({corrected} corrected)", data)


def smart_problems(report: dict[str, Any]) -> list[str]:
    """What is wrong with one disk in `smartctl --all --json` output: the overall SMART
    verdict, and for NVMe the critical warning, media errors and wear."""
    problems = []
    if (report.get("smart_status") or {}).get("passed") is False:
        problems.append("SMART overall health failed")
    nvme = report.get("nvme_smart_health_information_log")
    if isinstance(nvme, dict):
        if nvme.get("critical_warning"):
            problems.append(f"critical warning {nvme['critical_warning']:#x}")
        if nvme.get("media_errors"):
            problems.append(f"{nvme['media_errors']} media errors")
        if (nvme.get("percentage_used") or 0) > WEAR_LIMIT:
            problems.append(f"wear {nvme['percentage_used']} %")
    return problems


class DiskCheck:
    """`disk`: SMART or NVMe health of each disk `smartctl --scan` finds fails: delta 10 each;
    without `smartctl`, not applicable."""

    def __init__(self, run: CommandRunner, smartctl: str = "smartctl") -> None:
        self.run_command, self.smartctl = run, smartctl

    def run(self) -> Finding:
        scan = self.run_command([self.smartctl, "--scan", "--json"], SMARTCTL_TIMEOUT)
        if scan.code == NOT_FOUND:
            return Finding(0, f"{NOT_APPLICABLE}: no smartctl")
        try:
            devices = json.loads(scan.stdout).get("devices") or []
        except (ValueError, AttributeError):
            return Finding(0, f"smartctl --scan gave no JSON: {scan.stderr.strip()[:200]}")
        failing: dict[str, list[str]] = {}
        checked = []
        for device in devices:
            name, kind = device.get("name"), device.get("type")
            if not isinstance(name, str):
                continue
            argv = [self.smartctl, "--all", "--json", *(["--device", kind] if kind else []),
                    name]
            result = self.run_command(argv, SMARTCTL_TIMEOUT)
            try:
                report = json.loads(result.stdout)
            except ValueError:
                continue  # not a disk smartctl can read (its exit bits say why)
            checked.append(name)
            problems = smart_problems(report)
            if problems:
                failing[name] = problems
        data = {"disks": checked, "failing": failing}
        if failing:
            text = "; ".join(f"{name}: {', '.join(p)}" for name, p in failing.items())
            return Finding(DELTAS[DISK] * len(failing), text, data)
        if not checked:
            return Finding(0, f"{NOT_APPLICABLE}: no disk smartctl can read", data)
        return Finding(0, f"{len(checked)} disks healthy", data)


class BmcQuestion:
    """One read-only question to the node's own BMC (its `fencing.targets` entry)."""

    COMMAND: tuple[str, ...] = ()

    def __init__(self, target: FenceTarget, ipmi: IpmiFence) -> None:
        self.target, self.ipmi = target, ipmi

    def ask(self) -> str:
        """The BMC's answer; BackendError when it gives none."""
        return self.ipmi.query(self.target, list(self.COMMAND), IPMI_TIMEOUT)


class IpmiCheck(BmcQuestion):
    """`ipmi`: the node's BMC answers a power-status query."""

    COMMAND = ("chassis", "power", "status")

    def run(self) -> Finding:
        try:
            answer = self.ask().strip()
        except PvcError as exc:
            return Finding(DELTAS[IPMI], f"the BMC does not answer: {exc}")
        return Finding(0, answer.splitlines()[0] if answer else "answers")


class PowerSupplyCheck(BmcQuestion):
    """`psur`: the BMC's power-supply redundancy sensor says redundancy is lost."""

    COMMAND = ("sdr", "type", "Power Supply")
    LOST = ("redundancy lost", "non-redundant", "insufficient resources", "redundancy degraded")

    def run(self) -> Finding:
        try:
            answer = self.ask()
        except PvcError as exc:  # (`ipmi` counts a BMC that does not answer)
            return Finding(0, f"no power-supply sensors read: {exc}")
        sensors = [line.strip() for line in answer.splitlines() if "redundan" in line.lower()]
        if not sensors:
            return Finding(0, f"{NOT_APPLICABLE}: no power-supply redundancy sensor")
        lost = [line for line in sensors if any(word in line.lower() for word in self.LOST)]
        if lost:
            return Finding(DELTAS[PSUR], f"power-supply redundancy lost: {lost[0]}",
                           {"sensors": sensors})
        return Finding(0, "power supplies redundant", {"sensors": sensors})
