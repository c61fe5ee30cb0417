"""Node health checks without a cluster: the rounds (limits, hung checks), operator commands,
and the hardware checks against recorded sysfs trees, smartctl output and a FAKE ipmitool
(tests/fakes/health/, tests/fakes/ipmitool)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pvcd.config import parse_config
from pvcd.controllers.health import local_zookeeper
from pvcd.controllers.health.hardware_checks import (
    DiskCheck,
    EdacCheck,
    IpmiCheck,
    NicsCheck,
    PowerSupplyCheck,
)
from pvcd.controllers.health.node_checks import CommandCheck, LoadCheck, ZookeeperServerCheck
from pvcd.controllers.health.rounds import Check, Finding, HealthRounds
from pvcd.domain.health import NodeHealth
from pvcd.domain.health_checks import command_delta
from pvcd.drivers.fence import FenceTarget, IpmiFence
from pvcd.drivers.host_commands import NOT_FOUND, CommandResult, run_command
from pvcd.lab.zookeeper import free_port

FAKES = Path(__file__).resolve().parents[1] / "fakes"
RECORDED = FAKES / "health"


class Writes:
    """A HealthWriter stand-in: keeps what each round wrote."""

    def __init__(self) -> None:
        self.docs: list[NodeHealth] = []

    def write(self, health: NodeHealth) -> None:
        self.docs.append(health)

    def clear(self) -> None:
        self.docs.append(NodeHealth(None))


def rounds(*checks: Check) -> tuple[HealthRounds, Writes]:
    writes = Writes()
    return HealthRounds("node1", list(checks), writes, 2.0, lambda: True,  # type: ignore[arg-type]
                        clock=lambda: 1000.0), writes


# --- rounds ---------------------------------------------------------------------------------

def test_a_round_writes_null_first_then_every_check_and_the_health() -> None:
    runner, writes = rounds(Check("load", lambda: Finding(0, "fine")),
                            Check("zkpr", lambda: Finding(50, "not serving", {"x": 1})))
    result = runner.reconcile(runner.key())
    assert [d.health for d in writes.docs] == [None, 50]
    checks = writes.docs[-1].to_doc()["checks"]
    assert checks == [
        {"name": "load", "last_run": 1000.0, "health_delta": 0, "message": "fine", "data": {}},
        {"name": "zkpr", "last_run": 1000.0, "health_delta": 50, "message": "not serving",
         "data": {"x": 1}}]
    assert NodeHealth.from_doc(writes.docs[-1].to_doc()) == writes.docs[-1]
    assert result.requeue_after is not None and 0 < result.requeue_after <= 2.0
    runner.reconcile(runner.key())
    assert [d.health for d in writes.docs] == [None, 50, 50]  # null only before the first


def test_a_hung_check_times_out_and_never_runs_twice_at_once() -> None:
    release = threading.Event()
    started: list[float] = []

    def hang() -> Finding:
        started.append(time.monotonic())
        release.wait(30)
        return Finding(0, "finally")

    runner, _ = rounds(Check("lbvt", hang, limit=0.2, on_timeout=Finding(50, "no answer")),
                       Check("load", lambda: Finding(0, "fine")))
    began = time.monotonic()
    first = runner.run_round()
    assert time.monotonic() - began < 1.0  # the round waited for the limit, not the check
    assert [(c.name, c.health_delta, c.message) for c in first] == [
        ("lbvt", 50, "no answer"), ("load", 0, "fine")]
    threads = threading.active_count()
    for _ in range(3):
        again = runner.run_round()
        assert again[0].health_delta == 50
    assert len(started) == 1, "a second run of a check that is still running"
    assert threading.active_count() <= threads
    release.set()
    deadline = time.monotonic() + 5
    while any(t.name == "health-lbvt" for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert runner.run_round()[0].message == "finally"  # returned: the next round runs it anew
    assert len(started) == 2


def test_the_default_timeout_finding_is_delta_10_timed_out() -> None:
    gate = threading.Event()
    runner, _ = rounds(Check("disk", lambda: Finding(0, str(gate.wait(5))), limit=0.05))
    found = runner.run_round()[0]
    gate.set()
    assert (found.health_delta, found.message) == (10, "timed out")


def test_a_check_that_raises_says_so_without_costing_health() -> None:
    def broken() -> Finding:
        raise RuntimeError("bug")

    found = rounds(Check("edac", broken))[0].run_round()[0]
    assert found.health_delta == 0 and "RuntimeError('bug')" in found.message


def test_nothing_runs_or_is_written_while_the_node_cannot_write() -> None:
    ran: list[int] = []
    writes = Writes()
    runner = HealthRounds("node1", [Check("load", lambda: ran.append(1) or Finding(0))],
                          writes, 2.0, lambda: False)  # type: ignore[arg-type]
    assert runner.reconcile(runner.key()).requeue_after == 1.0
    assert ran == [] and writes.docs == []


# --- checks of the node's software ----------------------------------------------------------

def test_load_above_the_cpu_count_costs_50() -> None:
    assert LoadCheck(lambda: 4.5, lambda: 4).run().delta == 50
    fine = LoadCheck(lambda: 3.9, lambda: 4).run()
    assert fine.delta == 0 and fine.data == {"load": 3.9, "cpus": 4}


def test_zkpr_asks_a_real_socket_and_reads_the_mode() -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve(answer: bytes) -> None:
        conn, _ = listener.accept()
        with conn:
            assert conn.recv(4) == b"srvr"
            conn.sendall(answer)

    for answer, delta in ((b"Zookeeper version: 3.8.0\nMode: follower\nNode count: 5\n", 0),
                          (b"This ZooKeeper instance is not currently serving requests\n", 50)):
        server = threading.Thread(target=serve, args=(answer,))
        server.start()
        found = ZookeeperServerCheck("127.0.0.1", port).run()
        server.join()
        assert found.delta == delta, found
    listener.close()
    assert ZookeeperServerCheck("127.0.0.1", free_port()).run().delta == 50  # nothing listens


def config(**health: Any) -> Any:
    return parse_config({"node": {"name": "hv2", "coordinator": True},
                         "cluster": {"coordinators": ["hv1:2181", "hv2.example.org:2181",
                                                      "hv3:2181"]},
                         "health": health}, "pvcd.yaml")


def test_the_local_zookeeper_is_configured_named_after_the_node_or_local() -> None:
    assert local_zookeeper(config()) == ("hv2.example.org", 2181)
    assert local_zookeeper(config(zookeeper="10.0.0.2:2182")) == ("10.0.0.2", 2182)
    by_address = parse_config({"node": {"name": "hv2", "coordinator": True},
                               "cluster": {"coordinators": ["10.0.0.1:2181", "127.0.0.1:2181",
                                                            "[fd00::3]:2181"]}}, "pvcd.yaml")
    assert local_zookeeper(by_address) == ("127.0.0.1", 2181)  # the one this machine has
    assert local_zookeeper(by_address, lambda host: host == "fd00::3") == ("fd00::3", 2181)
    assert local_zookeeper(by_address, lambda host: True) == ("127.0.0.1", 2181)  # ambiguous


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "check.sh"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_a_command_exit_code_is_its_delta_and_its_first_line_the_message(
        tmp_path: Path) -> None:
    found = CommandCheck([script(tmp_path, 'echo "raid degraded"; echo more; exit 30')], 5,
                         run_command).run()
    assert (found.delta, found.message, found.data) == (30, "raid degraded", {"exit": 30})
    assert CommandCheck([script(tmp_path, "echo ok")], 5, run_command).run().delta == 0
    assert CommandCheck([script(tmp_path, "exit 250")], 5, run_command).run().delta == 100
    assert command_delta(-15) == 100  # killed by a signal


def test_a_command_that_overruns_its_timeout_is_timed_out(tmp_path: Path) -> None:
    began = time.monotonic()
    found = CommandCheck([script(tmp_path, "sleep 10")], 0.3, run_command).run()
    assert time.monotonic() - began < 3
    assert (found.delta, found.message) == (10, "timed out")


def test_a_missing_command_is_reported(tmp_path: Path) -> None:
    found = CommandCheck([str(tmp_path / "nothing")], 1, run_command).run()
    assert found.delta == 100 and "not found" in found.message


@pytest.mark.parametrize("commands, problem", [
    ([{"name": "raid", "command": ["megacli"]}], "absolute path"),
    ([{"name": "load", "command": ["/bin/true"]}], "built-in"),
    ([{"name": "Raid", "command": ["/bin/true"]}], "not a valid check name"),
    ([{"name": "raid", "command": "/bin/true --x"}], "expected a list"),
    ([{"name": "raid", "command": ["/bin/true"], "timeout": 30}], "between 0.1 and 10"),
])
def test_commands_are_validated_in_the_config(commands: list[Any], problem: str) -> None:
    with pytest.raises(Exception, match=problem):
        config(commands=commands)


# --- hardware, from recordings ----------------------------------------------------------------

def test_nics_a_bond_member_down_and_a_physical_device_down_cost_10_each() -> None:
    found = NicsCheck(["bond0", "eno3", "vmbr0", "absent0"],
                      RECORDED / "sysfs-bond-degraded").run()
    assert found.delta == 20
    assert found.data["failing"] == ["bond0: 1 of 2 members active (eno2 down)",
                                     "eno3: link down"]
    assert "vmbr0" not in found.data["devices"]  # virtual: not judged


def test_nics_a_bond_member_slower_than_its_peers() -> None:
    found = NicsCheck(["bond0"], RECORDED / "sysfs-bond-slow").run()
    assert found.delta == 10
    assert "enp1s0f1 runs at 2500 Mb/s, below its peers' 25000" in found.message


def test_nics_not_applicable_without_bonds_or_physical_devices(tmp_path: Path) -> None:
    found = NicsCheck(["vmbr0"], RECORDED / "sysfs-bond-degraded").run()
    assert found.delta == 0 and found.message.startswith("not applicable")
    assert NicsCheck([], tmp_path).run().delta == 0


def test_edac_uncorrected_errors_cost_50() -> None:
    found = EdacCheck(RECORDED / "sysfs-edac").run()
    assert (found.delta, found.message) == (50, "2 uncorrected memory errors (3 corrected)")
    assert EdacCheck(RECORDED / "sysfs-edac-clean").run().delta == 0
    assert EdacCheck(RECORDED / "no-such-tree").run().message.startswith("not applicable")


class RecordedSmartctl:
    """A command runner that answers smartctl from tests/fakes/health/smartctl/."""

    def __init__(self, disks: dict[str, str]) -> None:
        self.disks = disks
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult:
        self.calls.append(list(argv))
        if "--scan" in argv:
            return CommandResult(0, (RECORDED / "smartctl" / "scan.json").read_text())
        name = self.disks.get(argv[-1])
        if name is None:
            return CommandResult(2, "", "Smartctl open device: /dev/bus/0 failed")
        doc = json.loads((RECORDED / "smartctl" / f"{name}.json").read_text())
        return CommandResult(int(doc["smartctl"]["exit_status"]), json.dumps(doc))


def test_disk_a_failing_nvme_drive_costs_10() -> None:
    smartctl = RecordedSmartctl({"/dev/sda": "sda", "/dev/nvme0": "nvme0",
                                 "/dev/nvme1": "nvme1"})
    found = DiskCheck(smartctl).run()
    assert found.delta == 10
    assert found.message == ("/dev/nvme1: SMART overall health failed, critical warning 0x4, "
                             "12 media errors, wear 96 %")
    assert found.data["disks"] == ["/dev/sda", "/dev/nvme0", "/dev/nvme1"]
    assert ["smartctl", "--all", "--json", "--device", "sat", "/dev/sda"] in smartctl.calls


def test_disk_without_smartctl_is_not_applicable() -> None:
    found = DiskCheck(lambda argv, timeout: CommandResult(NOT_FOUND, "", "not found")).run()
    assert (found.delta, found.message) == (0, "not applicable: no smartctl")


@pytest.fixture
def bmc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A FAKE BMC for the node (tests/fakes/ipmitool, found first on PATH)."""
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_IPMI_DIR", str(tmp_path))
    path = tmp_path / "bmc-hv2.json"
    path.write_text(json.dumps({"user": "admin", "password": "s3cret", "power": "on"}))
    return path


TARGET = FenceTarget("hv2", "ipmi", {"ipmi_host": "bmc-hv2", "ipmi_user": "admin",
                                     "ipmi_password": "s3cret"})


def test_ipmi_answers_or_costs_10(bmc: Path) -> None:
    found = IpmiCheck(TARGET, IpmiFence()).run()
    assert (found.delta, found.message) == (0, "Chassis Power is on")
    bmc.unlink()  # the BMC is unreachable
    assert IpmiCheck(TARGET, IpmiFence()).run().delta == 10


def test_psur_lost_redundancy_costs_10(bmc: Path) -> None:
    assert PowerSupplyCheck(TARGET, IpmiFence()).run().delta == 0
    doc = json.loads(bmc.read_text())
    doc["power_supply_sdr"] = ["Status           | 60h | ok  | 10.1 | Presence detected",
                               "Status           | 61h | cr  | 10.2 | Power Supply AC lost",
                               "PS Redundancy    | 77h | cr  |  7.1 | Redundancy Lost"]
    bmc.write_text(json.dumps(doc))
    found = PowerSupplyCheck(TARGET, IpmiFence()).run()
    assert found.delta == 10 and "Redundancy Lost" in found.message
