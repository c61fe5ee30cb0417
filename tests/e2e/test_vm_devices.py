"""Device hot-plug (extensions.md §11.2) on a QEMU lab: a disk and a NIC attached to a running
tiny guest, and detached again, through the API; every effect read back from the node's own
libvirtd (the live domain and its persistent definition), the stored XML (`/vm/<vm>/dump`) and
the node's bridge; the guest's boot stamp shows it was never restarted.

The tiny guest answers no PCI unplug request, so the devices sit on buses that need no guest
cooperation to leave: a file-backed SCSI disk on a virtio-scsi controller and a `usb-net` NIC on
a USB controller (a PCI device would stay in the live domain until the guest lets it go, which
the task reports: tested with a virtio disk). One lab (one node, network namespaces, Ceph for an
RBD volume) for the whole module. Needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvcd.lab import netns
from pvcd.lab.ceph import ThrowawayCeph
from pvcd.lab.lab import Lab
from pvcd.lab.libvirt_ceph import LIBVIRT_CEPH_USER
from pvcd.lab.linux_guest import rbd_disk
from pvcd.lab.netns import SERVICE_IP
from pvcd.lab.qemu_guest import qemu_guest_xml, read_boot_stamp
from tests.e2e.labclient import LabClient, wait_until

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.ceph, pytest.mark.needs_root]

NODE = "node1"
VNI = 10
# buses a guest need not release (see the module docstring)
BUSES = ("<controller type='usb' model='qemu-xhci'/>"
         "<controller type='scsi' model='virtio-scsi'/>")


class DeviceLab:
    def __init__(self) -> None:
        # short: libvirtd's unix socket paths are limited to 107 bytes
        self.workdir = Path(f"/tmp/pvcd-e2e-dev-{uuidlib.uuid4().hex[:6]}")
        self.lab = Lab(self.workdir)
        self.info = self.lab.up(nodes=1, libvirt="qemu", network=True, ceph=True,
                                fencing="none")
        self.api = LabClient(self.info)
        config = yaml.safe_load(Path(self.info.node(NODE).config).read_text())
        self.uri = str(config["drivers"]["libvirt"]["uri"])

    def down(self) -> None:
        self.lab.down()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def define(self, name: str, running: bool = True) -> str:
        assert self.info.qemu is not None
        uuid = str(uuidlib.uuid4())
        xml = qemu_guest_xml(name, uuid, kernel=Path(self.info.qemu["kernel"])).replace(
            "<controller type='usb' model='none'/>", BUSES)
        values = {"xml": xml, "node": NODE}
        ok(self.api.post("/vm", data=values))
        if running:
            wait_until(lambda: self.vm(name)["running_on"] == NODE, timeout=15)
            wait_until(lambda: self.boot_stamp(uuid), timeout=10)
        else:
            # (with `wait`: answered once its node has it stopped)
            ok(self.api.post(f"/vm/{name}/state", data={"state": "stop", "wait": "true"}))
        return uuid

    def vm(self, name: str) -> dict[str, Any]:
        return dict(ok(self.api.get(f"/vm/{name}"))[0])

    def domain(self, uuid: str, persistent: bool = False) -> str:
        """The domain's XML in the node's libvirtd: live, or its persistent definition."""
        conn = libvirt.open(self.uri)
        try:
            flags = libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0
            return str(conn.lookupByUUIDString(uuid).XMLDesc(flags)).replace('"', "'")
        finally:
            conn.close()

    def boot_stamp(self, uuid: str) -> int | None:
        conn = libvirt.open(self.uri)
        try:
            return read_boot_stamp(conn.lookupByUUIDString(uuid))
        finally:
            conn.close()

    def stored(self, name: str) -> str:
        response = self.api.get(f"/vm/{name}/dump")
        assert response.status_code == 200, response.text
        return response.text.replace('"', "'")

    def bridge_ports(self) -> list[str]:
        out = netns.run("ip", "-n", self.lab.network().node_ns(NODE), "-j", "link", "show",
                        "master", f"vmbr{VNI}").stdout or "[]"
        return [link["ifname"] for link in json.loads(out)]

    def rbd_volume(self, volume: str, target: str) -> str:
        """A new 8 MiB RBD volume in pool `vms` (made through the API), as a SCSI disk with
        cephx through the lab's libvirt secret."""
        assert self.info.ceph is not None and self.info.qemu is not None
        if "vms" not in [p["name"] for p in ok(self.api.get("/storage/ceph/pool"))]:
            ok(self.api.post("/storage/ceph/pool", data={"pool": "vms", "pgs": 16}))
        ok(self.api.post("/storage/ceph/volume", data={"pool": "vms", "volume": volume,
                                                       "size": "8M"}))
        ceph = ThrowawayCeph.load(self.info.ceph["workdir"])
        return rbd_disk("vms", volume, [(SERVICE_IP, ceph.ports.mon_v1)], LIBVIRT_CEPH_USER,
                        self.info.qemu["ceph_secret_uuid"], dev=target).replace(
                            "bus='virtio'", "bus='scsi'")

    def change(self, method: str, name: str, xml: str, **values: str) -> Any:
        # (a PCI unplug waits ≈ 5 s for the guest before the task ends)
        return self.api.call(method, f"/vm/{name}/device", data={"xml": xml, **values},
                             timeout=30)


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def dlab() -> Iterator[DeviceLab]:
    if os.geteuid() != 0:
        pytest.skip("the QEMU lab mounts and starts libvirtd: run as root")
    lab = DeviceLab()
    try:
        ok(lab.api.post("/network", data={
            "vni": VNI, "description": "devices", "nettype": "managed",
            "ip4_network": "10.77.0.0/24", "ip4_gateway": "10.77.0.1"}))
        wait_until(lambda: f"vmbr{VNI}" in netns.links(lab.lab.network().node_ns(NODE)),
                   timeout=10)
        yield lab
    finally:
        lab.down()


