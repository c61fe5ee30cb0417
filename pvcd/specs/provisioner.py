"""The rules of the provisioner's objects (extensions.md §3.2-§3.6, §3.8): one home for the API,
which refuses a write that breaks them (510, nothing written), and for the `provisioner.create`
task, which checks what it reads again before it acts (anything can write ZooKeeper).

Pure functions: what the cluster holds (nodes, networks, pools, other provisioner objects) is
passed in, so the caller decides whether it comes from the API's cache or from a fresh read.
Each refusal is `InvalidValue` (or `NotFound` for a named object that is missing) with a message
that says what is wrong and what is allowed.

Nothing here runs anything. Filesystem arguments are checked to be single `-X` or `-X=value`
tokens without whitespace or shell characters, since they become arguments of `mkfs` (an
argument list, never a shell line). User-data is text served to guests (§4); a `#cloud-config`
document is parsed with `yaml.safe_load` (no object construction) to catch mistakes early.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

import yaml

from pvcd.domain.errors import InvalidValue, NotFound
from pvcd.domain.mac_template import check_mac_template
from pvcd.domain.provisioner import (
    FILESYSTEMS,
    INSTALL_METHODS,
    MIGRATION_METHODS,
    NODE_SELECTORS,
    PROFILE_TYPES,
    NetworkTemplate,
    Profile,
    StorageTemplate,
    SystemTemplate,
    TemplateDisk,
)
from pvcd.drivers.ceph.values import check_pool_name, check_snapshot_name, check_volume_name

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,62}")  # §0.2, the storage name rule
VCPUS = (1, 256)
VRAM_MB = (64, 4194304)
MIGRATION_MAX_DOWNTIME = (1, 60000)  # ms
DISK_SIZE_GB = (1, 1 << 20)  # up to 1 PiB
MAX_VNI = 2**24 - 1
HOST_BRIDGES = ("upstream", "cluster", "storage")  # PVC's, never a VM's network here
DISK_ID_RE = re.compile(r"[sv]d[a-z]")
# `-X` or `-X=value`: letters, digits and a few punctuation marks no shell gives a meaning to
FILESYSTEM_ARG_RE = re.compile(r"--?[A-Za-z0-9][A-Za-z0-9-]*(=[A-Za-z0-9_.,:/+@%=-]*)?")
MAX_FILESYSTEM_ARG = 128
MOUNTPOINT_RE = re.compile(r"(/[A-Za-z0-9_.+@-]+)+|/")
MAX_MOUNTPOINT = 255
MAX_USERDATA = 256 * 1024  # bytes of UTF-8
SCRIPTS_REFUSED = ("pvcd does not run uploaded provisioning scripts; use one of the built-in "
                   "methods: " + ", ".join(INSTALL_METHODS))


def check_object_name(name: str, what: str) -> str:
    """A template, userdata, OVA or profile name (§0.2)."""
    if not NAME_RE.fullmatch(name):
        shown = name if len(name) <= 70 else f"{name[:70]}..."
        raise InvalidValue(f"{what} name '{shown}' is invalid: 1-63 letters, digits, '_', '.', "
                           "'+' or '-', not starting with '.', '+' or '-'")
    return name


def _in_range(value: int, limits: tuple[int, int], what: str) -> None:
    low, high = limits
    if not low <= value <= high:
        raise InvalidValue(f"{what} {value} is out of range: from {low} to {high}")


# --- system templates (§3.2) ---------------------------------------------------------------

def check_vnc_bind(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise InvalidValue(f"vnc_bind '{value[:60]}' is invalid: an IPv4 or IPv6 address, e.g. "
                           "127.0.0.1 or 0.0.0.0") from None


def parse_node_limit(value: str) -> list[str]:
    """`node1,node2` as a list (spaces around names ignored; empty: no limit)."""
    names = [part.strip() for part in value.split(",") if part.strip()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidValue(f"node_limit names {', '.join(twice)} twice: give each node once")
    return names


def check_system_template(template: SystemTemplate, nodes: Collection[str]) -> SystemTemplate:
    """The whole system template; `nodes`: the cluster's node names (for `node_limit`)."""
    check_object_name(template.name, "system template")
    _in_range(template.vcpu_count, VCPUS, "vcpus")
    _in_range(template.vram_mb, VRAM_MB, "vram (MiB)")
    _in_range(template.migration_max_downtime, MIGRATION_MAX_DOWNTIME,
              "migration_max_downtime (ms)")
    check_vnc_bind(template.vnc_bind)
    for value, allowed, what in ((template.node_selector, NODE_SELECTORS, "node_selector"),
                                 (template.migration_method, MIGRATION_METHODS,
                                  "migration_method")):
        if value not in allowed:
            raise InvalidValue(f"invalid {what} '{value}'; valid values are: "
                               f"{', '.join(allowed)}")
    unknown = [n for n in template.node_limit if n not in nodes]
    if unknown:
        raise InvalidValue(f"node_limit names unknown node {', '.join(unknown)}; the cluster's "
                           f"nodes are: {', '.join(sorted(nodes)) or 'none'}")
    return template


