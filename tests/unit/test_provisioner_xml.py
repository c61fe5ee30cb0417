"""The provisioner's generated domain XML (extensions.md §3.9): it passes pvcd's own XML rules,
libvirt's test driver defines it, and every element the spec lists is there with its values."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

import libvirt
import pytest

from pvcd.provisioner_xml import (
    CephAccess,
    GeneratedDisk,
    GeneratedDomain,
    domain_xml,
    monitors_from_conf,
)
from pvcd.vmxml import parse_domain_xml

SECRET = "8c5b4d9e-0f3a-4c1e-9a7b-2d6e5f4a3b21"
CEPH = CephAccess("libvirt", SECRET, (("10.0.0.1", 6789), ("10.0.0.2", 6789)))


def domain(**changes: object) -> GeneratedDomain:
    base = dict(name="web1", uuid=str(uuid.uuid4()), description="made by <pvcd> & co",
                memory_mib=512, vcpus=2, domain_type="qemu", arch="x86_64",
                disks=[GeneratedDisk("vms", "web1_sda", "sda"),
                       GeneratedDisk("vms", "web1_vdb", "vdb")],
                nics=[(100, "52:54:00:12:34:56"), (200, "52:54:01:a0:01:01")],
                serial_log="/var/log/libvirt/pvcd/web1.log", vnc_bind="127.0.0.1")
    base.update(changes)
    return GeneratedDomain(**base)  # type: ignore[arg-type]


def test_the_xml_has_what_the_spec_lists_and_passes_vmxml() -> None:
    spec = domain()
    text = domain_xml(spec, CEPH)
    definition = parse_domain_xml(text)
    assert (definition.name, definition.uuid, definition.memory, definition.vcpu) == \
        ("web1", spec.uuid, 512, 2)
    assert definition.domain_type == "qemu" and definition.arch == "x86_64"
    assert definition.machine is None  # libvirt's default machine type
    assert definition.description == "made by <pvcd> & co"
    assert definition.rbd_volumes() == [("vms", "web1_sda"), ("vms", "web1_vdb")]
    root = ET.fromstring(text)
    disks = root.findall("devices/disk")
    assert [(d.find("target").get("dev"), d.find("target").get("bus")) for d in disks] == \
        [("sda", "scsi"), ("vdb", "virtio")]
    for disk in disks:
        assert disk.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none",
                                              "discard": "unmap"}
        assert [(h.get("name"), h.get("port")) for h in disk.findall("source/host")] == \
            [("10.0.0.1", "6789"), ("10.0.0.2", "6789")]
        assert disk.find("auth").get("username") == "libvirt"
        assert disk.find("auth/secret").attrib == {"type": "ceph", "uuid": SECRET}
    nics = root.findall("devices/interface")
    assert [(n.find("source").get("bridge"), n.find("mac").get("address"),
             n.find("model").get("type")) for n in nics] == \
        [("vmbr100", "52:54:00:12:34:56", "virtio"), ("vmbr200", "52:54:01:a0:01:01", "virtio")]
    assert root.find("devices/controller").attrib == {"type": "scsi", "index": "0",
                                                      "model": "virtio-scsi"}
    assert root.find("devices/serial/log").get("file") == "/var/log/libvirt/pvcd/web1.log"
    graphics = root.find("devices/graphics")
    assert (graphics.get("type"), graphics.get("autoport"), graphics.get("listen")) == \
        ("vnc", "yes", "127.0.0.1")
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert root.find("devices/rng").get("model") == "virtio"
    assert root.find("devices/memballoon").get("model") == "virtio"


def test_without_serial_vnc_or_secret_those_elements_are_left_out() -> None:
    text = domain_xml(domain(serial_log=None, vnc_bind=None), CephAccess("libvirt", None, ()))
    root = ET.fromstring(text)
    assert root.find("devices/serial") is None and root.find("devices/graphics") is None
    assert root.find("devices/disk/auth") is None
    parse_domain_xml(text)


def test_a_cdrom_is_read_only_scsi_and_boots_first() -> None:
    text = domain_xml(domain(cdrom=("isos", "debian.iso")), CEPH)
    root = ET.fromstring(text)
    cdrom = root.find("devices/disk[@device='cdrom']")
    assert cdrom is not None and cdrom.find("readonly") is not None
    assert cdrom.find("source").get("name") == "isos/debian.iso"
    assert cdrom.find("target").get("bus") == "scsi"
    orders = {d.find("target").get("dev"): d.find("boot").get("order")
              for d in root.findall("devices/disk")}
    assert orders == {"sdaa": "1", "sda": "2", "vdb": "3"}


@pytest.mark.parametrize("domain_type", ["qemu", "kvm"])
def test_libvirts_test_driver_defines_it(domain_type: str) -> None:
    libvirt.registerErrorHandler(lambda *_: None, None)
    connection = libvirt.open("test:///default")
    try:
        spec = domain(domain_type=domain_type, cdrom=("isos", "debian.iso"))
        defined = connection.defineXML(domain_xml(spec, CEPH))
        assert defined.UUIDString() == spec.uuid
        back = ET.fromstring(defined.XMLDesc())
        assert len(back.findall("devices/disk")) == 3
        assert len(back.findall("devices/interface")) == 2
        defined.undefine()
    finally:
        connection.close()


@pytest.mark.parametrize(("conf", "expected"), [
    ("[global]\nmon host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]\n", (("127.0.0.1", 6789),)),
    ("[global]\n  mon_host = 10.0.0.1,10.0.0.2:6790 10.0.0.3\n",
     (("10.0.0.1", 6789), ("10.0.0.2", 6790), ("10.0.0.3", 6789))),
    ("mon host = [v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0] [v2:10.0.0.2:3300/0]\n",
     (("10.0.0.1", 6789), ("10.0.0.2", 3300))),
    ("[global]\nfsid = x\n", ()),
])
def test_monitors_come_from_ceph_conf(conf: str, expected: tuple[tuple[str, int], ...]) -> None:
    assert monitors_from_conf(conf) == expected
