"""Domain XML validation: what is accepted, what each field becomes, and every refusal."""

from __future__ import annotations

import re
import uuid as uuidlib
import xml.etree.ElementTree as ET

import pytest

from pvcd import vmxml
from pvcd.domain.errors import InvalidValue
from pvcd.lab.guest import tiny_guest_xml
from pvcd.vmxml import MAX_XML_BYTES, parse_domain_xml

FULL_XML = """<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web1</name>
  <uuid>6F1E3F1C-3B0E-4F53-9C1C-2A4E0B6F7D21</uuid>
  <description>front end</description>
  <memory unit='GiB'>2</memory>
  <currentMemory unit='GiB'>1</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
  </os>
  <features><acpi/><apic/><pae/></features>
  <cpu><topology sockets='1' dies='1' cores='2' threads='2'/></cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='vms/web1_sda'><host name='10.0.0.1' port='6789'/></source>
      <target dev='sda' bus='scsi'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='vms/web1_sdb'/>
      <target dev='sdb' bus='scsi'/>
    </disk>
    <disk type='network' device='cdrom'>
      <source protocol='rbd' name='images/base@golden'/>
      <target dev='sdc' bus='sata'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='nbd' name='export'/>
      <target dev='sdd' bus='scsi'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/vg0/web1'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <source pool='default' volume='web1-data'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <controller type='scsi' index='0' model='virtio-scsi'/>
    <controller type='usb' index='0'/>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='vmbr100'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'>
      <source network='default'/>
    </interface>
    <interface type='direct'>
      <mac address='52:54:00:ab:cd:ef'/>
      <source dev='eth0' mode='bridge'/>
      <model type='e1000'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
  <qemu:commandline><qemu:arg value='-no-hpet'/></qemu:commandline>
</domain>
"""


def domain(inner: str, attributes: str = "type='kvm'") -> str:
    return f"<domain {attributes}>{inner}</domain>"


def minimal(memory: str = "<memory>65536</memory>", name: str = "<name>vm</name>",
            extra: str = "") -> str:
    return domain(f"{name}{memory}<os><type>hvm</type></os>{extra}")


# valid XML
def test_the_tiny_lab_guest_is_valid_and_gets_a_new_uuid_after_its_name() -> None:
    definition = parse_domain_xml(tiny_guest_xml("tiny"))
    assert definition.name == "tiny"
    assert uuidlib.UUID(definition.uuid).version == 4
    assert (definition.memory, definition.vcpu, definition.domain_type) == (64, 1, "qemu")
    assert definition.console == "pty"
    root = ET.fromstring(definition.xml)
    assert [child.tag for child in root][:3] == ["name", "uuid", "memory"]
    assert root.findtext("uuid") == definition.uuid
    assert "  <uuid>" in definition.xml  # indented like its neighbours


def test_two_parses_without_uuid_get_different_uuids() -> None:
    assert parse_domain_xml(minimal()).uuid != parse_domain_xml(minimal()).uuid


def test_every_objects_md_field_of_a_full_definition() -> None:
    definition = parse_domain_xml(FULL_XML)
    assert (definition.name, definition.uuid) == ("web1", "6f1e3f1c-3b0e-4f53-9c1c-2a4e0b6f7d21")
    assert definition.to_api_fields() == {
        "description": "front end",
        "memory": 2048,
        "vcpu": 4,
        "vcpu_topology": "1/2/2",
        "networks": [
            {"type": "bridge", "mac": "52:54:00:12:34:56", "source": "vmbr100",
             "model": "virtio"},
            {"type": "network", "mac": None, "source": "default", "model": None},
            {"type": "direct", "mac": "52:54:00:ab:cd:ef", "source": "eth0", "model": "e1000"},
        ],
        "type": "kvm",
        "arch": "x86_64",
        "machine": "pc-q35-7.2",
        "console": "pty",
        "emulator": "/usr/bin/qemu-system-x86_64",
        "features": ["acpi", "apic", "pae"],
        "disks": [
            {"type": "network", "name": "vms/web1_sda", "dev": "sda", "bus": "scsi"},
            {"type": "network", "name": "vms/web1_sdb", "dev": "sdb", "bus": "scsi"},
            {"type": "network", "name": "images/base@golden", "dev": "sdc", "bus": "sata"},
            {"type": "network", "name": "export", "dev": "sdd", "bus": "scsi"},
            {"type": "file", "name": "/var/lib/libvirt/images/web1.qcow2", "dev": "vda",
             "bus": "virtio"},
            {"type": "block", "name": "/dev/vg0/web1", "dev": "vdb", "bus": "virtio"},
            {"type": "volume", "name": "default/web1-data", "dev": "vdc", "bus": "virtio"},
        ],
        "controllers": [{"type": "scsi", "model": "virtio-scsi"},
                        {"type": "usb", "model": None}],
    }


