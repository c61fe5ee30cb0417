"""VM snapshots (extensions.md §5.1, §5.2) on a QEMU lab with a throwaway Ceph: one real
libvirtd, tiny QEMU guests whose two disks are RBD volumes that QEMU opens through the lab's
libvirt secret.

The bytes are written and read with Ceph's own `rbd` (import, bench, export), so a rollback is
judged by the volumes' checksums, and the guest's pause by its own libvirtd (libvirt-python on
the node's URI), not by what the API says. The tiny guest has no guest agent, so `auto` falls
back to a pause (checked within the 2 s probe). Needs root (libvirtd, QEMU).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvcd.lab.ceph import ThrowawayCeph
from pvcd.lab.lab import Lab
from pvcd.lab.libvirt_ceph import LIBVIRT_CEPH_USER
from pvcd.lab.linux_guest import rbd_disk
from pvcd.lab.qemu_guest import qemu_guest_xml
from tests.e2e.labclient import LabClient, ok, refused, wait_until
from tests.e2e.test_volume_copies import Rbd

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.ceph, pytest.mark.needs_root]

TIMEOUT = 60
MIB = 1 << 20
POOL = "vms"


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("the QEMU lab mounts and starts libvirtd: run as root")
    for tool in ("libvirtd", "qemu-system-x86_64", "tini", "rbd"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/setup"


class SnapshotLab:
    """One QEMU node with Ceph; VMs of the tiny guest with two RBD disks each."""

    def __init__(self) -> None:
        # short: libvirtd's unix socket paths are limited to 107 bytes
        self.workdir = Path(f"/tmp/pvcd-e2e-snap-{uuidlib.uuid4().hex[:6]}")
        self.lab = Lab(self.workdir)
        self.info = self.lab.up(nodes=1, ceph=True, libvirt="qemu", fencing="none")
        self.api = LabClient(self.info)
        self.rbd = Rbd(self.lab)
        assert self.info.ceph is not None and self.info.qemu is not None
        self.ceph = ThrowawayCeph.load(self.info.ceph["workdir"])
        ok(self.call("POST", "/storage/ceph/pool", pool=POOL, pgs=16))

    def down(self) -> None:
        self.lab.down()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def call(self, method: str, path: str, **values: Any) -> Any:
        return self.api.call(method, path, params=values, timeout=TIMEOUT)

    def domain(self, uuid: str) -> Any:
        config = yaml.safe_load(Path(self.info.node("node1").config).read_text())
        conn = libvirt.open(config["drivers"]["libvirt"]["uri"])
        return conn, conn.lookupByUUIDString(uuid)

    def volume(self, name: str, content: bytes) -> None:
        """Volume `name` holding `content` (rbd import, adopted by the lab's storage sync)."""
        image = self.workdir / f"{name}.raw"
        image.write_bytes(content)
        self.rbd.run("import", "--no-progress", str(image), f"{POOL}/{name}")
        image.unlink()
        wait_until(lambda: self.call("GET", f"/storage/ceph/volume/{POOL}/{name}")
                   .status_code == 200, timeout=TIMEOUT, interval=0.2)

    def define(self, name: str, disks: list[str], running: bool) -> str:
        uuid = str(uuidlib.uuid4())
        assert self.ceph.ports is not None and self.info.qemu is not None
        monitors = [("127.0.0.1", self.ceph.ports.mon_v1)]
        devices = "".join(rbd_disk(POOL, disk, monitors, LIBVIRT_CEPH_USER,
                                   self.info.qemu["ceph_secret_uuid"], dev=f"vd{chr(97 + i)}")
                          for i, disk in enumerate(disks))
        xml = qemu_guest_xml(name, uuid, kernel=Path(self.info.qemu["kernel"])).replace(
            "<devices>", "<devices>" + devices, 1)
        ok(self.call("POST", "/vm", xml=xml))
        if not running:
            ok(self.call("POST", f"/vm/{name}/state", state="stop", wait=1))
        wait_until(lambda: (self.vm(name)["running_on"] is not None) == running,
                   timeout=TIMEOUT)
        return uuid

    def vm(self, name: str) -> dict[str, Any]:
        return dict(ok(self.call("GET", f"/vm/{name}"))[0])

    def checksum(self, spec: str) -> str:
        return hashlib.sha256(self.rbd.export(spec)).hexdigest()

    def rbd_snapshots(self, volume: str) -> list[str]:
        return [s["name"] for s in json.loads(self.rbd.run(
            "snap", "ls", f"{POOL}/{volume}", "--format", "json"))]


@pytest.fixture(scope="module")
def snap_lab() -> Iterator[SnapshotLab]:
    lab = SnapshotLab()
    try:
        yield lab
    finally:
        lab.down()


def test_rollback_restores_both_disks_byte_for_byte_and_the_xml(snap_lab: SnapshotLab) -> None:
    lab = snap_lab
    first, second = os.urandom(2 * MIB), os.urandom(MIB) + b"pvcd" * (MIB // 4)
    lab.volume("data_a", first)
    lab.volume("data_b", second)
    uuid = lab.define("datavm", ["data_a", "data_b"], running=False)
    before = {v: lab.checksum(f"{POOL}/{v}") for v in ("data_a", "data_b")}
    assert before["data_a"] == hashlib.sha256(first).hexdigest()

    done = ok(lab.call("POST", "/vm/datavm/snapshot", snapshot_name="known", wait=1))
    assert done["result"] == {"name": "known", "consistency": "stopped",
                              "rbd_snapshots": [f"{POOL}/data_a@known", f"{POOL}/data_b@known"]}
    listed = ok(lab.call("GET", "/vm/datavm/snapshot"))
    assert [s["name"] for s in listed] == ["known"] and listed[0]["xml_diff_lines"] == []
    assert lab.vm("datavm")["snapshots"][0]["rbd_snapshots"] == done["result"]["rbd_snapshots"]
    # refused, nothing changed: the name is taken; an invalid name; rollback of an unknown one
    refused(lab.call("POST", "/vm/datavm/snapshot", snapshot_name="known"), "already has")
    refused(lab.call("POST", "/vm/datavm/snapshot", snapshot_name="bad/name"), "invalid")
    refused(lab.call("POST", "/vm/datavm/snapshot/rollback", snapshot_name="nope"),
            "no snapshot 'nope'")
    assert lab.rbd_snapshots("data_a") == ["known"]

    # the data and the XML change after the snapshot
    lab.rbd.overwrite(f"{POOL}/data_a")
    lab.rbd.overwrite(f"{POOL}/data_b")
    assert lab.checksum(f"{POOL}/data_a") != before["data_a"]
    assert lab.checksum(f"{POOL}/data_b") != before["data_b"]
    old_xml = lab.vm("datavm")["xml"]
    new_xml = old_xml.replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>")
    assert new_xml != old_xml
    ok(lab.call("PUT", "/vm/datavm", xml=new_xml))
    diff = lab.vm("datavm")["snapshots"][0]["xml_diff_lines"]
    assert any(line.startswith("-") and "<vcpu>2</vcpu>" in line for line in diff), diff
    assert any(line.startswith("+") and "<vcpu>1</vcpu>" in line for line in diff), diff

    # a running VM is not rolled back
    ok(lab.call("POST", "/vm/datavm/state", state="start", wait=1))
    refused(lab.call("POST", "/vm/datavm/snapshot/rollback", snapshot_name="known"), "stop")
    ok(lab.call("POST", "/vm/datavm/state", state="stop", wait=1))
    wait_until(lambda: lab.vm("datavm")["running_on"] is None, timeout=TIMEOUT)

    done = ok(lab.call("POST", "/vm/datavm/snapshot/rollback", snapshot_name="known", wait=1))
    assert done["result"]["rolled_back"] == [f"{POOL}/data_a", f"{POOL}/data_b"]
    assert {v: lab.checksum(f"{POOL}/{v}") for v in ("data_a", "data_b")} == before
    vm = lab.vm("datavm")
    assert vm["vcpu"] == 1 and "<vcpu>1</vcpu>" in vm["xml"] and vm["name"] == "datavm"
    assert vm["snapshots"][0]["xml_diff_lines"] == []

    # remove: the RBD snapshots, then the record
    ok(lab.call("DELETE", "/vm/datavm/snapshot", snapshot_name="known", wait=1))
    assert lab.rbd_snapshots("data_a") == [] and lab.rbd_snapshots("data_b") == []
    assert ok(lab.call("GET", "/vm/datavm/snapshot")) == []
    refused(lab.call("DELETE", "/vm/datavm/snapshot", snapshot_name="known"), "no snapshot")

    # removing the VM without its disks forgets the records; the RBD snapshots stay
    ok(lab.call("POST", "/vm/datavm/snapshot", snapshot_name="kept", wait=1))
    ok(lab.call("DELETE", "/vm/datavm"))
    assert lab.rbd_snapshots("data_a") == ["kept"]
    lab.define("datavm", ["data_a", "data_b"], running=False)  # same name, new UUID
    assert lab.vm("datavm")["snapshots"] == [] and lab.vm("datavm")["uuid"] != uuid


def test_pause_suspends_the_running_guest_and_resumes_it(snap_lab: SnapshotLab) -> None:
    lab = snap_lab
    for volume in ("run_a", "run_b"):
        lab.volume(volume, os.urandom(MIB))
    uuid = lab.define("runvm", ["run_a", "run_b"], running=True)
    conn, domain = lab.domain(uuid)
    try:
        assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        seen = watch_states(domain)
        done = ok(lab.call("POST", "/vm/runvm/snapshot", snapshot_name="paused",
                           consistency="pause", wait=1))
        states = seen.stop()
        assert done["result"]["consistency"] == "crash-consistent"
        assert (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER) in states, states
        wait_until(lambda: domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING, timeout=TIMEOUT)
        assert lab.rbd_snapshots("run_a") == ["paused"] == lab.rbd_snapshots("run_b")

        # auto: no guest agent here, so a pause after the 2 s probe (not the 30 s freeze limit)
        seen = watch_states(domain)
        started = time.monotonic()
        done = ok(lab.call("POST", "/vm/runvm/snapshot", snapshot_name="auto", wait=1))
        took = time.monotonic() - started
        states = seen.stop()
        assert done["result"]["consistency"] == "crash-consistent"
        assert (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER) in states, states
        assert took < 15, f"auto took {took:.1f} s"
        # freeze needs the guest agent: the task fails, the guest runs, nothing is left
        failed = lab.call("POST", "/vm/runvm/snapshot", snapshot_name="frozen",
                          consistency="freeze", wait=1)
        refused(failed, "agent")
        assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert lab.rbd_snapshots("run_a") == ["paused", "auto"]
        assert [s["name"] for s in lab.vm("runvm")["snapshots"]] == ["paused", "auto"]
        assert lab.vm("runvm").get("running_on") == "node1"
    finally:
        conn.close()
    ok(lab.call("DELETE", "/vm/runvm", delete_disks=1))
    refused(lab.call("GET", f"/storage/ceph/volume/{POOL}/run_a"), "not found")


class StateWatch:
    """Reads a domain's state every 5 ms on a thread until stopped: every (state, reason)."""

    def __init__(self, domain: Any) -> None:
        self.domain = domain
        self.seen: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            state = tuple(self.domain.state())
            if not self.seen or self.seen[-1] != state:
                self.seen.append((int(state[0]), int(state[1])))

    def stop(self) -> list[tuple[int, int]]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.seen


def watch_states(domain: Any) -> StateWatch:
    return StateWatch(domain)