def disk_xml(path: Path, target: str) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{path}'/><target dev='{target}' bus='scsi'/></disk>")


def nic_xml(mac: str) -> str:
    return (f"<interface type='bridge'><mac address='{mac}'/><source bridge='vmbr{VNI}'/>"
            "<model type='usb-net'/><address type='usb' bus='0' port='3'/></interface>")


def image(lab: DeviceLab, name: str) -> Path:
    path = lab.workdir / f"{name}.img"
    path.write_bytes(b"\0" * (1 << 20))
    return path


def test_a_disk_and_a_nic_hot_plugged_into_a_running_guest_and_out(dlab: DeviceLab) -> None:
    lab = dlab
    uuid = lab.define("hot")
    stamp = lab.boot_stamp(uuid)
    disk = disk_xml(image(lab, "hot-data"), "sdb")
    # attach, following the task to its end (`wait`)
    done = ok(lab.change("POST", "hot", disk, wait="true"))
    assert done["result"]["device"] == "disk sdb" and done["result"]["node"] == NODE
    task = ok(lab.api.get(f"/tasks/{done['task_id']}"))
    assert (task["name"], task["state"], task["run_on"]) == ("vm.device_attach", "success", NODE)
    assert "dev='sdb'" in lab.domain(uuid) and "dev='sdb'" in lab.stored("hot")
    assert [d["dev"] for d in lab.vm("hot")["disks"]] == ["sdb"]
    # the node defines the stored XML (the next boot), and leaves the guest running
    wait_until(lambda: "dev='sdb'" in lab.domain(uuid, persistent=True), timeout=10)
    mac = "52:54:00:77:00:01"
    ports = lab.bridge_ports()
    done = ok(lab.change("POST", "hot", nic_xml(mac), wait="true"))
    assert done["result"]["device"] == f"interface {mac}"
    assert mac in lab.domain(uuid) and mac in lab.stored("hot")
    assert len(lab.bridge_ports()) == len(ports) + 1  # its tap joined the network's bridge
    assert lab.vm("hot")["networks"][0]["source"] == f"vmbr{VNI}"

    # detach: a disk by its target, a NIC by its MAC
    done = ok(lab.change("DELETE", "hot", "<disk><target dev='sdb'/></disk>", wait="true"))
    assert done["result"]["released"] is True
    done = ok(lab.change("DELETE", "hot", f"<interface type='bridge'><mac address='{mac}'/>"
                                          "</interface>", wait="true"))
    assert done["result"]["released"] is True
    live = lab.domain(uuid)
    assert "dev='sdb'" not in live and mac not in live
    assert "dev='sdb'" not in lab.stored("hot") and mac not in lab.stored("hot")
    assert sorted(lab.bridge_ports()) == sorted(ports)
    wait_until(lambda: "sdb" not in lab.domain(uuid, persistent=True) and
               mac not in lab.domain(uuid, persistent=True), timeout=10)
    assert lab.boot_stamp(uuid) == stamp  # never restarted
    assert lab.vm("hot")["running_on"] == NODE