def test_rbd_volumes_are_the_rbd_images_the_vm_owns() -> None:
    definition = parse_domain_xml(FULL_XML)
    # not the snapshot it boots from, not the nbd export, not file/block/volume disks
    assert definition.rbd_volumes() == [("vms", "web1_sda"), ("vms", "web1_sdb")]


def test_an_rbd_volume_named_twice_is_listed_once() -> None:
    disk = ("<disk type='network'><source protocol='rbd' name='p/v'/>"
            "<target dev='{}' bus='virtio'/></disk>")
    xml = minimal(extra=f"<devices>{disk.format('vda')}{disk.format('vdb')}</devices>")
    assert parse_domain_xml(xml).rbd_volumes() == [("p", "v")]


def test_the_optional_fields_of_a_minimal_definition_are_null_or_empty() -> None:
    fields = parse_domain_xml(minimal()).to_api_fields()
    assert fields == {"description": None, "memory": 64, "vcpu": 1, "vcpu_topology": None,
                      "networks": [], "type": "kvm", "arch": None, "machine": None,
                      "console": None, "emulator": None, "features": [], "disks": [],
                      "controllers": []}


def test_a_serial_port_is_the_console_when_there_is_no_console_element() -> None:
    xml = minimal(extra="<devices><serial type='tcp'><target port='0'/></serial></devices>")
    assert parse_domain_xml(xml).console == "tcp"


def test_api_fields_are_a_fresh_copy() -> None:
    definition = parse_domain_xml(FULL_XML)
    definition.to_api_fields()["networks"].clear()
    assert len(definition.to_api_fields()["networks"]) == 3


def test_namespaced_elements_keep_their_prefixes() -> None:
    xml = parse_domain_xml(FULL_XML).xml
    assert "<qemu:commandline><qemu:arg value=\"-no-hpet\" /></qemu:commandline>" in xml
    assert "xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\"" in xml
    assert "ns0" not in xml


def test_parsing_the_stored_xml_again_changes_nothing() -> None:
    first = parse_domain_xml(tiny_guest_xml("again"))
    second = parse_domain_xml(first.xml)
    assert (second.xml, second.uuid) == (first.xml, first.uuid)


@pytest.mark.parametrize("amount,unit,mib", [
    ("65536", None, 64),  # KiB by default
    ("1048576", "KiB", 1024),
    ("1048576", "k", 1024),
    ("1048576", "kib", 1024),
    ("512", "MiB", 512),
    ("512", "M", 512),
    ("2", "GiB", 2048),
    ("2", "G", 2048),
    ("1", "TiB", 1024 * 1024),
    ("1073741824", "b", 1024),
    ("1073741824", "bytes", 1024),
    ("1", "GB", 954),  # 10^9 bytes, rounded up
    ("1000", "MB", 954),
    ("1536", "KiB", 2),  # rounded up
    ("1", "KiB", 1),
    (" 64 ", "MiB", 64),
])
def test_memory_is_converted_to_mib(amount: str, unit: str | None, mib: int) -> None:
    unit_attribute = f" unit='{unit}'" if unit else ""
    definition = parse_domain_xml(minimal(memory=f"<memory{unit_attribute}>{amount}</memory>"))
    assert definition.memory == mib
    assert definition.to_api_fields()["memory"] == mib


@pytest.mark.parametrize("written,expected", [
    ("6F1E3F1C-3B0E-4F53-9C1C-2A4E0B6F7D21", "6f1e3f1c-3b0e-4f53-9c1c-2a4e0b6f7d21"),
    ("6f1e3f1c3b0e4f539c1c2a4e0b6f7d21", "6f1e3f1c-3b0e-4f53-9c1c-2a4e0b6f7d21"),
    ("  6f1e3f1c-3b0e-4f53-9c1c-2a4e0b6f7d21\n", "6f1e3f1c-3b0e-4f53-9c1c-2a4e0b6f7d21"),
])
def test_a_written_uuid_is_normalised_in_the_stored_xml(written: str, expected: str) -> None:
    definition = parse_domain_xml(minimal(extra=f"<uuid>{written}</uuid>"))
    assert definition.uuid == expected
    assert ET.fromstring(definition.xml).findtext("uuid") == expected


def test_a_missing_or_empty_uuid_becomes_the_default_uuid() -> None:
    default = "0E5D7A34-31D4-4B59-8E37-6D5A3B0F6C11"
    for xml in (minimal(), minimal(extra="<uuid/>"), minimal(extra="<uuid> </uuid>")):
        definition = parse_domain_xml(xml, default_uuid=default)
        assert definition.uuid == default.lower()
        assert ET.fromstring(definition.xml).findtext("uuid") == default.lower()


