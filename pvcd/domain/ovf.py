"""Reading an OVA's descriptor (`.ovf`) and manifest (`.mf`): untrusted text, pure rules.

An OVA is a tar archive whose first member is the OVF descriptor, an XML document (spec
extensions.md §3.7). From its first VirtualSystem pvcd takes the vCPUs (RASD ResourceType 3),
the memory (type 4, with AllocationUnits), whether it has a graphics controller (type 24) and
its disks (type 17): each names a Disk (`ovf:/disk/<id>`) that names a File (`fileRef` → `href`,
the archive member holding the image) and a capacity (with `capacityAllocationUnits`).

The XML is parsed by expat with a refusal of any document type declaration or entity
declaration (no DTD, no entity expansion, no external reference: the "billion laughs" and XXE
attacks need one of them), and the text is bounded (`MAX_OVF_BYTES`) before parsing. File names
are checked here (`check_member_name`): no path is ever built from them.
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Any
from xml.parsers import expat

from pvcd.domain.errors import InvalidValue

MAX_OVF_BYTES = 4 << 20
MAX_MANIFEST_BYTES = 1 << 20
MAX_DISKS = 26  # sda .. sdz
MAX_NAME = 255
IMAGE_FORMATS = ("raw", "qcow2", "vmdk", "qed", "vdi", "vpc")
RESOURCE_CPU, RESOURCE_MEMORY, RESOURCE_DISK, RESOURCE_GRAPHICS = "3", "4", "17", "24"
MIB = 1 << 20
_UNITS = re.compile(r"^\s*(?:byte|bytes)?\s*(?:\*\s*(\d+)\s*\^\s*(\d+))?\s*$", re.IGNORECASE)
_NAMED_UNITS = {"kilobytes": 1 << 10, "kb": 1 << 10, "megabytes": MIB, "mb": MIB,
                "gigabytes": 1 << 30, "gb": 1 << 30, "terabytes": 1 << 40, "tb": 1 << 40,
                "byte": 1, "bytes": 1}
_MANIFEST_LINE = re.compile(r"^(SHA1|SHA256)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")
_NAME_CHARS = set(string.ascii_letters + string.digits + "._+-~ ()")


@dataclasses.dataclass(frozen=True)
class OvfDisk:
    """One disk of the virtual system, in OVF order: the archive member and its capacity."""

    file: str  # archive member name (checked)
    capacity: int  # bytes the guest sees
    image_format: str  # one of IMAGE_FORMATS


@dataclasses.dataclass(frozen=True)
class OvfSystem:
    """What pvcd takes from the first VirtualSystem."""

    vcpus: int
    memory_mb: int
    graphics: bool
    disks: tuple[OvfDisk, ...]


def check_member_name(name: str) -> str:
    """An archive member name pvcd accepts: a plain file name (no `/`, no `..`, no control
    characters, at most 255 characters). It names a member, never a path on a host."""
    if not name or len(name) > MAX_NAME or "/" in name or "\\" in name or name in (".", "..") \
            or ".." in name or not set(name) <= _NAME_CHARS:
        shown = name[:80].encode("unicode_escape").decode()
        raise InvalidValue(f"archive member name '{shown}' is not allowed: a plain file name of "
                           f"at most {MAX_NAME} characters (letters, digits, . _ + - ~ space "
                           "and parentheses), no '/' or '..'")
    return name


# --- XML without DTDs or entities -------------------------------------------------------------

@dataclasses.dataclass
class _Element:
    tag: str  # local name (namespaces dropped)
    attrs: dict[str, str]  # local names
    children: list[_Element] = dataclasses.field(default_factory=list)
    text: str = ""

    def find_all(self, tag: str) -> list[_Element]:
        found = [c for c in self.children if c.tag == tag]
        return found

    def child_text(self, tag: str) -> str | None:
        for child in self.children:
            if child.tag == tag:
                return child.text.strip()
        return None

    def walk(self) -> list[_Element]:
        out, stack = [], [self]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


def parse_xml(data: bytes) -> _Element:
    """The document's element tree; InvalidValue for a DOCTYPE, an ENTITY, or bad XML."""
    if len(data) > MAX_OVF_BYTES:
        raise InvalidValue(f"the .ovf is {len(data)} bytes; at most {MAX_OVF_BYTES} are read")
    parser = expat.ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    root: list[_Element] = []
    stack: list[_Element] = []

    def refuse(*_: Any) -> None:
        raise InvalidValue("the .ovf has a document type or entity declaration; pvcd parses "
                           "OVF descriptors without DTDs or entities")

    def start(name: str, attrs: dict[str, str]) -> None:
        element = _Element(_local(name), {_local(k): v for k, v in attrs.items()})
        if stack:
            stack[-1].children.append(element)
        else:
            root.append(element)
        stack.append(element)

    def end(name: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.NotationDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise InvalidValue(f"the .ovf is not well-formed XML: {exc}") from None
    if not root:
        raise InvalidValue("the .ovf has no root element")
    return root[0]


# --- the descriptor ---------------------------------------------------------------------------

def allocation_factor(units: str | None) -> int:
    """Bytes per unit of an OVF allocation unit: `byte`, `byte * 2^20`, `MegaBytes`, ..."""
    if units is None or not units.strip():
        return 1
    named = _NAMED_UNITS.get(units.strip().lower())
    if named is not None:
        return named
    match = _UNITS.match(units)
    if match is None:
        raise InvalidValue(f"unknown OVF allocation unit '{units[:60]}' (known: byte, "
                           "byte * 2^N, KiloBytes, MegaBytes, GigaBytes)")
    base, power = match.group(1), match.group(2)
    if base is None:
        return 1
    if int(power) > 60:
        raise InvalidValue(f"OVF allocation unit '{units[:60]}' is out of range")
    return int(base) ** int(power)


def _number(raw: str | None, what: str) -> int:
    if raw is None or not raw.strip().isdigit():
        raise InvalidValue(f"the .ovf's {what} is missing or not a whole number")
    return int(raw.strip())


def image_format(ovf_format: str | None, file_name: str) -> str:
    """The image format of a Disk's `ovf:format` URI (e.g. VMware's `...vmdk.html#...`), else of
    the file's extension; InvalidValue when it is none of IMAGE_FORMATS."""
    text = (ovf_format or "").lower()
    for known, hints in (("vmdk", ("vmdk",)), ("qcow2", ("qcow",)), ("vdi", ("vdi",)),
                         ("vpc", ("vhd", "vpc")), ("qed", ("qed",)), ("raw", ("raw",))):
        if any(hint in text for hint in hints):
            return known
    extension = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    by_extension = {"vmdk": "vmdk", "qcow2": "qcow2", "qcow": "qcow2", "vdi": "vdi",
                    "vhd": "vpc", "qed": "qed", "raw": "raw", "img": "raw"}
    if extension in by_extension:
        return by_extension[extension]
    raise InvalidValue(f"disk file '{file_name}' has no image format pvcd knows (format "
                       f"'{(ovf_format or '')[:80]}'); known: {', '.join(IMAGE_FORMATS)}")


def parse_ovf(data: bytes) -> OvfSystem:
    """The first VirtualSystem of an OVF descriptor (module docstring)."""
    root = parse_xml(data)
    if root.tag != "Envelope":
        raise InvalidValue(f"the .ovf's root element is '{root.tag}', not an OVF Envelope")
    elements = root.walk()
    files = {e.attrs.get("id", ""): e.attrs.get("href", "") for e in elements if e.tag == "File"}
    disks = {e.attrs.get("diskId", ""): e for e in elements if e.tag == "Disk"}
    systems = [e for e in elements if e.tag == "VirtualSystem"]
    if not systems:
        raise InvalidValue("the .ovf has no VirtualSystem")
    items = [e for e in systems[0].walk() if e.child_text("ResourceType") is not None]
    by_type: dict[str, list[_Element]] = {}
    for item in items:
        by_type.setdefault(item.child_text("ResourceType") or "", []).append(item)
    cpus = by_type.get(RESOURCE_CPU, [])
    memories = by_type.get(RESOURCE_MEMORY, [])
    if not cpus or not memories:
        raise InvalidValue("the .ovf's first VirtualSystem names no vCPUs (ResourceType 3) or "
                           "no memory (ResourceType 4)")
    vcpus = _number(cpus[0].child_text("VirtualQuantity"), "vCPU count")
    memory = memories[0]
    memory_bytes = _number(memory.child_text("VirtualQuantity"), "memory quantity") * \
        allocation_factor(memory.child_text("AllocationUnits"))
    disk_items = by_type.get(RESOURCE_DISK, [])
    if len(disk_items) > MAX_DISKS:
        raise InvalidValue(f"the .ovf has {len(disk_items)} disks; at most {MAX_DISKS}")
    found: list[OvfDisk] = []
    for item in disk_items:
        host = item.child_text("HostResource") or ""
        disk_id = host.rsplit("/", 1)[-1] if "/disk/" in host else ""
        disk = disks.get(disk_id)
        if disk is None:
            raise InvalidValue(f"a disk of the .ovf names '{host[:80]}', which is no Disk of "
                               "its DiskSection")
        href = files.get(disk.attrs.get("fileRef", ""))
        if not href:
            raise InvalidValue(f"Disk '{disk_id[:80]}' of the .ovf names no File (an empty "
                               "disk is not supported)")
        check_member_name(href)
        capacity = _number(disk.attrs.get("capacity"), f"capacity of Disk '{disk_id[:80]}'") * \
            allocation_factor(disk.attrs.get("capacityAllocationUnits"))
        found.append(OvfDisk(href, capacity, image_format(disk.attrs.get("format"), href)))
    names = [d.file for d in found]
    if len(set(names)) != len(names):
        raise InvalidValue("two disks of the .ovf name the same file")
    return OvfSystem(vcpus=vcpus, memory_mb=max(1, memory_bytes // MIB),
                     graphics=bool(by_type.get(RESOURCE_GRAPHICS)), disks=tuple(found))


# --- the manifest -----------------------------------------------------------------------------

def parse_manifest(data: bytes) -> dict[str, tuple[str, str]]:
    """`{file: (algorithm, hex digest)}` from `SHA1(file)= hex` / `SHA256(file)= hex` lines."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidValue(f"the .mf is {len(data)} bytes; at most {MAX_MANIFEST_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidValue("the .mf is not UTF-8 text") from None
    entries: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _MANIFEST_LINE.match(line.strip())
        if match is None:
            raise InvalidValue(f"line {number} of the .mf is not 'SHA1(file)= hex' or "
                               "'SHA256(file)= hex'")
        algorithm, name, digest = match.group(1).lower(), match.group(2), match.group(3).lower()
        expected = 40 if algorithm == "sha1" else 64
        if len(digest) != expected:
            raise InvalidValue(f"line {number} of the .mf has a {algorithm} digest of "
                               f"{len(digest)} hex digits, not {expected}")
        entries[check_member_name(name)] = (algorithm, digest)
    return entries
