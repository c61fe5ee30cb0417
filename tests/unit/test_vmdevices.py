"""One device element (pvcd/vmdevices.py): what is accepted, what identifies a device, and the
domain XML with it added or removed."""

from __future__ import annotations

import pytest

from pvcd.domain.errors import InvalidValue
from pvcd.vmdevices import (
    added_device_xml,
    devices_of,
    find_device,
    parse_device_xml,
    removed_device_xml,
    with_mac,
)
from pvcd.vmxml import parse_domain_xml

DOMAIN = """<domain type='qemu'>
  <name>web</name>
  <memory unit='MiB'>64</memory>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><source file='/a.img'/><target dev='vda' bus='virtio'/></disk>
    <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='vmbr10'/></interface>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>"""


@pytest.mark.parametrize("text,message", [
    ("<disk><target dev='vdb'/></disk><disk><target dev='vdc'/></disk>",
     "must be exactly one element"),
    ("<devices><disk><target dev='vdb'/></disk></devices>", "not <devices>"),
    ("<domain type='kvm'/>", "not <domain>"),
    ("<emulator>/bin/sh</emulator>", "not <emulator>"),
    ("", "is empty"),
    ("<disk>", "not well-formed"),
    ("<!DOCTYPE d [<!ENTITY x 'y'>]><disk>&x;</disk>", "DOCTYPE or ENTITY"),
    ("<disk type='file'><source file='/b.img'/></disk>", "needs <target dev="),
    ("<disk type='network'><source protocol='rbd' name='vms'/><target dev='vdb'/></disk>",
     "pool/volume"),
    ("<interface type='bridge'><mac address='52:54:00:zz:00:01'/></interface>",
     "invalid MAC address"),
    ("<interface type='bridge'><mac address='01:54:00:00:00:01'/></interface>", "multicast"),
    ("<disk>" * 70 + "</disk>" * 70, "nested deeper"),
])
def test_what_is_not_one_device_is_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidValue, match=message.replace("(", r"\(")):
        parse_device_xml(text)


def test_a_device_is_identified_as_libvirt_detaches_it() -> None:
    # a disk by its target dev, whatever its source
    assert find_device(DOMAIN, parse_device_xml("<disk><target dev='vda'/></disk>")) is not None
    assert find_device(DOMAIN, parse_device_xml("<disk><target dev='vdb'/></disk>")) is None
    # an interface by its MAC, in any case
    found = find_device(DOMAIN, parse_device_xml(
        "<interface type='bridge'><mac address='52:54:00:00:00:01'/></interface>"))
    assert found is not None and found.bridge == "vmbr10"
    assert find_device(DOMAIN, parse_device_xml(
        "<interface type='bridge'><mac address='52:54:00:00:00:02'/></interface>")) is None
    # anything else by its whole XML: attribute quotes and whitespace do not count
    assert find_device(DOMAIN, parse_device_xml(
        '<rng model="virtio">\n  <backend model="random">/dev/urandom</backend>\n</rng>'))
    assert find_device(DOMAIN, parse_device_xml(
        "<rng model='virtio'><backend model='random'>/dev/random</backend></rng>")) is None
    assert [d.label for d in devices_of(DOMAIN)] == [
        "disk vda", "interface 52:54:00:00:00:01", "<rng> device"]


def test_add_then_remove_gives_the_same_domain_back() -> None:
    disk = parse_device_xml("<disk type='file'><source file='/b.img'/>"
                            "<target dev='vdb' bus='virtio'/></disk>")
    added = added_device_xml(DOMAIN, disk)
    definition = parse_domain_xml(added)
    assert [d.dev for d in definition.disks] == ["vda", "vdb"]
    assert "</disk>\n  </devices>" in added  # the closing tag keeps its indentation
    removed = removed_device_xml(added, parse_device_xml("<disk><target dev='vdb'/></disk>"))
    # as it was, but for the serializer's quotes and empty-element spaces
    assert removed.replace('"', "'").replace(" />", "/>") == DOMAIN
    with pytest.raises(InvalidValue, match="no disk vdb to detach"):
        removed_device_xml(removed, disk)


def test_a_domain_without_devices_gets_them() -> None:
    bare = "<domain type='qemu'><name>x</name><memory>65536</memory></domain>"
    rng = parse_device_xml("<rng model='virtio'><backend model='random'/></rng>")
    assert [d.tag for d in devices_of(added_device_xml(bare, rng))] == ["rng"]


def test_an_interface_without_a_mac_gets_the_one_given_first() -> None:
    nic = parse_device_xml("<interface type='bridge'>\n  <source bridge='vmbr10'/>\n"
                           "</interface>")
    assert nic.mac is None
    named = with_mac(nic, "52:54:00:ab:cd:ef")
    assert named.mac == "52:54:00:ab:cd:ef" and named.bridge == "vmbr10"
    assert named.xml.index("<mac") < named.xml.index("<source")