# --- network templates (§3.3) --------------------------------------------------------------

def parse_template_vni(value: str) -> int:
    """A client network's VNI as a network template names it (PVC's host bridges refused)."""
    text = value.strip()
    if text in HOST_BRIDGES:
        raise InvalidValue(f"vni '{text}' is a host bridge of PVC; pvcd connects VMs only to "
                           "client networks (managed or bridged): give a client network's VNI")
    if not (text.isascii() and text.isdigit() and len(text) <= 8) or \
            not 1 <= int(text) <= MAX_VNI:
        shown = text if len(text) <= 40 else f"{text[:40]}..."
        raise InvalidValue(f"vni '{shown}' is invalid: the VNI of a client network, from 1 to "
                           f"{MAX_VNI}")
    return int(text)


def check_network_exists(vni: int, networks: Collection[int]) -> int:
    if vni not in networks:
        raise NotFound(f"network with vni {vni} not found: a network template names existing "
                       "client networks (see GET /network)")
    return vni


def check_network_added(template: NetworkTemplate, vni: int, permit_duplicate: bool) -> None:
    if not permit_duplicate and any(n.vni == vni for n in template.networks):
        raise InvalidValue(f"network template '{template.name}' already has network {vni}; "
                           "add it again (a second NIC on it) with permit_duplicate")


def check_network_template(template: NetworkTemplate,
                           networks: Collection[int]) -> NetworkTemplate:
    """The whole network template; `networks`: the VNIs of the cluster's client networks."""
    check_object_name(template.name, "network template")
    if template.mac_template is not None:
        check_mac_template(template.mac_template)
    for network in template.networks:
        check_network_exists(network.vni, networks)
    return template


# --- storage templates (§3.4) --------------------------------------------------------------

def check_disk_id(value: str) -> str:
    if not DISK_ID_RE.fullmatch(value):
        raise InvalidValue(f"disk_id '{value[:40]}' is invalid: sd[a-z] (a virtio-scsi disk) or "
                           "vd[a-z] (a virtio-blk disk), e.g. sda or vdb")
    return value


def check_filesystem_arg(value: str) -> str:
    if len(value) > MAX_FILESYSTEM_ARG or not FILESYSTEM_ARG_RE.fullmatch(value):
        shown = value if len(value) <= 40 else f"{value[:40]}..."
        raise InvalidValue(f"filesystem_arg {shown!r} is invalid: one argument of the form -X "
                           "or -X=value (letters, digits and _ . , : / + @ % = -; no whitespace "
                           f"or shell characters; at most {MAX_FILESYSTEM_ARG} characters)")
    return value


def check_mountpoint(value: str) -> str:
    if len(value) > MAX_MOUNTPOINT or not MOUNTPOINT_RE.fullmatch(value) or \
            any(part in (".", "..") for part in value.split("/")):
        shown = value if len(value) <= 40 else f"{value[:40]}..."
        raise InvalidValue(f"mountpoint {shown!r} is invalid: an absolute path such as /srv "
                           "(letters, digits and _ . + @ -; no '.' or '..' parts)")
    return value


