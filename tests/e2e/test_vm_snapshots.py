"""VM snapshots (extensions.md §5.1, §5.2) on a QEMU lab with a throwaway Ceph: one real
libvirtd, tiny QEMU guests whose two disks are RBD volumes that QEMU opens through the lab's
libvirt secret.

The bytes are written and read with Ceph's own `rbd` (import, bench, export), so a rollback is
judged by the volumes' checksums, and the guest's pause by its own libvirtd (libvirt-python on
the node's URI), not by what the API says. The tiny guest has no guest agent, so `auto` falls
back to a pause (checked within the 2 s probe). The consistency test boots the lab's Linux guest
image (a copy with a counter service added by `debugfs`) from an RBD volume; it is skipped when
that image is not cached (`scripts/guest-image` builds it). Needs root (libvirtd, QEMU).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvcd.lab.ceph import ThrowawayCeph
from pvcd.lab.guest_image import DEFAULT_CACHE_DIR, GuestRecipe
from pvcd.lab.lab import Lab
from pvcd.lab.libvirt_ceph import LIBVIRT_CEPH_USER
from pvcd.lab.linux_guest import linux_guest_xml, rbd_disk
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
        self.info = self.lab.up(nodes=1, ceph=True, libvirt="qemu", fencing="none",
                                ceph_memstore_gib=2)
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

    def disks(self, volumes: list[str]) -> str:
        """RBD disks vda, vdb, ... on `volumes`, as QEMU opens them through the lab's secret."""
        assert self.ceph.ports is not None and self.info.qemu is not None
        monitors = [("127.0.0.1", self.ceph.ports.mon_v1)]
        return "".join(rbd_disk(POOL, volume, monitors, LIBVIRT_CEPH_USER,
                                self.info.qemu["ceph_secret_uuid"], dev=f"vd{chr(97 + i)}")
                       for i, volume in enumerate(volumes))

    def define(self, name: str, disks: list[str], running: bool, xml: str | None = None) -> str:
        uuid = str(uuidlib.uuid4())
        assert self.info.qemu is not None
        if xml is None:
            xml = qemu_guest_xml(name, uuid, kernel=Path(self.info.qemu["kernel"])).replace(
                "<devices>", "<devices>" + self.disks(disks), 1)
        else:
            uuid = re.search(r"<uuid>([^<]+)</uuid>", xml).group(1)  # type: ignore[union-attr]
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


# the guest's counter: one number, written to vdb and then to vdc, forever (O_DIRECT: each write
# is on the disk before the next begins), so at any instant vdb holds the value of vdc or the
# next one
COUNTER_SCRIPT = """#!/bin/sh
echo "pvcd-counter: counting"
i=0
while :; do
  i=$((i+1))
  printf '%020d\\n' "$i" > /run/pvcd-counter
  dd if=/run/pvcd-counter of=/dev/vdb bs=512 count=1 conv=sync oflag=direct status=none
  dd if=/run/pvcd-counter of=/dev/vdc bs=512 count=1 conv=sync oflag=direct status=none
done
"""
COUNTER_UNIT = """[Unit]
Description=pvcd snapshot test: a counter on vdb and vdc
DefaultDependencies=no
BindsTo=dev-vdb.device dev-vdc.device
After=dev-vdb.device dev-vdc.device

[Service]
ExecStart=/usr/local/sbin/pvcd-counter
StandardOutput=journal+console
"""
BOOT_TIMEOUT = 600.0  # TCG on a loaded 2-core machine


