"""The provisioner's objects (extensions.md §3): system, network and storage templates, userdata,
OVAs and profiles, one JSON document each under `provisioner/<kind>/<name>`.

These are the stored shapes only, shared by the API (which validates what clients send), the
`provisioner.create` and `ova.upload` tasks and the metadata service (which read them). A
reader never trusts a document to have been written by the API: `from_doc` keeps only the
known keys with the right types (anything else gets its default), and the readers re-check what
they act on (a pool, a volume name, a VNI) before using it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# a system template's meta fields take a VM's words (extensions.md §6.1)
from pvcd.domain.states import MIGRATION_METHODS as MIGRATION_METHODS
from pvcd.domain.states import NODE_SELECTORS as NODE_SELECTORS

KINDS = ("system", "network", "storage", "userdata", "ova", "profile")
TEMPLATE_KINDS = ("system", "network", "storage")
PROFILE_TYPES = ("provisioner", "ova")
INSTALL_METHODS = ("clone", "blank", "ova")
FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "swap")
MAC_PREFIX = "52:54:01"  # the `{prefix}` of a MAC template (§3.3)


def _text(doc: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = doc.get(key, default)
    return value if isinstance(value, str) else default


def _int(doc: dict[str, Any], key: str, default: int) -> int:
    value = doc.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _bool(doc: dict[str, Any], key: str, default: bool) -> bool:
    value = doc.get(key, default)
    return value if isinstance(value, bool) else default


def _texts(doc: dict[str, Any], key: str) -> list[str]:
    value = doc.get(key)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _dicts(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _doc(doc: Any) -> dict[str, Any]:
    return doc if isinstance(doc, dict) else {}


@dataclasses.dataclass
class SystemTemplate:
    """§3.2. Its meta fields are copied into a VM's spec at creation."""

    name: str
    vcpu_count: int
    vram_mb: int
    serial: bool = True
    vnc: bool = False
    vnc_bind: str = "127.0.0.1"
    node_limit: list[str] = dataclasses.field(default_factory=list)  # empty: no limit
    node_selector: str = "none"
    node_autostart: bool = False
    migration_method: str = "none"
    migration_max_downtime: int = 300  # ms
    ova: str | None = None  # the OVA that created it

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: Any) -> SystemTemplate:
        d = _doc(doc)
        return cls(name=_text(d, "name", "") or "", vcpu_count=_int(d, "vcpu_count", 1),
                   vram_mb=_int(d, "vram_mb", 0), serial=_bool(d, "serial", True),
                   vnc=_bool(d, "vnc", False),
                   vnc_bind=_text(d, "vnc_bind", "127.0.0.1") or "127.0.0.1",
                   node_limit=_texts(d, "node_limit"),
                   node_selector=_text(d, "node_selector", "none") or "none",
                   node_autostart=_bool(d, "node_autostart", False),
                   migration_method=_text(d, "migration_method", "none") or "none",
                   migration_max_downtime=_int(d, "migration_max_downtime", 300),
                   ova=_text(d, "ova"))


@dataclasses.dataclass
class TemplateNetwork:
    vni: int


@dataclasses.dataclass
class NetworkTemplate:
    """§3.3. The order of `networks` is the order of the NICs."""

    name: str
    mac_template: str | None = None
    networks: list[TemplateNetwork] = dataclasses.field(default_factory=list)

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: Any) -> NetworkTemplate:
        d = _doc(doc)
        return cls(name=_text(d, "name", "") or "", mac_template=_text(d, "mac_template"),
                   networks=[TemplateNetwork(_int(n, "vni", 0)) for n in _dicts(d, "networks")])


