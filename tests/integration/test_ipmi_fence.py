"""`IpmiFence` against a FAKE ipmitool (tests/fakes/ipmitool): a BMC cannot exist on one
machine, so the tool is faked at its command-line interface and the real driver runs it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcd.domain.errors import BackendError
from pvcd.drivers.fence import FenceTarget, IpmiFence

FAKES = Path(__file__).resolve().parents[1] / "fakes"


@pytest.fixture
def bmc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """Make a fake BMC for a host; the driver finds the fake ipmitool first on PATH."""
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_IPMI_DIR", str(tmp_path))

    def make(host: str, **settings: Any) -> Path:
        path = tmp_path / f"{host}.json"
        path.write_text(json.dumps({"user": "admin", "password": "s3cret", "power": "on",
                                    **settings}))
        return path

    yield make


def target(host: str = "bmc-node2", password: str = "s3cret") -> FenceTarget:
    return FenceTarget("node2", "ipmi", {"ipmi_host": host, "ipmi_user": "admin",
                                         "ipmi_password": password})


def state(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def test_fence_powers_off_confirms_and_powers_on(bmc: Callable[..., Path]) -> None:
    path = bmc("bmc-node2")
    IpmiFence().fence(target(), timeout=10)
    doc = state(path)
    assert doc["log"] == ["chassis power off", "chassis power status", "chassis power on"]
    assert doc["power"] == "on"
    assert "s3cret" not in doc["last_argv"]  # the password goes by environment (-E), not argv


def test_fence_waits_until_the_power_is_really_off(bmc: Callable[..., Path]) -> None:
    path = bmc("bmc-node2", off_delay=1.5)
    IpmiFence().fence(target(), timeout=10)
    log = state(path)["log"]
    assert log[0] == "chassis power off" and log[-1] == "chassis power on"
    assert log.count("chassis power status") >= 2  # "on" first, then "off"


def test_a_node_that_stays_on_is_not_fenced(bmc: Callable[..., Path]) -> None:
    path = bmc("bmc-node2", stuck_on=True)
    with pytest.raises(BackendError, match="not confirmed off"):
        IpmiFence().fence(target(), timeout=2.5)
    log = state(path)["log"]
    assert "chassis power on" not in log and log[0] == "chassis power off"


def test_bmc_refusal_and_silence_are_failures(bmc: Callable[..., Path]) -> None:
    path = bmc("bmc-node2")
    with pytest.raises(BackendError, match="Unable to establish"):
        IpmiFence().fence(target(password="wrong"), timeout=5)
    assert state(path)["power"] == "on" and "log" not in state(path)
    with pytest.raises(BackendError, match="Unable to establish"):
        IpmiFence().fence(target(host="bmc-unreachable"), timeout=5)
    with pytest.raises(BackendError, match="no complete IPMI settings"):
        IpmiFence().fence(FenceTarget("node2", "ipmi", {"ipmi_host": "bmc-node2"}), timeout=5)