def test_a_written_uuid_wins_over_the_default_uuid() -> None:
    written = "6f1e3f1c-3b0e-4f53-9c1c-2a4e0b6f7d21"
    definition = parse_domain_xml(minimal(extra=f"<uuid>{written}</uuid>"),
                                  default_uuid=str(uuidlib.uuid4()))
    assert definition.uuid == written


@pytest.mark.parametrize("name", ["a", "web 1", "x" * 200, "vm-ü.01_a", "a:b@c"])
def test_acceptable_names(name: str) -> None:
    assert parse_domain_xml(minimal(name=f"<name>{name}</name>")).name == name


def test_a_document_of_exactly_the_size_limit_is_accepted() -> None:
    xml = minimal(extra="<description></description>")
    padding = MAX_XML_BYTES - len(xml.encode())
    xml = xml.replace("<description>", "<description>" + "d" * padding)
    assert len(xml.encode()) == MAX_XML_BYTES
    assert len(parse_domain_xml(xml).description or "") == padding


def test_an_xml_declaration_is_accepted() -> None:
    xml = "<?xml version='1.0' encoding='UTF-8'?>\n" + minimal()
    assert parse_domain_xml(xml).name == "vm"


# refusals
DTD_REFUSAL = "must not contain DOCTYPE or ENTITY declarations"


@pytest.mark.parametrize("xml", [
    "<!DOCTYPE domain>" + minimal(),
    "<!doctype domain>" + minimal(),
    "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
    "<domain type='kvm'><name>&e;</name></domain>",
    "<!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>"
    "<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'>]>" + minimal(name="<name>&c;</name>"),
    "<!DOCTYPE d [<!ENTITY % p SYSTEM 'http://127.0.0.1:1/evil.dtd'> %p;]>" + minimal(),
    "<!DOCTYPE d SYSTEM 'http://127.0.0.1:1/evil.dtd'>" + minimal(),
    minimal().replace("<os>", "<!ENTITY x 'y'><os>"),
])
def test_dtds_and_entities_are_refused_outright(xml: str) -> None:
    with pytest.raises(InvalidValue, match=DTD_REFUSAL):
        parse_domain_xml(xml)


@pytest.mark.parametrize("xml,message", [
    ("", "empty"),
    ("  \n ", "empty"),
    ("<domain", "not well-formed"),
    ("not xml at all", "not well-formed: syntax error"),
    ("<domain type='kvm'><name>x</name>", "not well-formed"),
    ("<domain type='kvm'><name>x</nom></domain>", "not well-formed: mismatched tag"),
    (minimal() + "<domain/>", "must be exactly one element"),
    ("<domain type='kvm'><name>&undefined;</name></domain>", "undefined entity"),
    ("<network><name>x</name></network>", "must have a <domain> root element, not <network>"),
    (domain("<name>x</name><memory>1024</memory>", attributes=""), "needs a type attribute"),
    (domain("<name>x</name><memory>1024</memory>", attributes="type=''"),
     "needs a type attribute"),
    ("<domain type='kvm'><memory>1</memory></domain>", "has no <name>"),
    (minimal(name="<name></name>"), "has no <name>"),
    (minimal(name="<name>  \t </name>"), "has no <name>"),
    (minimal(name="<name> web1</name>"), "no leading or trailing whitespace"),
    (minimal(name="<name>a/b</name>"), "no '/'"),
    (minimal(name="<name>a&#10;b</name>"), "no control characters"),
    (minimal(name="<name>" + "x" * 201 + "</name>"), "at most 200 characters, not 201"),
    (minimal(extra="<uuid>not-a-uuid</uuid>"), "invalid UUID 'not-a-uuid' in the VM XML"),
    (minimal(extra="<uuid>6f1e3f1c-3b0e-4f53-9c1c-2a4e0b6f7d2</uuid>"), "invalid UUID"),
    (minimal(extra="<uuid>+6f1e3f1c3b0e4f539c1c2a4e0b6f7d2</uuid>"), "invalid UUID"),
    (minimal(extra="<uuid>6f1e_3f1c3b0e4f539c1c2a4e0b6f7d2</uuid>"), "invalid UUID"),
    (minimal(extra="<uuid>{6f1e3f1c-3b0e-4f53-9c1c-2a4e0b6f7d21}</uuid>"), "invalid UUID"),
    (minimal(memory=""), "has no <memory>"),
    (minimal(memory="<memory>lots</memory>"), "invalid <memory> 'lots'"),
    (minimal(memory="<memory>-1</memory>"), "invalid <memory> '-1'"),
    (minimal(memory="<memory>1.5</memory>"), "invalid <memory> '1.5'"),
    (minimal(memory="<memory></memory>"), "invalid <memory> ''"),
    (minimal(memory="<memory>0</memory>"), "must not be 0"),
    (minimal(memory="<memory unit='furlongs'>1</memory>"), "unknown memory unit 'furlongs'"),
    (minimal(memory="<memory unit='KiBB'>1</memory>"), "unknown memory unit 'KiBB'"),
    (minimal(memory="<memory unit='EiB'>16</memory>"), "larger than libvirt accepts"),
    (minimal(extra="<vcpu>0</vcpu>"), "invalid <vcpu> '0'"),
    (minimal(extra="<vcpu>two</vcpu>"), "invalid <vcpu> 'two'"),
    ("<domain type='kvm'>" + "<a>" * 100 + "</a>" * 100 + "</domain>", "nested deeper"),
])
def test_invalid_xml_is_refused_with_a_message_saying_what_is_wrong(xml: str,
                                                                    message: str) -> None:
    with pytest.raises(InvalidValue, match=message.replace("(", r"\(")):
        parse_domain_xml(xml)


