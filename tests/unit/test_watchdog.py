"""Self-fencing by watchdog, piece by piece: the node's rule for petting, the primary's wait, the
config's limits and the kernel device API's numbers. The whole is proven on a lab
(tests/e2e/test_watchdog.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from pvcd.config import parse_config
from pvcd.controllers.self_fence import SelfFence
from pvcd.daemon import NodeDaemon
from pvcd.domain.errors import BackendError, ConfigError
from pvcd.drivers import watchdog as device_api
from pvcd.drivers.fence import FenceTarget, WatchdogFence, fence_driver
from pvcd.lab.watchdog import LabWatchdog, read_state
from pvcd.plugins import Plugins
from tests.unit.test_config import error_of, minimal_with


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    """<asm-generic/ioctl.h>: _IOC(dir, type, nr, size)."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


def test_the_device_api_numbers_are_the_kernels() -> None:
    read, write = 2, 1
    assert _ioc(read, "W", 5, 4) == device_api.WDIOC_KEEPALIVE
    assert _ioc(read | write, "W", 6, 4) == device_api.WDIOC_SETTIMEOUT
    assert _ioc(read, "W", 7, 4) == device_api.WDIOC_GETTIMEOUT


def test_a_device_that_cannot_be_armed_says_so(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-watchdog"
    plain.write_text("")
    with pytest.raises(BackendError, match="cannot arm it"):
        device_api.LinuxWatchdog(str(plain)).arm(30)  # a file answers no watchdog ioctl
    with pytest.raises(BackendError, match="cannot arm it"):
        device_api.LinuxWatchdog(str(tmp_path / "missing")).arm(30)


def fence_with(tmp_path: Path, interval: float = 1.0) -> tuple[SelfFence, Path]:
    device = tmp_path / "watchdog"
    return SelfFence("hv1", LabWatchdog(str(device)), timeout=10, interval=interval), device


def petted(device: Path) -> float:
    state = read_state(device)
    assert state is not None and state["armed"]
    return float(state["petted"])


def test_the_watchdog_is_armed_only_right_after_a_read(tmp_path: Path) -> None:
    fence, device = fence_with(tmp_path, interval=0.5)
    with pytest.raises(TimeoutError):
        fence.arm(read_started=time.monotonic() - 0.6)  # a read older than an interval
    assert read_state(device) is None and fence.taken is None
    fence.arm(read_started=time.monotonic())
    assert fence.taken == 10 and read_state(device)["timeout"] == 10  # type: ignore[index]


def test_it_is_petted_only_after_a_keepalive_answered_within_an_interval(
        tmp_path: Path) -> None:
    fence, device = fence_with(tmp_path, interval=0.5)
    fence.arm(time.monotonic())
    armed_at = petted(device)
    fence.proven_alive(write_started=time.monotonic() - 0.6)  # answered too late
    assert petted(device) == armed_at
    fence.proven_alive(write_started=time.monotonic())
    assert petted(device) > armed_at


def test_once_declared_dead_it_is_never_petted_nor_disarmed(tmp_path: Path) -> None:
    fence, device = fence_with(tmp_path)
    fence.arm(time.monotonic())
    fence.declared_dead("marked dead")
    last = petted(device)
    fence.proven_alive(time.monotonic())
    fence.stop()  # even a clean stop now leaves it to reset the machine
    assert petted(device) == last  # still armed, not petted


def test_a_clean_stop_disarms_it(tmp_path: Path) -> None:
    fence, device = fence_with(tmp_path)
    fence.arm(time.monotonic())
    fence.stop()
    state = read_state(device)
    assert state is not None and not state["armed"]


def test_the_primary_waits_out_the_published_timeout_and_interval() -> None:
    waited: list[float] = []
    driver = WatchdogFence(sleep=waited.append)
    driver.fence(FenceTarget("hv1", "watchdog", {"watchdog_timeout": 30,
                                                 "keepalive_interval": 2.0}), timeout=60)
    assert waited == [30 + 2.0 + WatchdogFence.MARGIN]
    assert isinstance(fence_driver("watchdog"), WatchdogFence)  # a production driver


@pytest.mark.parametrize("params", [
    {},  # a node that never armed one
    {"watchdog_timeout": "30", "keepalive_interval": 2.0},
    {"watchdog_timeout": True, "keepalive_interval": 2.0},
    {"watchdog_timeout": 30, "keepalive_interval": -1},
    {"watchdog_timeout": 10**9, "keepalive_interval": 2.0},
])
def test_published_watchdog_settings_are_checked_before_any_wait(params: dict[str, object]
                                                                  ) -> None:
    waited: list[float] = []
    with pytest.raises(BackendError, match="no watchdog timeout configured"):
        WatchdogFence(sleep=waited.append).fence(FenceTarget("hv1", "watchdog", params), 60)
    assert waited == []


def test_a_watchdog_target_needs_its_timeout_and_a_device_an_absolute_path() -> None:
    targets = [{"node": "hv2", "driver": "watchdog"}]
    assert "targets[0].watchdog_timeout" in error_of(minimal_with("fencing.targets", targets))
    assert "watchdog_device" in error_of(minimal_with("fencing.watchdog_device", "dev/wd"))


def test_a_device_that_takes_a_longer_timeout_is_refused(tmp_path: Path) -> None:
    class Rounding(LabWatchdog):
        def arm(self, timeout: int) -> int:
            return super().arm(timeout + 1)  # as some devices round up

    fence = SelfFence("hv1", Rounding(str(tmp_path / "watchdog")), timeout=10, interval=1.0)
    with pytest.raises(BackendError, match="took a timeout of 11 s"):
        fence.arm(time.monotonic())
    assert fence.taken is None


def test_a_watchdog_timeout_of_a_few_keepalives_is_refused(tmp_path: Path) -> None:
    data = minimal_with("fencing.watchdog_device", str(tmp_path / "watchdog"))
    data["fencing"]["watchdog_timeout"] = 5
    data["timing"] = {"keepalive_interval": 2.0}
    data["drivers"] = {"libvirt": {"uri": "test:///default"}}
    with pytest.raises(ConfigError, match="less than 3 keepalive intervals"):
        NodeDaemon(parse_config(yaml.safe_load(yaml.safe_dump(data)), "pvcd.yaml"),
                   plugins=Plugins(watchdog=LabWatchdog))