def test_an_rbd_volume_hot_plugged_into_a_running_guest_and_out(dlab: DeviceLab) -> None:
    lab = dlab
    uuid = lab.define("rbd")
    stamp = lab.boot_stamp(uuid)
    missing = lab.change("POST", "rbd", lab.rbd_volume("present", "sdb").replace(
        "vms/present", "vms/absent"))
    assert missing.status_code == 510 and "vms/absent not found" in missing.json()["message"]
    done = ok(lab.change("POST", "rbd", lab.rbd_volume("data", "sdc"), wait="true"))
    assert done["result"]["device"] == "disk sdc"
    live = lab.domain(uuid)
    assert "name='vms/data'" in live and "dev='sdc'" in live
    assert "name='vms/data'" in lab.stored("rbd")
    ok(lab.change("DELETE", "rbd", "<disk><target dev='sdc'/></disk>", wait="true"))
    assert "vms/data" not in lab.domain(uuid) and "vms/data" not in lab.stored("rbd")
    assert lab.boot_stamp(uuid) == stamp


def test_a_pci_disk_the_guest_does_not_release_is_reported(dlab: DeviceLab) -> None:
    lab = dlab
    uuid = lab.define("pci")
    virtio = disk_xml(image(lab, "pci-data"), "vdb").replace("bus='scsi'", "bus='virtio'")
    ok(lab.change("POST", "pci", virtio, wait="true"))
    assert "dev='vdb'" in lab.domain(uuid)
    done = ok(lab.change("DELETE", "pci", "<disk><target dev='vdb'/></disk>", wait="true"))
    # the tiny guest answers no ACPI unplug request: libvirt gave up waiting for it
    assert done["result"]["released"] is False and "not released it yet" in done["message"]
    assert "dev='vdb'" in lab.domain(uuid) and "dev='vdb'" not in lab.stored("pci")
    wait_until(lambda: "vdb" not in lab.domain(uuid, persistent=True), timeout=10)
    # a restart (here: stop and start) boots it without the disk
    ok(lab.api.post("/vm/pci/state", data={"state": "stop", "wait": "true"}))
    ok(lab.api.post("/vm/pci/state", data={"state": "start", "wait": "true"}))
    assert "dev='vdb'" not in lab.domain(uuid)


def test_a_failing_hot_plug_leaves_the_stored_xml_as_it_was(dlab: DeviceLab) -> None:
    lab = dlab
    uuid = lab.define("refused")
    before = lab.stored("refused")
    missing = lab.workdir / "no-such.img"
    response = lab.change("POST", "refused", disk_xml(missing, "sdc"), wait="true")
    assert response.status_code == 510, response.text
    failed = response.json()
    assert "stored XML was restored" in failed["message"]
    assert str(missing) in failed["message"] or "No such file" in failed["message"]
    task = ok(lab.api.get(f"/tasks/{failed['task_id']}"))
    assert (task["name"], task["state"], task["error"]) == \
        ("vm.device_attach", "failure", "BackendError")
    assert lab.stored("refused") == before
    assert "sdc" not in lab.domain(uuid)
    # the node may have defined the XML while the task ran: it defines the restored one too
    wait_until(lambda: "sdc" not in lab.domain(uuid, persistent=True), timeout=10)
    assert lab.vm("refused")["running_on"] == NODE


def test_a_stopped_vm_gets_the_device_in_its_xml_and_has_it_when_it_starts(
        dlab: DeviceLab) -> None:
    lab = dlab
    uuid = lab.define("cold", running=False)
    response = lab.change("POST", "cold", disk_xml(image(lab, "cold-data"), "sdd"))
    message = ok(response)["message"]
    assert "not running" in message and "task_id" not in response.json()
    assert "dev='sdd'" in lab.stored("cold")
    wait_until(lambda: "dev='sdd'" in lab.domain(uuid, persistent=True), timeout=10)
    ok(lab.api.post("/vm/cold/state", data={"state": "start"}))
    wait_until(lambda: lab.vm("cold")["running_on"] == NODE, timeout=15)
    assert "dev='sdd'" in lab.domain(uuid)
