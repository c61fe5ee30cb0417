"""Safe parsing and validation of libvirt domain XML.

Operators send domain XML through the API; it is stored in ZooKeeper and later handed to libvirt
on whichever node runs the VM. So it is checked here, once, before anything is written:

- no DTD at all: any `<!DOCTYPE` or `<!ENTITY` is refused outright (no entity expansion, no
  external entities, no network access), both by a scan of the text (for a clear message) and by
  the expat handlers themselves (so nothing slips past the scan);
- bounded work: at most `MAX_XML_BYTES` of text and `MAX_DEPTH` levels of nesting (the
  serializer is recursive; libvirt's XML is about ten levels deep);
- what libvirt itself would refuse later, on some node, is refused now with a message: no
  `<domain>` root, no `type`, a missing or invalid `<name>`, an invalid `<uuid>` or `<memory>`;
  so is what ZooKeeper would refuse: a name it cannot store (`.`, `..`, some characters:
  `pvcd.domain.znode_names`), a number of more than `MAX_DIGITS` digits.

The XML is parsed without namespace processing, so the stored XML keeps the operator's prefixes
(`qemu:commandline`, metadata) unchanged. The only change made to it is the `<uuid>`: normalised
to lower-case 8-4-4-4-12 form, or inserted after `<name>` when absent.
"""

from __future__ import annotations

import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, NoReturn
from xml.parsers import expat

from pvcd.domain.errors import InvalidValue
from pvcd.domain.znode_names import REFUSED, znode_name_problem

# a domain's XML is a few KiB; the VM's document stores it with a copy of its description, and
# must fit one ZooKeeper request with room to spare (pvcd.state.request_size checks that too)
MAX_XML_BYTES = 512 * 1024
MAX_DEPTH = 64
MAX_NAME_LENGTH = 200
# routes that come before /vm/<vm> (extensions.md §5.5): no VM may take these names
RESERVED_VM_NAMES = ("autobackup", "automirror")

_FORBIDDEN = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}",
                   re.IGNORECASE)
# libvirt's numbers are unsigned long long (at most 20 digits); the bound also keeps a number
# of thousands of digits from int(), which refuses more than 4,300 (a 500 once)
MAX_DIGITS = 20
_INTEGER = re.compile(f"[0-9]{{1,{MAX_DIGITS}}}")
# libvirt's scaled integers (virScaleInteger): case-insensitive; "k" and "KiB" are powers of
# 1024, "KB" powers of 1000; a bare number in <memory> is KiB.
_UNIT_EXPONENTS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_MAX_MEMORY_BYTES = 2 ** 64 - 1  # libvirt parses memory as an unsigned long long of bytes


@dataclass(frozen=True)
class NetworkInterface:
    type: str | None
    mac: str | None
    source: str | None  # bridge, network or host device, whichever the type uses
    model: str | None


@dataclass(frozen=True)
class Disk:
    type: str | None
    name: str | None  # "pool/volume" for RBD, the path for file and block disks
    dev: str | None
    bus: str | None
    protocol: str | None = None  # network disks: rbd, nbd, iscsi, ...
    device: str = "disk"  # disk, cdrom, floppy, lun
    readonly: bool = False  # <readonly/>

    @property
    def writable(self) -> bool:
        """Whether the guest can write it: a disk or LUN without <readonly/>."""
        return self.device in ("disk", "lun") and not self.readonly


@dataclass(frozen=True)
class Controller:
    type: str | None
    model: str | None


@dataclass(frozen=True)
class DomainDefinition:
    """A validated domain: what pvcd needs of it, and the XML to store and define."""

    name: str
    uuid: str  # lower-case 8-4-4-4-12
    xml: str  # the XML as it will be stored and defined (with its UUID)
    domain_type: str  # kvm, qemu, ...
    memory: int  # MiB, rounded up
    vcpu: int
    description: str | None = None
    vcpu_topology: str | None = None  # "sockets/cores/threads"
    arch: str | None = None
    machine: str | None = None
    console: str | None = None  # the console's (or else the first serial port's) type
    emulator: str | None = None
    features: tuple[str, ...] = ()
    networks: tuple[NetworkInterface, ...] = ()
    disks: tuple[Disk, ...] = ()
    controllers: tuple[Controller, ...] = ()

    def to_api_fields(self) -> dict[str, Any]:
        """The objects.md fields of a VM that come from its XML (not name, uuid, state, node)."""
        return {
            "description": self.description,
            "memory": self.memory,
            "vcpu": self.vcpu,
            "vcpu_topology": self.vcpu_topology,
            "networks": [{"type": n.type, "mac": n.mac, "source": n.source, "model": n.model}
                         for n in self.networks],
            "type": self.domain_type,
            "arch": self.arch,
            "machine": self.machine,
            "console": self.console,
            "emulator": self.emulator,
            "features": list(self.features),
            "disks": [{"type": d.type, "name": d.name, "dev": d.dev, "bus": d.bus}
                      for d in self.disks],
            "controllers": [{"type": c.type, "model": c.model} for c in self.controllers],
        }

    def rbd_volumes(self) -> list[tuple[str, str]]:
        """(pool, volume) of every RBD image the VM's disks use, each once, in disk order.

        A disk naming an image snapshot (`pool/image@snap`) is left out: the VM does not own
        the image it was taken from."""
        volumes: list[tuple[str, str]] = []
        for disk in self.disks:
            if disk.protocol != "rbd" or not disk.name or "@" in disk.name:
                continue
            pool, _, volume = disk.name.partition("/")
            if pool and volume and (pool, volume) not in volumes:
                volumes.append((pool, volume))
        return volumes


