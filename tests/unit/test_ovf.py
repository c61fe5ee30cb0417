"""Reading OVF descriptors and manifests (pvcd.domain.ovf): what pvcd takes from an untrusted
.ovf, and what it refuses (DTDs, entities, path-like file names, unknown units and formats)."""

from __future__ import annotations

import hashlib

import pytest

from pvcd.domain.errors import InvalidValue
from pvcd.domain.ovf import (
    MAX_OVF_BYTES,
    OvfDisk,
    allocation_factor,
    check_member_name,
    image_format,
    parse_manifest,
    parse_ovf,
)
from tests.ova_files import ovf_text

GIB = 1 << 30


def test_the_first_virtual_system_gives_vcpus_memory_graphics_and_disks_in_order() -> None:
    system = parse_ovf(ovf_text([("b.vmdk", 20), ("a.vmdk", 5)], vcpus=4, memory_mb=2048,
                                graphics=True).encode())
    assert (system.vcpus, system.memory_mb, system.graphics) == (4, 2048, True)
    assert system.disks == (OvfDisk("b.vmdk", 20 * GIB, "vmdk"), OvfDisk("a.vmdk", 5 * GIB, "vmdk"))
    assert parse_ovf(ovf_text([], graphics=False).encode()).graphics is False


def test_memory_units_are_honoured() -> None:
    text = ovf_text([]).replace("byte * 2^20", "byte * 2^30").replace(
        "<rasd:VirtualQuantity>512</rasd:VirtualQuantity>",
        "<rasd:VirtualQuantity>2</rasd:VirtualQuantity>")
    assert parse_ovf(text.encode()).memory_mb == 2048
    assert allocation_factor("MegaBytes") == 1 << 20
    assert allocation_factor("byte") == allocation_factor(None) == 1
    with pytest.raises(InvalidValue, match="unknown OVF allocation unit"):
        allocation_factor("furlongs")
    with pytest.raises(InvalidValue, match="out of range"):
        allocation_factor("byte * 2^400")


@pytest.mark.parametrize("prolog", [
    '<!DOCTYPE Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>',
    '<!DOCTYPE Envelope SYSTEM "file:///etc/passwd">',
    '<!DOCTYPE Envelope>',
])
def test_a_document_type_or_entity_is_refused(prolog: str) -> None:
    with pytest.raises(InvalidValue, match="without DTDs or entities"):
        parse_ovf(ovf_text([("d.vmdk", 1)], prolog=prolog).encode())


def test_bad_descriptors_say_what_is_wrong() -> None:
    with pytest.raises(InvalidValue, match="not well-formed"):
        parse_ovf(b"<Envelope><unclosed></Envelope>")
    with pytest.raises(InvalidValue, match="not an OVF Envelope"):
        parse_ovf(b"<Other/>")
    with pytest.raises(InvalidValue, match="no VirtualSystem"):
        parse_ovf(b"<Envelope/>")
    with pytest.raises(InvalidValue, match="at most"):
        parse_ovf(b" " * (MAX_OVF_BYTES + 1))
    no_cpu = ovf_text([]).replace("<rasd:ResourceType>3</rasd:ResourceType>", "")
    with pytest.raises(InvalidValue, match="no vCPUs"):
        parse_ovf(no_cpu.encode())
    missing_disk = ovf_text([("d.vmdk", 1)]).replace("ovf:/disk/vmdisk0", "ovf:/disk/nope")
    with pytest.raises(InvalidValue, match="no Disk"):
        parse_ovf(missing_disk.encode())


@pytest.mark.parametrize("name", ["../etc/passwd", "dir/disk.vmdk", "/abs.vmdk", "..", "",
                                  "a\nb.vmdk", "x" * 256, "c:\\disk.vmdk"])
def test_path_like_or_odd_file_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidValue, match="not allowed"):
        check_member_name(name)


def test_a_disk_file_name_from_the_ovf_is_checked() -> None:
    text = ovf_text([("disk.vmdk", 1)]).replace('ovf:href="disk.vmdk"', 'ovf:href="../x.vmdk"')
    with pytest.raises(InvalidValue, match="not allowed"):
        parse_ovf(text.encode())


def test_image_formats_from_the_uri_or_the_extension() -> None:
    assert image_format("http://www.vmware.com/interfaces/specifications/vmdk.html#sparse",
                        "x") == "vmdk"
    assert image_format(None, "disk.qcow2") == "qcow2"
    assert image_format("", "disk.vhd") == "vpc"
    with pytest.raises(InvalidValue, match="no image format"):
        image_format("http://example/iso", "disk.iso")


def test_manifest_lines_sha1_and_sha256() -> None:
    sha1, sha256 = hashlib.sha1(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    text = f"SHA1(x.ovf)= {sha1}\n\nSHA256(d.vmdk)= {sha256.upper()}\n".encode()
    assert parse_manifest(text) == {"x.ovf": ("sha1", sha1), "d.vmdk": ("sha256", sha256)}
    with pytest.raises(InvalidValue, match="line 1"):
        parse_manifest(b"MD5(x)= abc\n")
    with pytest.raises(InvalidValue, match="not 64"):
        parse_manifest(f"SHA256(x)= {sha1}\n".encode())
    with pytest.raises(InvalidValue, match="not allowed"):
        parse_manifest(f"SHA1(../x)= {sha1}\n".encode())
