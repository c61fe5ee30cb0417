"""What `build_storage` hands the composition root, and how a node routes OSD work between its
block devices and a plugged-in provisioner (the lab's memstore OSDs), without Ceph."""

from __future__ import annotations

import subprocess
import sys
from typing import cast

import pytest

from pvcd.config import CephDriverSection
from pvcd.controllers.storage import build_storage
from pvcd.controllers.storage.osds import NodeOsdProvisioner
from pvcd.domain.errors import InvalidValue
from pvcd.state.cache import StateCache
from pvcd.state.schema import Paths
from pvcd.state.store import Store
from pvcd.state.view import ClusterView


class Recorder:
    """An OSD provisioner that records what it was asked to do."""

    def __init__(self, first_id: int, devices: tuple[str, ...] = ()) -> None:
        self.devices = devices
        self.next_id = first_id
        self.mine: set[int] = set()
        self.calls: list[tuple[str, object]] = []

    def takes(self, device: str) -> bool:
        return device in self.devices

    def owns(self, osd_id: int) -> bool:
        return osd_id in self.mine

    def create(self, device: str, weight: float) -> int:
        self.calls.append(("create", device))
        self.mine.add(self.next_id)
        self.next_id += 1
        return self.next_id - 1

    def ensure(self, osd_id: int) -> bool:
        self.calls.append(("ensure", osd_id))
        return False

    def stop(self, osd_id: int) -> None:
        self.calls.append(("stop", osd_id))
        self.mine.discard(osd_id)  # as the lab: it forgets a stopped OSD

    def release(self, osd_id: int) -> None:
        self.calls.append(("release", osd_id))


def build(config: CephDriverSection, coordinator: bool) -> tuple[list[str], list[str], list[str]]:
    paths = Paths("/t")
    view = ClusterView(cast(StateCache, None), paths)  # nothing is read while building
    wiring = build_storage("node1", view, cast(Store, None), config, 30.0, lambda: 0.0,
                           coordinator)
    names = [controller.name for controller, _ in wiring.controllers]
    prefixes = [watch.prefix for _, watches in wiring.controllers for watch in watches]
    return names, prefixes, [service.name for service in wiring.services]


def test_a_node_without_ceph_gets_nothing() -> None:
    assert build(CephDriverSection(enabled=False), coordinator=True) == ([], [], [])


def test_every_node_runs_its_osd_work_and_a_coordinator_the_primary_service() -> None:
    config = CephDriverSection(enabled=True, osd_launcher="process")
    names, prefixes, services = build(config, coordinator=False)
    assert names == ["storage-node", "storage-osd"] and services == []
    assert prefixes == ["/t/storage/requests/", "/t/storage/osds/"]
    names, prefixes, services = build(config, coordinator=True)
    assert names == ["storage-node", "storage-osd", "storage", "storage-sync"]
    assert prefixes == ["/t/storage/requests/", "/t/storage/osds/", "/t/storage/requests/"]
    assert services == ["storage"]


def test_the_storage_package_loads_no_lab_module() -> None:
    script = ("import sys, pvcd.controllers.storage; "
              "print([m for m in sys.modules if m.startswith('pvcd.lab')])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_devices_go_to_the_block_devices_unless_the_plug_in_takes_them() -> None:
    devices, lab = Recorder(0), Recorder(10, devices=("memstore",))
    node = NodeOsdProvisioner("node1", devices, lab)
    assert node.create("/dev/sdb", 1.0) == 0
    assert node.create("memstore", 1.0) == 10
    assert devices.calls == [("create", "/dev/sdb")] and lab.calls == [("create", "memstore")]
    node.ensure(0)
    node.ensure(10)
    assert devices.calls[-1] == ("ensure", 0) and lab.calls[-1] == ("ensure", 10)


def test_a_stopped_osd_is_released_by_whoever_stopped_it() -> None:
    devices, lab = Recorder(0), Recorder(10, devices=("memstore",))
    node = NodeOsdProvisioner("node1", devices, lab)
    osd = node.create("memstore", 1.0)
    node.stop(osd)  # the lab no longer owns it afterwards
    node.release(osd)
    assert lab.calls[-2:] == [("stop", osd), ("release", osd)]
    assert devices.calls == []


def test_memstore_without_a_plug_in_is_refused() -> None:
    node = NodeOsdProvisioner("node1", Recorder(0))
    with pytest.raises(InvalidValue, match="only for lab nodes"):
        node.create("memstore", 1.0)
