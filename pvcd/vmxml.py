"""Safe parsing and validation of libvirt domain XML.

Operators send domain XML through the API. It is parsed with the standard library's expat-based
parser after refusing any DOCTYPE or ENTITY declaration outright (no external entities, no
entity expansion, no network access), with a size cap. The result carries the fields objects.md
reports for a VM, the RBD volumes the VM uses, and the XML with its UUID (assigned when absent).
"""

from __future__ import annotations

import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from pvcd.errors import InvalidValue

MAX_XML_BYTES = 1024 * 1024
_FORBIDDEN = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_UNIT_TO_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
                "m": 1024, "mib": 1024, "mb": 1000 * 1000 / 1024, "g": 1024 ** 2,
                "gib": 1024 ** 2, "gb": 1000 ** 3 / 1024, "t": 1024 ** 3, "tib": 1024 ** 3,
                "tb": 1000 ** 4 / 1024}


@dataclass(frozen=True)
class DomainDefinition:
    name: str
    uuid: str
    xml: str  # the XML as it will be stored and defined (with its UUID)
    memory: int  # MiB
    vcpu: int
    fields: dict[str, Any] = field(default_factory=dict)
    volumes: tuple[tuple[str, str], ...] = ()

    def to_api_fields(self) -> dict[str, Any]:
        """The objects.md fields that come from the XML."""
        return dict(self.fields)

    def rbd_volumes(self) -> list[tuple[str, str]]:
        """(pool, volume) of every RBD disk of the VM."""
        return list(self.volumes)


def parse_domain_xml(text: str, default_uuid: str | None = None) -> DomainDefinition:
    """Validate `text`; a missing <uuid> becomes `default_uuid` (or a new random one)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidValue("the VM XML is empty")
    if len(text.encode()) > MAX_XML_BYTES:
        raise InvalidValue(f"the VM XML is larger than {MAX_XML_BYTES} bytes")
    if _FORBIDDEN.search(text):
        raise InvalidValue("the VM XML must not contain DOCTYPE or ENTITY declarations")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InvalidValue(f"the VM XML is not well-formed: {exc}") from exc
    if root.tag != "domain":
        raise InvalidValue(f"the VM XML must have a <domain> root element, not <{root.tag}>")
    domain_type = root.get("type")
    if not domain_type:
        raise InvalidValue("the VM XML's <domain> needs a type attribute (e.g. kvm)")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise InvalidValue("the VM XML has no <name>")
    if len(name) > 200 or "/" in name or any(c.isspace() for c in name) or \
            not name.isprintable():
        raise InvalidValue(f"invalid VM name {name!r}: at most 200 printable characters, "
                           "no whitespace and no '/'")
    uuid_element = root.find("uuid")
    if uuid_element is not None and (uuid_element.text or "").strip():
        try:
            vm_uuid = str(uuidlib.UUID((uuid_element.text or "").strip()))
        except ValueError as exc:
            raise InvalidValue(f"invalid UUID {uuid_element.text!r} in the VM XML") from exc
        uuid_element.text = vm_uuid
    else:
        vm_uuid = str(uuidlib.UUID(default_uuid)) if default_uuid else str(uuidlib.uuid4())
        if uuid_element is None:
            uuid_element = ET.Element("uuid")
            root.insert(list(root).index(root.find("name")) + 1, uuid_element)  # type: ignore[arg-type]
        uuid_element.text = vm_uuid
    memory = _memory_mib(root)
    vcpu = _int(root.findtext("vcpu") or "1", "vcpu")
    disks, volumes = _disks(root)
    topology = root.find("cpu/topology")
    fields = {
        "description": root.findtext("description"),
        "memory": memory,
        "vcpu": vcpu,
        "vcpu_topology": None if topology is None else
        f"{topology.get('sockets', '1')}/{topology.get('cores', '1')}/"
        f"{topology.get('threads', '1')}",
        "networks": [{"type": i.get("type"),
                      "mac": _attr(i, "mac", "address"),
                      "source": _source(i),
                      "model": _attr(i, "model", "type")}
                     for i in root.findall("devices/interface")],
        "type": domain_type,
        "arch": _attr(root, "os/type", "arch"),
        "machine": _attr(root, "os/type", "machine"),
        "console": _console(root),
        "emulator": root.findtext("devices/emulator"),
        "features": [f.tag for f in root.findall("features/*")],
        "disks": disks,
        "controllers": [{"type": c.get("type"), "model": c.get("model")}
                        for c in root.findall("devices/controller")],
    }
    return DomainDefinition(name=name, uuid=vm_uuid, xml=ET.tostring(root, encoding="unicode"),
                            memory=memory, vcpu=vcpu, fields=fields, volumes=tuple(volumes))


def _memory_mib(root: ET.Element) -> int:
    element = root.find("memory")
    if element is None:
        raise InvalidValue("the VM XML has no <memory>")
    amount = _int(element.text or "", "memory")
    unit = (element.get("unit") or "KiB").lower()
    if unit not in _UNIT_TO_KIB:
        raise InvalidValue(f"unknown memory unit {element.get('unit')!r} in the VM XML")
    mib = int(amount * _UNIT_TO_KIB[unit] / 1024)
    if mib < 1:
        raise InvalidValue("the VM's memory must be at least 1 MiB")
    return mib


def _int(text: str, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError as exc:
        raise InvalidValue(f"invalid {what} {text!r} in the VM XML: not a number") from exc
    if value < 1:
        raise InvalidValue(f"invalid {what} {value} in the VM XML: must be positive")
    return value


def _attr(element: ET.Element, path: str, name: str) -> str | None:
    child = element.find(path)
    return None if child is None else child.get(name)


def _source(interface: ET.Element) -> str | None:
    source = interface.find("source")
    if source is None:
        return None
    return source.get("bridge") or source.get("network") or source.get("dev")


def _console(root: ET.Element) -> str | None:
    for path in ("devices/console", "devices/serial"):
        element = root.find(path)
        if element is not None:
            return element.get("type")
    return None


def _disks(root: ET.Element) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    disks, volumes = [], []
    for disk in root.findall("devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        name = None
        if source is not None:
            name = source.get("name") or source.get("file") or source.get("dev")
            if disk.get("type") == "network" and source.get("protocol") == "rbd" and name:
                pool, _, volume = name.partition("/")
                if pool and volume:
                    volumes.append((pool, volume))
        disks.append({"type": disk.get("type"), "name": name,
                      "dev": None if target is None else target.get("dev"),
                      "bus": None if target is None else target.get("bus")})
    return disks, volumes
