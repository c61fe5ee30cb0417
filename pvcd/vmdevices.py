"""One libvirt device element, as `POST`/`DELETE /vm/<vm>/device` take it (extensions.md §11.2),
and the VM XML with it added or removed.

The device XML comes from a client, so it is parsed with the hardening of `pvcd.vmxml` (no DTD
or entities, size and depth bounded) and must be exactly one element libvirt knows as a device.
What identifies a device is libvirt's own rule for detaching: a disk by its target `dev`, an
interface by its MAC, anything else by its whole XML (compared in canonical form: attribute
order and whitespace between elements do not count). That one rule decides both which stored
device a detach removes and which attach would duplicate a device already there.

Pure XML here; what the cluster must agree to (volumes, networks, MACs of other VMs) is judged
by `pvcd.state.vm_devices`, and the resulting domain is validated whole by
`pvcd.vmxml.parse_domain_xml` like any VM XML.
"""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from pvcd.domain.errors import InvalidValue
from pvcd.vmxml import parse_safely

WHAT = "the device XML"
# the children of libvirt's <devices> that are devices (not <emulator>)
DEVICE_TAGS = ("disk", "interface", "controller", "hostdev", "serial", "parallel", "channel",
               "console", "input", "rng", "sound", "video", "watchdog", "memballoon",
               "graphics", "filesystem", "smartcard", "redirdev", "hub", "tpm", "shmem",
               "memory", "iommu", "vsock", "panic", "lease", "audio")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


@dataclass(frozen=True)
class Device:
    """A parsed device element: its XML and what identifies it."""

    tag: str
    xml: str  # the element as it is stored and handed to libvirt
    target: str | None = None  # a disk's target dev
    mac: str | None = None  # an interface's MAC, lower case
    interface_type: str | None = None
    bridge: str | None = None  # an interface's source bridge
    rbd: tuple[str, str] | None = None  # an RBD disk's (pool, volume), without a snapshot

    @property
    def label(self) -> str:
        """The device in a message: "disk sdb", "interface 52:54:00:12:34:56", "<rng>"."""
        if self.tag == "disk":
            return f"disk {self.target}"
        if self.tag == "interface" and self.mac:
            return f"interface {self.mac}"
        return f"<{self.tag}> device"


def parse_device_xml(text: str) -> Device:
    """`text` as one device element; InvalidValue says what is wrong."""
    return _device(parse_safely(text, WHAT))


def with_mac(device: Device, mac: str) -> Device:
    """An interface given without a MAC, with `mac`: libvirt would pick a different random
    one for the live guest and for each definition, so pvcd picks one and stores it."""
    element = ET.fromstring(device.xml)
    child = ET.Element("mac", address=mac)
    child.tail = element.text  # the indentation of what was the first child
    element.insert(0, child)
    return _device(element)


def canonical(element: ET.Element) -> str:
    """An element in canonical form: attributes sorted, whitespace-only text dropped."""
    return ET.canonicalize(ET.tostring(element, encoding="unicode"), strip_text=True)


def devices_of(domain_xml: str) -> list[Device]:
    """The devices in a (validated) domain XML, in order; elements that are no device of
    `DEVICE_TAGS` (the emulator) are left out."""
    root = parse_safely(domain_xml)
    return [_device(element) for element in root.findall("devices/*")
            if element.tag in DEVICE_TAGS]


def same_device(device: Device, other: Device) -> bool:
    """Whether `other` is the device `device` identifies (the module docstring's rule)."""
    if device.tag != other.tag:
        return False
    if device.tag == "disk":
        return device.target == other.target
    if device.tag == "interface" and device.mac:
        return device.mac == other.mac
    return canonical(ET.fromstring(device.xml)) == canonical(ET.fromstring(other.xml))


def find_device(domain_xml: str, device: Device) -> Device | None:
    """The device of `domain_xml` that `device` identifies, or None."""
    return next((d for d in devices_of(domain_xml) if same_device(device, d)), None)


def added_device_xml(domain_xml: str, device: Device) -> str:
    """`domain_xml` with `device` appended to `<devices>` (made if missing), the indentation
    of the other devices kept."""
    root = parse_safely(domain_xml)
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    element = ET.fromstring(device.xml)
    if len(devices):
        last = devices[-1]
        element.tail = last.tail
        last.tail = devices[-2].tail if len(devices) > 1 else devices.text
    devices.append(element)
    return ET.tostring(root, encoding="unicode")


def removed_device_xml(domain_xml: str, device: Device) -> str:
    """`domain_xml` without the device `device` identifies; InvalidValue when it has none."""
    root = parse_safely(domain_xml)
    devices = root.find("devices")
    children = [] if devices is None else list(devices)
    for index, element in enumerate(children):
        if element.tag in DEVICE_TAGS and same_device(device, _device(element)):
            assert devices is not None
            if index == len(children) - 1 and index > 0:
                children[index - 1].tail = element.tail  # the closing tag's indentation
            devices.remove(element)
            return ET.tostring(root, encoding="unicode")
    raise InvalidValue(f"the VM has no {device.label} to detach; nothing was changed")


def _device(element: ET.Element) -> Device:
    tag = element.tag
    if tag not in DEVICE_TAGS:
        raise InvalidValue(f"{WHAT} must be one libvirt device element ({', '.join(DEVICE_TAGS)})"
                           f", not <{tag}>")
    bare = copy.copy(element)
    bare.tail = None
    xml = ET.tostring(bare, encoding="unicode")
    if tag == "disk":
        return _disk(element, xml)
    if tag == "interface":
        return _interface(element, xml)
    return Device(tag=tag, xml=xml)


def _disk(element: ET.Element, xml: str) -> Device:
    target = element.find("target")
    dev = None if target is None else (target.get("dev") or "").strip()
    if not dev:
        raise InvalidValue(f"a <disk> needs <target dev='...'/> (e.g. vdb or sdb): {WHAT} has "
                           "none; the target names the disk when it is detached")
    rbd = None
    source = element.find("source")
    if source is not None and source.get("protocol") == "rbd":
        pool, _, volume = (source.get("name") or "").partition("/")
        volume = volume.split("@", 1)[0]
        if not pool or not volume:
            raise InvalidValue(f"the RBD disk {dev} needs <source name='pool/volume'/>, not "
                               f"{source.get('name')!r}")
        rbd = (pool, volume)
    return Device(tag="disk", xml=xml, target=dev, rbd=rbd)


def _interface(element: ET.Element, xml: str) -> Device:
    mac_element = element.find("mac")
    mac = None
    if mac_element is not None:
        written = mac_element.get("address") or ""
        mac = written.strip().lower()
        if not _MAC.fullmatch(mac):
            raise InvalidValue(f"invalid MAC address {written!r} in {WHAT}: use the form "
                               "52:54:00:12:34:56 (or leave <mac> out to get one)")
        if int(mac[:2], 16) & 1:
            raise InvalidValue(f"MAC address {mac} is a multicast address; an interface needs "
                               "a unicast one (an even first octet)")
    source = element.find("source")
    return Device(tag="interface", xml=xml, mac=mac, interface_type=element.get("type"),
                  bridge=None if source is None else source.get("bridge"))