def parse_domain_xml(text: str, default_uuid: str | None = None) -> DomainDefinition:
    """Validate libvirt domain XML; InvalidValue says what is wrong.

    A missing (or empty) `<uuid>` becomes `default_uuid` when given (replacing a VM's XML keeps
    its UUID), else a new random one."""
    root = parse_safely(text)
    if root.tag != "domain":
        raise InvalidValue(f"the VM XML must have a <domain> root element, not <{root.tag}>")
    domain_type = root.get("type")
    if not domain_type:
        raise InvalidValue("the VM XML's <domain> needs a type attribute (e.g. kvm)")
    name = _name(root)
    vm_uuid = _set_uuid(root, default_uuid)
    memory = _memory_mib(root)
    vcpu = _positive_int(root.findtext("vcpu") or "1", "<vcpu>")
    below = _Below(root)
    topology = below.first("cpu", "topology")
    os_type = below.first("os", "type")
    console = below.first("devices", "console")
    if console is None:
        console = below.first("devices", "serial")
    emulator = below.first("devices", "emulator")
    return DomainDefinition(
        name=name,
        uuid=vm_uuid,
        xml=serialized(root),
        domain_type=domain_type,
        memory=memory,
        vcpu=vcpu,
        description=root.findtext("description"),
        vcpu_topology=None if topology is None else
        f"{topology.get('sockets', '1')}/{topology.get('cores', '1')}/"
        f"{topology.get('threads', '1')}",
        arch=None if os_type is None else os_type.get("arch"),
        machine=None if os_type is None else os_type.get("machine"),
        console=None if console is None else console.get("type"),
        emulator=None if emulator is None else emulator.text or "",
        features=tuple(feature.tag for feature in below.all("features")),
        networks=tuple(_interface(i) for i in below.all("devices", "interface")),
        disks=tuple(_disk(d) for d in below.all("devices", "disk")),
        controllers=tuple(Controller(type=c.get("type"), model=c.get("model"))
                          for c in below.all("devices", "controller")),
    )


class _Below:
    """What `root.findall("<parent>/<tag>")` and `root.find(...)` select, without ElementPath
    (a path with a `/` is matched in Python on every call): the children named `tag` of
    every child of `root` named `parent`, in document order."""

    def __init__(self, root: ET.Element) -> None:
        self.parents: dict[str, list[ET.Element]] = {}
        for child in root:
            self.parents.setdefault(child.tag, []).append(child)

    def all(self, parent: str, tag: str | None = None) -> list[ET.Element]:
        """`parent/tag`, or `parent/*` without `tag`."""
        return [child for element in self.parents.get(parent, ()) for child in element
                if tag is None or child.tag == tag]

    def first(self, parent: str, tag: str) -> ET.Element | None:
        for element in self.parents.get(parent, ()):
            for child in element:
                if child.tag == tag:
                    return child
        return None


