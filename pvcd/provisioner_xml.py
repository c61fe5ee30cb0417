"""The libvirt domain XML of a VM made by the provisioner (extensions.md §3.9 "Generated XML").

Pure: the caller gives the VM's shape (`GeneratedDomain`) and how Ceph is reached
(`CephAccess`: the libvirt user and secret, the monitors from ceph.conf); `domain_xml` returns
the text, which the create task then passes through `pvcd.vmxml.parse_domain_xml` like any XML
a client sends. Every text that goes in is an element's text or an attribute's value written by
ElementTree (escaped), never spliced into markup.

What the guest gets: `vcpu_count` vCPUs and `vram_mb` MiB; the host's architecture with
libvirt's default machine type (no `machine` attribute); one RBD network disk per template disk
(target `disk_id`, bus `scsi` for `sd*`, `virtio` for `vd*`, `discard='unmap'`, `cache='none'`);
a read-only SCSI CD-ROM booted first when asked; one virtio NIC per template network on bridge
`vmbr<vni>`; a virtio-scsi controller; a serial console logging to a file when `serial`; VNC
with autoport when `vnc`; the QEMU guest agent channel (snapshots freeze through it, §5.1);
virtio RNG and balloon.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MON_PORT = 6789  # msgr v1, which libvirt's <host> addresses


@dataclass(frozen=True)
class CephAccess:
    user: str  # drivers.ceph.libvirt_user
    secret_uuid: str | None  # drivers.ceph.libvirt_secret_uuid (None: cephx off for guests)
    monitors: tuple[tuple[str, int], ...]  # from ceph.conf's `mon host`


@dataclass(frozen=True)
class GeneratedDisk:
    pool: str
    volume: str
    dev: str  # sd[a-z] (virtio-scsi) or vd[a-z] (virtio-blk)


@dataclass(frozen=True)
class GeneratedDomain:
    name: str
    uuid: str
    description: str
    memory_mib: int
    vcpus: int
    domain_type: str  # kvm | qemu (drivers.libvirt.domain_type)
    arch: str
    disks: Sequence[GeneratedDisk] = ()
    nics: Sequence[tuple[int, str]] = ()  # (vni, mac)
    cdrom: tuple[str, str] | None = None  # (pool, volume)
    serial_log: str | None = None  # the console log file when the template has `serial`
    vnc_bind: str | None = None  # the listen address when the template has `vnc`


def domain_xml(domain: GeneratedDomain, ceph: CephAccess) -> str:
    root = ET.Element("domain", type=domain.domain_type)
    _text(root, "name", domain.name)
    _text(root, "uuid", domain.uuid)
    _text(root, "description", domain.description)
    _text(root, "memory", str(domain.memory_mib), unit="MiB")
    _text(root, "currentMemory", str(domain.memory_mib), unit="MiB")
    _text(root, "vcpu", str(domain.vcpus), placement="static")
    os_element = ET.SubElement(root, "os")
    _text(os_element, "type", "hvm", arch=domain.arch)
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    _text(root, "on_poweroff", "destroy")
    _text(root, "on_reboot", "restart")
    _text(root, "on_crash", "restart")
    devices = ET.SubElement(root, "devices")
    boot = 1
    if domain.cdrom is not None:
        _cdrom(devices, domain.cdrom, ceph)
        boot += 1
    for disk in domain.disks:
        _disk(devices, disk, ceph, boot)
        boot += 1
    ET.SubElement(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    for vni, mac in domain.nics:
        interface = ET.SubElement(devices, "interface", type="bridge")
        ET.SubElement(interface, "mac", address=mac)
        ET.SubElement(interface, "source", bridge=f"vmbr{vni}")
        ET.SubElement(interface, "model", type="virtio")
    if domain.serial_log is not None:
        serial = ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(serial, "log", file=domain.serial_log, append="on")
        ET.SubElement(serial, "target", port="0")
        console = ET.SubElement(devices, "console", type="pty")
        ET.SubElement(console, "target", type="serial", port="0")
    if domain.vnc_bind is not None:
        graphics = ET.SubElement(devices, "graphics", type="vnc", port="-1", autoport="yes",
                                 listen=domain.vnc_bind)
        ET.SubElement(graphics, "listen", type="address", address=domain.vnc_bind)
        video = ET.SubElement(devices, "video")
        ET.SubElement(video, "model", type="virtio")
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    rng = ET.SubElement(devices, "rng", model="virtio")
    _text(rng, "backend", "/dev/urandom", model="random")
    ET.SubElement(devices, "memballoon", model="virtio")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _text(parent: ET.Element, tag: str, text: str, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    element.text = text
    return element


def _rbd_source(parent: ET.Element, pool: str, volume: str, ceph: CephAccess) -> None:
    source = ET.SubElement(parent, "source", protocol="rbd", name=f"{pool}/{volume}")
    for host, port in ceph.monitors:
        ET.SubElement(source, "host", name=host, port=str(port))
    if ceph.secret_uuid is not None:
        auth = ET.SubElement(parent, "auth", username=ceph.user)
        ET.SubElement(auth, "secret", type="ceph", uuid=ceph.secret_uuid)


def _disk(devices: ET.Element, disk: GeneratedDisk, ceph: CephAccess, boot: int) -> None:
    element = ET.SubElement(devices, "disk", type="network", device="disk")
    ET.SubElement(element, "driver", name="qemu", type="raw", cache="none", discard="unmap")
    _rbd_source(element, disk.pool, disk.volume, ceph)
    bus = "scsi" if disk.dev.startswith("sd") else "virtio"
    ET.SubElement(element, "target", dev=disk.dev, bus=bus)
    ET.SubElement(element, "boot", order=str(boot))


def _cdrom(devices: ET.Element, cdrom: tuple[str, str], ceph: CephAccess) -> None:
    element = ET.SubElement(devices, "disk", type="network", device="cdrom")
    ET.SubElement(element, "driver", name="qemu", type="raw", cache="none")
    _rbd_source(element, cdrom[0], cdrom[1], ceph)
    # after every sd[a-z] a template can name (sda..sdz): no clash with a disk's target
    ET.SubElement(element, "target", dev="sdaa", bus="scsi")
    ET.SubElement(element, "readonly")
    ET.SubElement(element, "boot", order="1")


def monitors_from_conf(text: str) -> tuple[tuple[str, int], ...]:
    """The monitors in a ceph.conf's `mon host` (or `mon_host`) line: plain `host`, `host:port`,
    or messenger address vectors `[v2:host:3300/0,v1:host:6789/0]` (the v1 address is taken,
    as libvirt's `<host>` speaks to it). Empty when there is none."""
    value = None
    for line in text.splitlines():
        key, sep, rest = line.partition("=")
        if sep and key.strip().lower().replace("_", " ").replace("-", " ") == "mon host":
            value = rest.split("#", 1)[0].split(";", 1)[0].strip()
    if not value:
        return ()
    monitors: list[tuple[str, int]] = []
    for group in _groups(value):
        addresses = [a for a in group.split(",") if a]
        v1 = [a[3:] for a in addresses if a.startswith("v1:")]
        plain = [a for a in addresses if not a.startswith(("v1:", "v2:"))]
        chosen = (v1 or plain or [a[3:] for a in addresses])[:1]
        for address in chosen:
            monitors.append(_host_port(address.split("/", 1)[0]))
    return tuple(monitors)


def _groups(value: str) -> list[str]:
    """`[a,b] [c,d]`, `[a,b],[c,d]` or `a,b c`: one entry per monitor."""
    groups, depth, current = [], 0, ""
    for char in value:
        if char == "[":
            depth += 1
            if depth == 1:
                continue
        elif char == "]":
            depth -= 1
            if depth == 0:
                groups.append(current)
                current = ""
                continue
        if depth == 0 and char in ", \t":
            if current:
                groups.append(current)
            current = ""
            continue
        current += char
    if current:
        groups.append(current)
    return [g.strip() for g in groups if g.strip()]


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and host:
        return host.strip("[]"), int(port)
    return address.strip("[]"), DEFAULT_MON_PORT


def serial_log_path(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}.log"