def check_template_disk(disk: TemplateDisk, pools: Collection[str]) -> TemplateDisk:
    """One disk; `pools`: the cluster's pool names."""
    check_disk_id(disk.disk_id)
    check_pool_name(disk.pool)
    if disk.pool not in pools:
        raise NotFound(f"RBD pool {disk.pool} not found: give an existing pool")
    if disk.source_volume is None and disk.disk_size_gb is None:
        raise InvalidValue(f"disk {disk.disk_id}: give source_volume (a volume to copy) or "
                           "disk_size (GiB of a new volume)")
    if disk.source_volume is not None:
        check_volume_name(disk.source_volume)
        if disk.filesystem is not None or disk.mountpoint is not None:
            raise InvalidValue(f"disk {disk.disk_id}: a copy of source_volume keeps its own "
                               "contents; filesystem and mountpoint are only for new volumes")
    if disk.disk_size_gb is not None:
        _in_range(disk.disk_size_gb, DISK_SIZE_GB, "disk_size (GiB)")
    if disk.filesystem is not None and disk.filesystem not in FILESYSTEMS:
        raise InvalidValue(f"invalid filesystem '{disk.filesystem}'; valid values are: "
                           f"{', '.join(FILESYSTEMS)}")
    for arg in disk.filesystem_args:
        check_filesystem_arg(arg)
    if disk.filesystem_args and disk.filesystem is None:
        raise InvalidValue(f"disk {disk.disk_id}: filesystem_arg needs a filesystem")
    if disk.mountpoint is not None:
        check_mountpoint(disk.mountpoint)
        if disk.filesystem is None or disk.filesystem == "swap":
            raise InvalidValue(f"disk {disk.disk_id}: a mountpoint needs a filesystem other "
                               "than swap")
    return disk


def check_storage_template(template: StorageTemplate,
                           pools: Collection[str]) -> StorageTemplate:
    """The whole storage template: its disks, each `disk_id` once."""
    check_object_name(template.name, "storage template")
    ids = [d.disk_id for d in template.disks]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise InvalidValue(f"storage template '{template.name}' has disk {', '.join(twice)} "
                           "more than once: each disk_id is unique in a template")
    for disk in template.disks:
        check_template_disk(disk, pools)
    return template


# --- userdata (§3.5) -----------------------------------------------------------------------