def counter_image(workdir: Path) -> Path | None:
    """A copy of the cached Linux guest image with the counter service (started early, from
    sysinit.target) and without cloud-init (no metadata service here); None without a cached
    image."""
    recipe = GuestRecipe()
    cached = DEFAULT_CACHE_DIR / recipe.image_name()
    if not cached.exists() or not shutil.which("debugfs"):
        return None
    image = workdir / "counter.raw"
    subprocess.run(["cp", "--sparse=always", str(cached), str(image)], check=True, timeout=300)
    (workdir / "pvcd-counter").write_text(COUNTER_SCRIPT)
    (workdir / "pvcd-counter.service").write_text(COUNTER_UNIT)
    (workdir / "empty").write_text("")
    unit = "/etc/systemd/system/pvcd-counter.service"
    commands = "\n".join([
        f"write {workdir}/pvcd-counter /usr/local/sbin/pvcd-counter",
        "sif /usr/local/sbin/pvcd-counter mode 0100755",
        f"write {workdir}/pvcd-counter.service {unit}",
        f"symlink /etc/systemd/system/sysinit.target.wants/pvcd-counter.service {unit}",
        f"write {workdir}/empty /etc/cloud/cloud-init.disabled", ""])
    (workdir / "debugfs.cmds").write_text(commands)
    result = subprocess.run(["debugfs", "-w", "-f", str(workdir / "debugfs.cmds"),
                             f"{image}?offset={recipe.layout.root_offset}"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "rror" not in result.stderr, result.stderr
    return image


@pytest.mark.timeout(900)
def test_a_paused_snapshot_of_a_guest_writing_two_disks_holds_one_counter(
        snap_lab: SnapshotLab) -> None:
    lab = snap_lab
    image = counter_image(lab.workdir)
    if image is None:
        pytest.skip("the Linux guest image is not cached (scripts/guest-image builds it)")
    started = time.monotonic()
    serial = lab.workdir / "countervm.serial"
    lab.rbd.run("import", "--no-progress", str(image), f"{POOL}/counter_root")
    image.unlink()
    wait_until(lambda: lab.call("GET", f"/storage/ceph/volume/{POOL}/counter_root")
               .status_code == 200, timeout=TIMEOUT, interval=0.2)
    for volume in ("counter_b", "counter_c"):
        ok(lab.call("POST", "/storage/ceph/volume", pool=POOL, volume=volume, size="4M"))
    xml = re.sub(r"<interface.*?</interface>", "", linux_guest_xml(
        "countervm", lab.disks(["counter_root", "counter_b", "counter_c"]), bridge="none",
        mac="52:54:00:00:00:01", serial_log=serial), flags=re.S)
    lab.define("countervm", [], running=True, xml=xml)

    def counter(spec: str) -> int:
        return int(lab.rbd.run("export", "--no-progress", spec, "-")[:20] or b"0")

    # the guest booted and counts (TCG: minutes on a loaded machine)
    wait_until(lambda: "pvcd-counter: counting" in serial.read_text(errors="replace"),
               timeout=BOOT_TIMEOUT, interval=2)
    first = wait_until(lambda: counter(f"{POOL}/counter_b"), timeout=TIMEOUT, interval=0.5)
    wait_until(lambda: counter(f"{POOL}/counter_b") > first, timeout=TIMEOUT, interval=0.5)
    print(f"the guest counts after {time.monotonic() - started:.0f} s")

    done = ok(lab.call("POST", "/vm/countervm/snapshot", snapshot_name="one",
                       consistency="pause", wait=1))
    assert done["result"]["consistency"] == "crash-consistent"
    b, c = counter(f"{POOL}/counter_b@one"), counter(f"{POOL}/counter_c@one")
    print(f"paused snapshot: vdb {b}, vdc {c}")
    assert c > 0 and b - c in (0, 1), (b, c)  # one instant: vdc was written or is next
    # resumed: the guest counts on
    wait_until(lambda: counter(f"{POOL}/counter_c") > c, timeout=TIMEOUT, interval=0.5)

    ok(lab.call("POST", "/vm/countervm/state", state="stop", wait=1))
    wait_until(lambda: lab.vm("countervm")["running_on"] is None, timeout=TIMEOUT)
    ok(lab.call("POST", "/vm/countervm/snapshot/rollback", snapshot_name="one", wait=1))
    assert (counter(f"{POOL}/counter_b"), counter(f"{POOL}/counter_c")) == (b, c)
    ok(lab.call("DELETE", "/vm/countervm", delete_disks=1))


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
