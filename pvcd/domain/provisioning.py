"""Creating a VM from a profile (extensions.md §3.9): the plan, judged before anything is made.

`plan_create` turns a request (`CreateRequest`) and what the cluster holds (`ProvisionerObjects`:
the profile and what it names; `ClusterFacts`: VM names, MACs in use, networks, pools, volumes,
snapshots, nodes) into a `CreatePlan`: the disks to make and how (`DiskStep`), the NICs with
their MACs, the node, the CD-ROM. Everything §3.9 lists as "510 before the task" is refused here
with a message that says what is wrong and what is allowed. The API calls it before it starts
the task (nothing is created on a refusal); the task calls it again with the cluster as it is
then, so what changed meanwhile (a source volume deleted) fails the task before its first step.

Pure: the caller reads the cluster and passes in how to draw a random MAC. Pool free space is
not known here (the mirror has no `ceph df`): the task checks `space_needed` against Ceph
before its first step.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pvcd.domain.errors import Conflict, InvalidValue, NotFound
from pvcd.domain.mac_template import render_mac
from pvcd.domain.placement import NodeLoad, select_target_node
from pvcd.domain.provisioner import (
    INSTALL_METHODS,
    NetworkTemplate,
    Ova,
    Profile,
    StorageTemplate,
    SystemTemplate,
    TemplateDisk,
)

GIB = 1 << 30
VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
RESERVED_NAMES = ("autobackup", "automirror")  # routes before /vm/<vm> (§5.5)
MAX_DESCRIPTION = 4096  # characters of the domain's <description>
# the arguments each built-in method knows (§3.6)
METHOD_ARGUMENTS: Mapping[str, tuple[str, ...]] = {
    "clone": ("source_snapshot",), "blank": ("cdrom",), "ova": ()}
_STORAGE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")  # pool, volume, snapshot names


@dataclasses.dataclass(frozen=True)
class CreateRequest:
    """The values of `POST /provisioner/create` (also the task's `args`)."""

    name: str
    profile: str
    define_vm: bool = True
    start_vm: bool = True
    arguments: tuple[str, ...] = ()  # `name=value`, overriding the profile's
    description: str | None = None

    def to_args(self) -> dict[str, Any]:
        return {"name": self.name, "profile": self.profile, "define_vm": self.define_vm,
                "start_vm": self.start_vm, "arg": list(self.arguments),
                "description": self.description}

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> CreateRequest:
        arguments = args.get("arg")
        return cls(name=str(args.get("name") or ""), profile=str(args.get("profile") or ""),
                   define_vm=args.get("define_vm") is not False,
                   start_vm=args.get("start_vm") is True,
                   arguments=tuple(a for a in arguments if isinstance(a, str))
                   if isinstance(arguments, list) else (),
                   description=args.get("description")
                   if isinstance(args.get("description"), str) else None)


@dataclasses.dataclass(frozen=True)
class ProvisionerObjects:
    """The provisioner's objects by kind and name, as stored (`pvcd.domain.provisioner`)."""

    systems: Mapping[str, SystemTemplate]
    networks: Mapping[str, NetworkTemplate]
    storages: Mapping[str, StorageTemplate]
    userdata: Mapping[str, Any]
    ovas: Mapping[str, Ova]
    profiles: Mapping[str, Profile]


@dataclasses.dataclass(frozen=True)
class ClusterFacts:
    """What the plan checks against: names and MACs in use, client networks, the Ceph mirror
    (volume and snapshot sizes in bytes), and the nodes as placement sees them."""

    vm_names: frozenset[str]
    macs: Mapping[str, str]  # MAC (lower case) -> the VM using it
    vnis: frozenset[int]
    pools: frozenset[str]
    volumes: Mapping[tuple[str, str], int]  # (pool, volume) -> size
    snapshots: Mapping[tuple[str, str, str], int]  # (pool, volume, snapshot) -> size
    nodes: Sequence[NodeLoad]


@dataclasses.dataclass(frozen=True)
class DiskStep:
    """One disk to make, `<pool>/<vm>_<disk_id>`, by `how`: `copy` (of `source`, at
    `source_snapshot`), `blank` (formatted with `filesystem` if set) or `convert` (of the OVA
    image `source` in `source_format`). `size` is its final size; `counted` the bytes it
    takes from the pool's free space (a copy counts at the source's size)."""

    disk_id: str
    pool: str
    volume: str
    how: str
    size: int
    counted: int
    source: str | None = None
    source_snapshot: str | None = None
    source_format: str | None = None
    filesystem: str | None = None
    filesystem_args: tuple[str, ...] = ()

    @property
    def spec(self) -> str:
        return f"{self.pool}/{self.volume}"


@dataclasses.dataclass(frozen=True)
class Nic:
    vni: int
    mac: str


@dataclasses.dataclass(frozen=True)
class CreatePlan:
    request: CreateRequest
    profile: Profile
    system: SystemTemplate
    method: str
    disks: tuple[DiskStep, ...]
    nics: tuple[Nic, ...]
    node: str
    cdrom: tuple[str, str] | None = None  # (pool, volume), attached read-only, booted first

    def space_needed(self) -> dict[str, int]:
        """Bytes each pool must have free for the disks (§3.9)."""
        needed: dict[str, int] = {}
        for disk in self.disks:
            needed[disk.pool] = needed.get(disk.pool, 0) + disk.counted
        return needed

    @property
    def steps(self) -> int:
        """`progress.total`: the disks, plus the VM record and its hand-over with define_vm."""
        return len(self.disks) + (2 if self.request.define_vm else 0)


# --- names and MACs ---------------------------------------------------------------------------

def check_vm_name(name: str) -> str:
    if not VM_NAME.fullmatch(name or ""):
        raise InvalidValue(f"VM name {name!r} is invalid: 1-63 letters, digits, '_', '.' or '-', "
                           "starting with a letter or digit (it prefixes the volume names and "
                           "is the guest's host name)")
    if name in RESERVED_NAMES:
        raise InvalidValue(f"VM name {name!r} is reserved (the routes /vm/autobackup and "
                           "/vm/automirror); choose another name")
    return name


def random_mac(octets: Callable[[int], bytes]) -> str:
    """`52:54:00` plus three random octets (`octets(3)`)."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in octets(3))


# --- the plan ---------------------------------------------------------------------------------

def plan_create(request: CreateRequest, objects: ProvisionerObjects, facts: ClusterFacts,
                new_mac: Callable[[], str]) -> CreatePlan:
    """The plan of `request`, or the refusal (InvalidValue, NotFound, Conflict) that §3.9 lists
    before the task; see the module docstring."""
    name = check_vm_name(request.name)
    if name in facts.vm_names:
        raise Conflict(f"a VM named '{name}' already exists; choose another name")
    if request.description is not None and len(request.description) > MAX_DESCRIPTION:
        raise InvalidValue(f"description is {len(request.description)} characters long; at "
                           f"most {MAX_DESCRIPTION}")
    if request.start_vm and not request.define_vm:
        raise InvalidValue("start_vm cannot be true with define_vm false (a VM that is not "
                           "defined cannot start); leave start_vm out or set it false")
    profile = _named(objects.profiles, request.profile, "profile")
    if profile.script not in INSTALL_METHODS:
        raise InvalidValue(f"profile '{profile.name}' names the method {profile.script!r}; "
                           f"the built-in methods are: {', '.join(INSTALL_METHODS)}")
    system = _named(objects.systems, profile.system_template, "system template",
                    f" (named by profile '{profile.name}')")
    arguments = _arguments(profile, request.arguments)
    if profile.userdata:
        _named(objects.userdata, profile.userdata, "userdata", f" (named by profile "
               f"'{profile.name}')")
    nics = _nics(profile, objects, facts, name, new_mac)
    disks, cdrom = _disks(profile, objects, facts, name, arguments)
    node = place_vm(system, facts.nodes)
    return CreatePlan(request=request, profile=profile, system=system, method=profile.script,
                      disks=tuple(disks), nics=tuple(nics), node=node, cdrom=cdrom)


def _named(items: Mapping[str, Any], name: str | None, what: str, where: str = "") -> Any:
    if not name or name not in items:
        known = ", ".join(sorted(items)) or "none"
        raise NotFound(f"{what} '{name or ''}' not found{where}; the {what}s are: {known}")
    return items[name]


def _arguments(profile: Profile, overrides: Sequence[str]) -> dict[str, str]:
    known = METHOD_ARGUMENTS[profile.script]
    given = profile.argument_map()
    for item in overrides:
        if "=" not in item:
            raise InvalidValue(f"argument {item!r} is invalid: name=value")
        key, value = item.split("=", 1)
        given[key] = value
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise InvalidValue(f"the method {profile.script} knows no argument "
                           f"{', '.join(unknown)}; its arguments are: {', '.join(known) or 'none'}")
    return given


def _nics(profile: Profile, objects: ProvisionerObjects, facts: ClusterFacts, name: str,
          new_mac: Callable[[], str]) -> list[Nic]:
    if not profile.network_template:
        return []
    template: NetworkTemplate = _named(objects.networks, profile.network_template,
                                       "network template", f" (named by profile "
                                       f"'{profile.name}')")
    nics: list[Nic] = []
    taken = set(facts.macs)
    for index, network in enumerate(template.networks):
        if network.vni not in facts.vnis:
            raise NotFound(f"network {network.vni} of network template '{template.name}' does "
                           f"not exist; the client networks are: "
                           f"{', '.join(str(v) for v in sorted(facts.vnis)) or 'none'}")
        if template.mac_template:
            mac = render_mac(template.mac_template, name, index)
            if mac in taken:
                user = facts.macs.get(mac, f"NIC {index} of this VM")
                raise Conflict(f"MAC {mac} of NIC {index} (template "
                               f"{template.mac_template!r}) is already used by VM '{user}'")
        else:
            mac = new_mac()
            while mac in taken:
                mac = new_mac()
        taken.add(mac)
        nics.append(Nic(network.vni, mac))
    return nics


def _disks(profile: Profile, objects: ProvisionerObjects, facts: ClusterFacts, name: str,
           arguments: Mapping[str, str]) -> tuple[list[DiskStep], tuple[str, str] | None]:
    method = profile.script
    cdrom = _cdrom(arguments.get("cdrom"), facts) if method == "blank" else None
    if method == "ova":
        steps = _ova_disks(profile, objects, facts, name)
    else:
        if not profile.storage_template:
            if method == "clone":
                raise InvalidValue(f"profile '{profile.name}' uses the method clone but names "
                                   "no storage template")
            template = StorageTemplate(name="")
        else:
            template = _named(objects.storages, profile.storage_template, "storage template",
                              f" (named by profile '{profile.name}')")
        snapshot = arguments.get("source_snapshot")
        if snapshot is not None and not _storage_name(snapshot):
            raise InvalidValue(f"source_snapshot {snapshot!r} is not a valid snapshot name")
        steps = [_template_disk(disk, facts, name, method, snapshot) for disk in template.disks]
    for step in steps:
        if step.pool not in facts.pools:
            raise NotFound(f"pool {step.pool} of disk {step.disk_id} does not exist; the pools "
                           f"are: {', '.join(sorted(facts.pools)) or 'none'}")
        if (step.pool, step.volume) in facts.volumes:
            raise Conflict(f"RBD volume {step.spec} already exists; remove it or choose "
                           "another VM name; nothing was changed")
    return sorted(steps, key=lambda s: s.disk_id), cdrom


def _template_disk(disk: TemplateDisk, facts: ClusterFacts, name: str, method: str,
                   snapshot: str | None) -> DiskStep:
    volume = f"{name}_{disk.disk_id}"
    if not _storage_name(disk.pool):
        raise InvalidValue(f"disk {disk.disk_id} names an invalid pool {disk.pool!r}")
    wanted = disk.disk_size_gb * GIB if disk.disk_size_gb else 0
    if disk.source_volume:
        if method == "blank":
            raise InvalidValue(f"disk {disk.disk_id} copies {disk.pool}/{disk.source_volume}, "
                               "but the method blank makes every disk blank; use clone")
        source = disk.source_volume
        size = facts.volumes.get((disk.pool, source)) if _storage_name(source) else None
        if size is None:
            raise NotFound(f"source volume {disk.pool}/{source} of disk {disk.disk_id} not "
                           "found")
        if snapshot is not None:
            size = facts.snapshots.get((disk.pool, source, snapshot))
            if size is None:
                raise NotFound(f"snapshot {disk.pool}/{source}@{snapshot} (source_snapshot) "
                               f"not found: it must exist on every source volume")
        if wanted and wanted < size:
            raise InvalidValue(f"disk {disk.disk_id} asks for {disk.disk_size_gb} GiB, less "
                               f"than its source {disk.pool}/{source} ({size} bytes)")
        return DiskStep(disk.disk_id, disk.pool, volume, "copy", max(size, wanted), size,
                        source=source, source_snapshot=snapshot)
    if not wanted:
        raise InvalidValue(f"disk {disk.disk_id} has neither source_volume nor disk_size")
    return DiskStep(disk.disk_id, disk.pool, volume, "blank", wanted, wanted,
                    filesystem=disk.filesystem, filesystem_args=tuple(disk.filesystem_args))


def _ova_disks(profile: Profile, objects: ProvisionerObjects, facts: ClusterFacts,
               name: str) -> list[DiskStep]:
    ova: Ova = _named(objects.ovas, profile.ova, "OVA", f" (named by profile '{profile.name}')")
    steps = []
    for image in ova.volumes:
        if not (_storage_name(image.pool) and _storage_name(image.volume_name)) or \
                (image.pool, image.volume_name) not in facts.volumes:
            raise NotFound(f"volume {image.pool}/{image.volume_name} of OVA '{ova.name}' not "
                           "found")
        size = max(image.disk_size_gb * GIB, facts.volumes[(image.pool, image.volume_name)])
        steps.append(DiskStep(image.disk_id, image.pool, f"{name}_{image.disk_id}", "convert",
                              size, size, source=image.volume_name,
                              source_format=image.volume_format))
    return steps


def _cdrom(value: str | None, facts: ClusterFacts) -> tuple[str, str] | None:
    if value is None:
        return None
    pool, _, volume = value.partition("/")
    if not (_storage_name(pool) and _storage_name(volume)):
        raise InvalidValue(f"cdrom {value!r} is invalid: <pool>/<volume>")
    if (pool, volume) not in facts.volumes:
        raise NotFound(f"cdrom volume {pool}/{volume} not found")
    return pool, volume


def vm_selector(system: SystemTemplate) -> str | None:
    """The VM's placement selector from its template's `node_selector` (`none`: the cluster
    default; pvcd's `mem` counts assigned memory already, so `memprov` is `mem`)."""
    return {"none": None, "memprov": "mem"}.get(system.node_selector, system.node_selector)


def vm_meta(system: SystemTemplate) -> dict[str, Any]:
    """The VM metadata (extensions.md §6) a system template gives the VMs made from it."""
    return {"node_limit": list(system.node_limit), "node_selector": system.node_selector,
            "node_autostart": system.node_autostart,
            "migration_method": system.migration_method,
            "migration_max_downtime": system.migration_max_downtime}


def place_vm(system: SystemTemplate, nodes: Sequence[NodeLoad]) -> str:
    """The node for a VM of `system`: placement within `node_limit` by `node_selector`."""
    limit = set(system.node_limit)
    candidates = [n for n in nodes if not limit or n.name in limit]
    selector = vm_selector(system)
    try:
        return select_target_node(candidates, selector, memory=system.vram_mb)
    except InvalidValue as exc:
        within = f" within node_limit {', '.join(sorted(limit))}" if limit else ""
        raise InvalidValue(f"no node can take the VM{within}: {exc}") from None


def _storage_name(name: str) -> bool:
    return bool(_STORAGE_NAME.fullmatch(name or "")) and len(name) <= 96
