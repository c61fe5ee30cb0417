"""The systemd units in systemd/: what they must say, that their commands are real, and (when
`systemd-analyze` is installed) that systemd accepts them. Also the daemon's sd_notify."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import click
import pytest

from pvcd.cli.main import cli
from pvcd.drivers.systemd import notify

UNITS = Path(__file__).resolve().parents[2] / "systemd"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections → key → values (systemd keys may repeat, which configparser refuses)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}:{number}: a key outside a section"
        assert "=" in line and not line.endswith("\\"), f"{path.name}:{number}: {line!r}"
        key, value = (part.strip() for part in line.split("=", 1))
        current.setdefault(key, []).append(value)
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, (section, key, values)
    return values[0]


def words(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> set[str]:
    return {word for value in unit[section].get(key, []) for word in value.split()}


def seconds(value: str) -> float:
    units = {"s": 1, "min": 60, "h": 3600}
    for suffix, factor in sorted(units.items(), key=lambda i: -len(i[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def test_there_are_the_two_units() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == ["pvcd-flush.service",
                                                               "pvcd.service"]


# --- least privilege (docs/security.md) --------------------------------------------------------

# the exposure `systemd-analyze security` gives pvcd.service (9.6 before the hardening); a change
# that raises it must say why here and in docs/security.md
EXPOSURE_LIMIT = 4.5
# the settings that give the service a mount namespace of its own (mounts do not reach the host)
MOUNT_NAMESPACING = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateMounts",
                     "ReadWritePaths", "ProtectKernelModules", "ProtectKernelLogs",
                     "ProtectControlGroups")
# every capability pvcd.service keeps, each with its reason in the unit's comment
CAPABILITIES = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN",
                "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE",
                "CAP_KILL"}


def test_pvcd_service_keeps_only_the_capabilities_it_needs_and_no_new_privileges() -> None:
    unit = parse_unit(UNITS / "pvcd.service")
    assert words(unit, "Service", "CapabilityBoundingSet") == CAPABILITIES
    text = (UNITS / "pvcd.service").read_text()
    for capability in CAPABILITIES:  # each is explained where it is granted
        assert any(line.startswith("#") and capability.removeprefix("CAP_") in line
                   for line in text.splitlines()), capability
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "PrivateTmp") == "yes"
    # what pvcd writes: dnsmasq's files (drivers.network.state_dir) and the OSD pid files
    # (drivers.ceph.osd_run_dir), kept across restarts
    assert one(unit, "Service", "StateDirectory") == "pvc"
    assert one(unit, "Service", "RuntimeDirectory") == "pvcd"
    assert one(unit, "Service", "RuntimeDirectoryPreserve") == "yes"
    # the gateways and the firewall write sysctls under /proc/sys/net
    assert "ProtectKernelTunables" not in unit["Service"]


def test_the_device_osd_drop_in_turns_off_every_mount_namespacing_setting() -> None:
    unit = parse_unit(UNITS / "pvcd.service")
    drop_in = parse_unit(UNITS / "pvcd-device-osds.conf")
    set_in_unit = [key for key in MOUNT_NAMESPACING if key in unit["Service"]]
    assert set_in_unit, "pvcd.service uses no file-system sandboxing any more?"
    for key in set_in_unit:
        assert one(drop_in, "Service", key) in ("no", ""), key
    assert set(drop_in["Service"]) == set(set_in_unit)  # and changes nothing else


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (scripts/setup installs it)")
def test_the_exposure_of_pvcd_service_does_not_regress() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager",
         str(UNITS / "pvcd.service")],
        capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"Overall exposure level for pvcd\.service: ([0-9.]+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= EXPOSURE_LIMIT, result.stdout


def test_pvcd_service() -> None:
    unit = parse_unit(UNITS / "pvcd.service")
    assert {"network-online.target", "libvirtd.service"} <= words(unit, "Unit", "After")
    assert "network-online.target" in words(unit, "Unit", "Wants")
    service = unit["Service"]
    assert one(unit, "Service", "Type") == "notify"  # pvcd sends READY=1 once registered
    assert shlex.split(one(unit, "Service", "ExecStart")) == [
        "/usr/bin/pvcd", "run", "--config", "/etc/pvc/pvcd.yaml"]
    # SIGTERM to the daemon alone: it hands over and stops its own children (dnsmasq)
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "KillMode") == "mixed"
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= 30
    assert one(unit, "Service", "Restart") == "on-failure"
    assert "RestartSec" in service
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_pvcd_flush_service_flushes_before_pvcd_stops_and_readies_after_it_starts() -> None:
    unit = parse_unit(UNITS / "pvcd-flush.service")
    # units stop in the reverse order of starting: After=pvcd.service makes the flush run
    # while pvcd (and libvirtd, and the network) still run
    assert {"pvcd.service", "network-online.target"} <= words(unit, "Unit", "After")
    assert "pvcd.service" in words(unit, "Unit", "Wants")
    assert one(unit, "Service", "Type") == "oneshot"
    assert one(unit, "Service", "RemainAfterExit") == "yes"
    start = shlex.split(one(unit, "Service", "ExecStart"))
    stop = shlex.split(one(unit, "Service", "ExecStop"))
    assert start[:3] == ["/usr/bin/pvc", "node", "ready"] and "--wait" in start
    assert stop[:3] == ["/usr/bin/pvc", "node", "flush"] and "--wait" in stop
    # systemd must not kill the flush before the CLI's own --timeout ends it
    for command, timeout_key in ((start, "TimeoutStartSec"), (stop, "TimeoutStopSec")):
        cli_timeout = float(command[command.index("--timeout") + 1])
        assert seconds(one(unit, "Service", timeout_key)) > cli_timeout
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("key", ["ExecStart", "ExecStop"])
def test_the_flush_units_commands_are_valid_pvc_command_lines(key: str) -> None:
    unit = parse_unit(UNITS / "pvcd-flush.service")
    environment = dict(value.split("=", 1) for value in unit["Service"]["Environment"])
    assert environment["PVC_NODE"] == "%l"  # the short host name, overridable
    argv = shlex.split(one(unit, "Service", key).replace("${PVC_NODE}", "hv1"))[1:]
    # resolve `node <command>` as click would, then parse the command's own arguments
    root = click.Context(cli, info_name="pvc")
    group_name, group, rest = cli.resolve_command(root, argv)
    assert group_name == "node" and isinstance(group, click.Group)
    group_ctx = click.Context(group, parent=root, info_name=group_name)
    name, command, rest = group.resolve_command(group_ctx, rest)
    assert name in ("ready", "flush") and command is not None
    params = command.make_context(name, rest, parent=group_ctx).params
    assert params["node_name"] == "hv1" and params["wait"] is True and params["timeout"] > 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (the unit files are parsed above)")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    # verify wants the executables to exist: point them at a stub, keep everything else
    stub = tmp_path / "bin" / "stub"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    copies = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text().replace("/usr/bin/pvcd ", f"{stub} ").replace(
            "/usr/bin/pvc ", f"{stub} ")
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(str(copy))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *copies],
                            capture_output=True, text=True, timeout=60, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if any(str(tmp_path / name) in line or name in line
                       for name in ("pvcd.service", "pvcd-flush.service"))]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_sd_notify_reaches_the_notify_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        assert notify("READY=1\nSTATUS=registered", {"NOTIFY_SOCKET": str(path)})
        assert server.recv(4096) == b"READY=1\nSTATUS=registered"


def test_sd_notify_abstract_socket_and_no_socket() -> None:
    name = f"pvcd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(2)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert server.recv(4096) == b"STOPPING=1"
    assert notify("READY=1", {}) is False  # not started by systemd: nothing to do
    assert notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/socket"}) is False