def parse_safely(text: str, what: str = "the VM XML") -> ET.Element:
    """`text` parsed with the hardening above; `what` names it in the messages."""
    if not isinstance(text, str):
        raise InvalidValue(f"{what} must be text, not {type(text).__name__}")
    if not text.strip():
        raise InvalidValue(f"{what} is empty")
    if len(text) > MAX_XML_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_XML_BYTES:
        raise InvalidValue(f"{what} is larger than {MAX_XML_BYTES} bytes "
                           f"({MAX_XML_BYTES // 1024} KiB), the most a VM's XML may be")
    if _FORBIDDEN.search(text):
        raise InvalidValue(f"{what} must not contain DOCTYPE or ENTITY declarations")
    builder = ET.TreeBuilder()
    depth = 0

    def start(tag: str, attributes: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise InvalidValue(f"{what} is nested deeper than {MAX_DEPTH} elements")
        builder.start(tag, attributes)

    def end(tag: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(tag)

    def refuse_dtd(*_args: Any) -> NoReturn:
        raise InvalidValue(f"{what} must not contain DOCTYPE or ENTITY declarations")

    parser = expat.ParserCreate()  # no namespace processing: prefixes are kept as written
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.ExternalEntityRefHandler = refuse_dtd
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        if exc.code == expat.errors.codes[expat.errors.XML_ERROR_JUNK_AFTER_DOC_ELEMENT]:
            raise InvalidValue(f"{what} must be exactly one element (with what it contains); "
                               f"more follows it at line {exc.lineno}, column "
                               f"{exc.offset + 1}") from exc
        raise InvalidValue(f"{what} is not well-formed: {expat.errors.messages[exc.code]} "
                           f"(line {exc.lineno}, column {exc.offset + 1})") from exc
    except UnicodeEncodeError as exc:
        raise InvalidValue(f"{what} is not valid text: {exc.reason}") from exc
    return builder.close()


def serialized(root: ET.Element) -> str:
    """`ET.tostring(root, encoding="unicode")` of a tree `parse_safely` made, the same text
    made about twice as fast: such a tree holds elements only (no comments, no processing
    instructions), with plain tag and attribute names (no namespace processing), nested at
    most `MAX_DEPTH` deep. Every VM's XML is serialized on its way into ZooKeeper and again
    on its node."""
    parts: list[str] = []
    write = parts.append

    def element(node: ET.Element) -> None:
        tag = node.tag
        write("<" + tag)
        for key, value in node.items():
            write(f' {key}="{_escaped_attribute(value)}"')
        text = node.text
        if text or len(node):
            write(">")
            if text:
                write(_escaped(text))
            for child in node:
                element(child)
            write("</" + tag + ">")
        else:
            write(" />")
        if node.tail:
            write(_escaped(node.tail))

    element(root)
    return "".join(parts)


# what ElementTree's writer escapes, in its order: in character data, and also in attributes
_TEXT_ESCAPES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"))
_ATTRIBUTE_ESCAPES = (*_TEXT_ESCAPES, ('"', "&quot;"), ("\r", "&#13;"), ("\n", "&#10;"),
                      ("\t", "&#09;"))


def _replaced(text: str, escapes: tuple[tuple[str, str], ...]) -> str:
    for plain, escape in escapes:
        if plain in text:
            text = text.replace(plain, escape)
    return text


def _escaped(text: str) -> str:
    """Character data as ElementTree writes it."""
    return _replaced(text, _TEXT_ESCAPES)


def _escaped_attribute(text: str) -> str:
    """An attribute's value as ElementTree writes it (quoted with `"`)."""
    return _replaced(text, _ATTRIBUTE_ESCAPES)


def renamed_domain_xml(text: str, new_name: str, volumes: dict[str, str]) -> str:
    """The XML with `<name>` set to `new_name` and every RBD disk source named in `volumes`
    ("pool/volume" → "pool/new volume") renamed; nothing else changes (extensions.md §11.1)."""
    root = parse_safely(text)
    element = root.find("name")
    if element is None:
        raise InvalidValue("the VM XML has no <name>")
    element.text = check_vm_name(new_name)
    for source in root.findall("devices/disk/source"):
        if source.get("protocol") == "rbd" and source.get("name") in volumes:
            source.set("name", volumes[str(source.get("name"))])
    return serialized(root)


def _name(root: ET.Element) -> str:
    element = root.find("name")
    name = "" if element is None else (element.text or "")
    if not name.strip():
        raise InvalidValue("the VM XML has no <name> (or an empty one)")
    return check_vm_name(name)


def check_vm_name(name: str) -> str:
    """A VM name as libvirt takes it, or InvalidValue saying what is wrong."""
    if not name.strip():
        raise InvalidValue("a VM name must not be empty")
    # libvirt takes the text as written: " web1" would be a different domain from "web1".
    if name != name.strip():
        raise InvalidValue(f"invalid VM name {name!r}: no leading or trailing whitespace")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidValue(f"invalid VM name {name[:20]!r}...: at most {MAX_NAME_LENGTH} "
                           f"characters, not {len(name)}")
    if "/" in name or not name.isprintable():
        raise InvalidValue(f"invalid VM name {name!r}: no '/' and no control characters")
    problem = znode_name_problem(name)  # the name index stores it as a znode name
    if problem is not None:
        raise InvalidValue(f"invalid VM name {name!r}: {problem} ({REFUSED})")
    return name


def _set_uuid(root: ET.Element, default_uuid: str | None) -> str:
    """The domain's UUID, normalised in (or inserted into) the tree."""
    element = root.find("uuid")
    written = "" if element is None else (element.text or "").strip()
    if written:
        vm_uuid = _normal_uuid(written, "in the VM XML's <uuid>")
    elif default_uuid:
        vm_uuid = _normal_uuid(default_uuid, "given as the VM's UUID")
    else:
        vm_uuid = str(uuidlib.uuid4())
    if element is None:
        element = ET.Element("uuid")
        element.tail = _indent_after(root, "name")
        root.insert(_index_after(root, "name"), element)
    element.text = vm_uuid
    return vm_uuid


def _normal_uuid(text: str, where: str) -> str:
    if not _UUID.fullmatch(text):
        raise InvalidValue(f"invalid UUID {text!r} {where}: expected 32 hexadecimal digits, "
                           "e.g. 6f1e3f1c-3b0e-4f53-9c1c-2a4e0b6f7d21")
    return str(uuidlib.UUID(text))


def _index_after(root: ET.Element, tag: str) -> int:
    for index, child in enumerate(root):
        if child.tag == tag:
            return index + 1
    return 0


def _indent_after(root: ET.Element, tag: str) -> str | None:
    child = root.find(tag)
    return None if child is None else child.tail


def _memory_mib(root: ET.Element) -> int:
    element = root.find("memory")
    if element is None:
        raise InvalidValue("the VM XML has no <memory>")
    text = (element.text or "").strip()
    if not _INTEGER.fullmatch(text):
        raise InvalidValue(f"invalid <memory> {_shown(text)} in the VM XML: expected a whole "
                           f"number of at most {MAX_DIGITS} digits (with a unit attribute, KiB "
                           "by default)")
    unit = element.get("unit") or "KiB"
    amount = int(text) * _unit_bytes(unit)
    if amount == 0:
        raise InvalidValue("the VM's <memory> must not be 0")
    if amount > _MAX_MEMORY_BYTES:
        raise InvalidValue(f"the VM's <memory> {text} {unit} is larger than libvirt accepts")
    return -(-amount // 1024 ** 2)  # MiB, rounded up


def _unit_bytes(unit: str) -> int:
    folded = unit.lower()
    if folded in ("b", "byte", "bytes"):
        return 1
    exponent = _UNIT_EXPONENTS.get(folded[:1])
    if exponent is not None:
        if folded[1:] in ("", "ib"):
            return 1024 ** exponent
        if folded[1:] == "b":
            return 1000 ** exponent
    raise InvalidValue(f"unknown memory unit {unit!r} in the VM XML: use b, KiB, MiB, GiB, "
                       "TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000)")


def _positive_int(text: str, what: str) -> int:
    text = text.strip()
    if not _INTEGER.fullmatch(text) or int(text) < 1:
        raise InvalidValue(f"invalid {what} {_shown(text)} in the VM XML: expected a positive "
                           f"number of at most {MAX_DIGITS} digits")
    return int(text)


def _shown(text: str, length: int = 40) -> str:
    """A value as a message quotes it: cut, so a huge one does not make a huge message."""
    return repr(text) if len(text) <= length else f"{text[:length]!r}... ({len(text)} characters)"


def _attribute(element: ET.Element, path: str, name: str) -> str | None:
    child = element.find(path)
    return None if child is None else child.get(name)


def _interface(interface: ET.Element) -> NetworkInterface:
    source = interface.find("source")
    return NetworkInterface(
        type=interface.get("type"),
        mac=_attribute(interface, "mac", "address"),
        source=None if source is None else
        source.get("bridge") or source.get("network") or source.get("dev"),
        model=_attribute(interface, "model", "type"),
    )


def _disk(disk: ET.Element) -> Disk:
    source = disk.find("source")
    target = disk.find("target")
    name = None
    if source is not None:
        if source.get("pool") and source.get("volume"):  # <disk type='volume'>
            name = f"{source.get('pool')}/{source.get('volume')}"
        else:
            name = source.get("name") or source.get("file") or source.get("dev")
    return Disk(
        type=disk.get("type"),
        name=name,
        dev=None if target is None else target.get("dev"),
        bus=None if target is None else target.get("bus"),
        protocol=None if source is None else source.get("protocol"),
        device=disk.get("device") or "disk",
        readonly=disk.find("readonly") is not None,
    )