def check_userdata(text: str) -> str:
    """At most `MAX_USERDATA` bytes of UTF-8; a `#cloud-config` document must be a YAML
    mapping. Multi-part MIME and scripts are accepted unchecked (they are only served)."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidValue("userdata is not valid UTF-8 text") from None
    if size > MAX_USERDATA:
        raise InvalidValue(f"userdata is {size} bytes: at most {MAX_USERDATA} bytes (256 KiB) "
                           "are allowed")
    if text.startswith("#cloud-config"):
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            doc = yaml.load(text, Loader=loader)  # a safe loader, as safe_load
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise InvalidValue(f"userdata starts with #cloud-config but is not valid YAML{at}: "
                               f"{getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(doc, dict):
            raise InvalidValue("userdata starts with #cloud-config but is not a YAML mapping "
                               f"(it is {type(doc).__name__ if doc is not None else 'empty'}): "
                               "cloud-config is a mapping of modules, e.g. 'hostname: web1'")
    return text


# --- built-in install methods (§3.6) --------------------------------------------------------

@dataclass(frozen=True)
class ScriptArgument:
    name: str
    description: str
    default: str | None = None
    check: Callable[[str], object] = str


@dataclass(frozen=True)
class Script:
    name: str
    description: str
    arguments: tuple[ScriptArgument, ...] = ()

    def to_doc(self) -> dict[str, object]:
        return {"name": self.name, "description": self.description, "builtin": True,
                "arguments": [{"name": a.name, "description": a.description,
                               "default": a.default} for a in self.arguments]}


def _pool_volume(value: str) -> str:
    pool, _, volume = value.partition("/")
    if not volume:
        raise InvalidValue(f"cdrom '{value[:60]}' is invalid: <pool>/<volume>")
    check_pool_name(pool)
    check_volume_name(volume)
    return value


SCRIPTS: dict[str, Script] = {s.name: s for s in (
    Script("clone", "Per storage-template disk: a full copy of its source_volume, grown to "
           "disk_size_gb if given; or a blank volume of disk_size_gb, formatted if filesystem "
           "is set.",
           (ScriptArgument("source_snapshot", "Copy each source volume as of this snapshot, "
                           "which must exist on all of them.", None, check_snapshot_name),)),
    Script("blank", "Every disk a blank volume of disk_size_gb, formatted if filesystem is "
           "set; a template disk with source_volume is refused.",
           (ScriptArgument("cdrom", "<pool>/<volume>: attach that volume read-only as a SCSI "
                           "CD-ROM and boot from it first (install from an uploaded ISO over "
                           "VNC or serial).", None, _pool_volume),)),
    Script("ova", "Each disk image of the profile's OVA converted into its disk (qemu-img "
           "convert), then grown to the capacity the OVF declares."),
)}


def check_script(name: str) -> Script:
    script = SCRIPTS.get(name)
    if script is None:
        raise InvalidValue(f"script '{name[:60]}' is not a built-in method; "
                           f"{SCRIPTS_REFUSED}")
    return script


def check_arguments(script: str, arguments: list[str]) -> list[str]:
    """`name=value` arguments of the install method `script`: each name one it knows, once."""
    method = check_script(script)
    known = {a.name: a for a in method.arguments}
    seen: set[str] = set()
    for item in arguments:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise InvalidValue(f"arg {item[:60]!r} is invalid: name=value")
        if name not in known:
            allowed = ", ".join(known) or "none"
            raise InvalidValue(f"method '{script}' has no argument '{name[:40]}'; its arguments "
                               f"are: {allowed}")
        if name in seen:
            raise InvalidValue(f"arg '{name}' is given twice: give each argument once")
        seen.add(name)
        known[name].check(value)
    return arguments


# --- profiles (§3.8) -----------------------------------------------------------------------

def check_profile(profile: Profile, exists: Callable[[str, str], bool],
                  storage: StorageTemplate | None) -> Profile:
    """The whole profile. `exists(kind, name)` says whether a provisioner object exists;
    `storage`: the storage template the profile names (None when it names none)."""
    check_object_name(profile.name, "profile")
    if profile.profile_type not in PROFILE_TYPES:
        raise InvalidValue(f"invalid profile_type '{profile.profile_type}'; valid values are: "
                           f"{', '.join(PROFILE_TYPES)}")
    check_script(profile.script)
    references = (("system", profile.system_template, "system template", "template/system"),
                  ("network", profile.network_template, "network template", "template/network"),
                  ("storage", profile.storage_template, "storage template", "template/storage"),
                  ("userdata", profile.userdata, "userdata", "userdata"),
                  ("ova", profile.ova, "OVA", "ova"))
    for kind, name, what, where in references:
        if name is not None and not exists(kind, name):
            raise NotFound(f"{what} '{name}' not found: a profile names existing objects "
                           f"(see GET /provisioner/{where})")
    if profile.profile_type == "ova":
        if profile.ova is None:
            raise InvalidValue("a profile of type ova needs ova (the imported OVA)")
        if profile.storage_template is not None:
            raise InvalidValue("a profile of type ova takes its disks from the OVA: give no "
                               "storage_template")
        if profile.script != "ova":
            raise InvalidValue(f"a profile of type ova uses the method ova, not "
                               f"'{profile.script}'")
    else:
        if profile.script == "ova":
            raise InvalidValue("the method ova needs profile_type ova")
        if profile.ova is not None:
            raise InvalidValue("ova is only for profiles of type ova")
    if profile.script == "clone" and profile.storage_template is None:
        raise InvalidValue("the method clone needs a storage_template (the disks to copy or "
                           "make)")
    if profile.script == "blank" and storage is not None:
        copies = [d.disk_id for d in storage.disks if d.source_volume is not None]
        if copies:
            raise InvalidValue(f"the method blank makes every disk blank, but storage template "
                               f"'{storage.name}' copies a source_volume to disk "
                               f"{', '.join(copies)}: use the method clone, or another "
                               "template")
    check_arguments(profile.script, profile.arguments)
    return profile