@dataclasses.dataclass
class TemplateDisk:
    """One disk of a storage template (§3.4); `disk_id` is `sd[a-z]` or `vd[a-z]`."""

    disk_id: str
    pool: str
    source_volume: str | None = None
    disk_size_gb: int | None = None
    filesystem: str | None = None
    filesystem_args: list[str] = dataclasses.field(default_factory=list)
    mountpoint: str | None = None

    @classmethod
    def from_doc(cls, doc: Any) -> TemplateDisk:
        d = _doc(doc)
        size = d.get("disk_size_gb")
        return cls(disk_id=_text(d, "disk_id", "") or "", pool=_text(d, "pool", "") or "",
                   source_volume=_text(d, "source_volume"),
                   disk_size_gb=size if isinstance(size, int) and not isinstance(size, bool)
                   else None,
                   filesystem=_text(d, "filesystem"),
                   filesystem_args=_texts(d, "filesystem_args"),
                   mountpoint=_text(d, "mountpoint"))


@dataclasses.dataclass
class StorageTemplate:
    """§3.4. `disks` sorted by `disk_id`."""

    name: str
    disks: list[TemplateDisk] = dataclasses.field(default_factory=list)

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: Any) -> StorageTemplate:
        d = _doc(doc)
        disks = [TemplateDisk.from_doc(x) for x in _dicts(d, "disks")]
        return cls(name=_text(d, "name", "") or "", disks=sorted(disks, key=lambda x: x.disk_id))


@dataclasses.dataclass
class Userdata:
    """§3.5. Served to guests as is (§4)."""

    name: str
    userdata: str = ""

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: Any) -> Userdata:
        d = _doc(doc)
        return cls(name=_text(d, "name", "") or "", userdata=_text(d, "userdata", "") or "")


@dataclasses.dataclass
class OvaVolume:
    disk_id: str
    disk_size_gb: int
    pool: str
    volume_name: str
    volume_format: str


@dataclasses.dataclass
class Ova:
    """§3.7: an imported OVA, its disk images (volumes `ova_<name>_sd<x>`) and what it made."""

    name: str
    pool: str
    volumes: list[OvaVolume] = dataclasses.field(default_factory=list)
    system_template: str | None = None
    profile: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: Any) -> Ova:
        d = _doc(doc)
        volumes = [OvaVolume(disk_id=_text(v, "disk_id", "") or "",
                             disk_size_gb=_int(v, "disk_size_gb", 0),
                             pool=_text(v, "pool", "") or "",
                             volume_name=_text(v, "volume_name", "") or "",
                             volume_format=_text(v, "volume_format", "raw") or "raw")
                   for v in _dicts(d, "volumes")]
        return cls(name=_text(d, "name", "") or "", pool=_text(d, "pool", "") or "",
                   volumes=volumes, system_template=_text(d, "system_template"),
                   profile=_text(d, "profile"))


@dataclasses.dataclass
class Profile:
    """§3.8. `arguments` are `name=value` strings for the install method (`script`)."""

    name: str
    profile_type: str = "provisioner"
    system_template: str = ""
    network_template: str | None = None
    storage_template: str | None = None
    userdata: str | None = None
    script: str = "clone"
    ova: str | None = None
    arguments: list[str] = dataclasses.field(default_factory=list)

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: Any) -> Profile:
        d = _doc(doc)
        return cls(name=_text(d, "name", "") or "",
                   profile_type=_text(d, "profile_type", "provisioner") or "provisioner",
                   system_template=_text(d, "system_template", "") or "",
                   network_template=_text(d, "network_template"),
                   storage_template=_text(d, "storage_template"),
                   userdata=_text(d, "userdata"), script=_text(d, "script", "clone") or "clone",
                   ova=_text(d, "ova"), arguments=_texts(d, "arguments"))

    def argument_map(self) -> dict[str, str]:
        """The arguments as a mapping (a later one of the same name wins)."""
        return dict(a.split("=", 1) for a in self.arguments if "=" in a)


RECORDS: dict[str, type] = {"system": SystemTemplate, "network": NetworkTemplate,
                            "storage": StorageTemplate, "userdata": Userdata, "ova": Ova,
                            "profile": Profile}