def test_a_very_deeply_nested_document_is_refused_without_a_recursion_error() -> None:
    depth = MAX_XML_BYTES // 8
    xml = "<domain type='kvm'>" + "<a>" * depth + "</a>" * depth + "</domain>"
    with pytest.raises(InvalidValue, match="nested deeper"):
        parse_domain_xml(xml)


@pytest.mark.parametrize("size", [MAX_XML_BYTES + 1, 10 * MAX_XML_BYTES])
def test_oversized_xml_is_refused_before_parsing(size: int) -> None:
    xml = minimal(extra="<description></description>")
    xml = xml.replace("<description>", "<description>" + "d" * (size - len(xml)))
    with pytest.raises(InvalidValue, match=f"larger than {MAX_XML_BYTES} bytes"):
        parse_domain_xml(xml)


def test_the_size_limit_counts_bytes_not_characters() -> None:
    xml = minimal(extra="<description></description>")
    xml = xml.replace("<description>", "<description>" + "é" * (MAX_XML_BYTES // 2))
    assert len(xml) < MAX_XML_BYTES < len(xml.encode())
    with pytest.raises(InvalidValue, match="larger than"):
        parse_domain_xml(xml)


def test_a_default_uuid_that_is_not_a_uuid_is_refused() -> None:
    with pytest.raises(InvalidValue, match="invalid UUID 'x' given as the VM's UUID"):
        parse_domain_xml(minimal(), default_uuid="x")


def test_text_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(InvalidValue, match="must be text, not bytes"):
        parse_domain_xml(minimal().encode())  # type: ignore[arg-type]


def test_text_that_cannot_be_encoded_is_refused() -> None:
    with pytest.raises(InvalidValue, match="not valid text"):
        parse_domain_xml(minimal(name="<name>a\udc80</name>"))


@pytest.mark.parametrize("xml", [
    "<!DOCTYPE domain>" + minimal(),
    "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
    "<domain type='kvm'><name>&e;</name></domain>",
    "<!DOCTYPE d [<!ENTITY % p SYSTEM 'http://127.0.0.1:1/evil.dtd'> %p;]>" + minimal(),
])
def test_the_parser_refuses_dtds_even_when_the_text_scan_misses_them(
        xml: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmxml, "_FORBIDDEN", re.compile("(?!)"))  # matches nothing
    with pytest.raises(InvalidValue, match=DTD_REFUSAL):
        parse_domain_xml(xml)


@pytest.mark.parametrize("text", [
    FULL_XML,
    tiny_guest_xml("web", str(uuidlib.uuid4())),
    "<domain type='kvm'><name>a&amp;b &lt;c&gt;</name><memory>1</memory>"
    "<description>\"quoted\" 'single' &#9;tab&#10;line&#13;cr ]]&gt;</description>"
    "<devices><x a='&quot;&amp;&lt;&gt;&#9;&#10;&#13;' b=\"it's\"/><y></y><z> </z>"
    "<qemu:commandline xmlns:qemu='urn:q'><qemu:arg value='-x'/></qemu:commandline>"
    "</devices><!-- a comment --><?pi data?>\n</domain>",
    "<domain type='kvm'>\n\t<name>é ü 𝄞 \u00a0</name>\n<memory unit='KiB'>1</memory>\n</domain>",
])
def test_the_stored_xml_is_what_elementtree_would_write(text: str) -> None:
    """The serializer made for speed writes exactly what ET.tostring writes of the same tree
    (the stored XML of every VM defined before it came)."""
    root = vmxml.parse_safely(text)
    assert vmxml.serialized(root) == ET.tostring(root, encoding="unicode")
