"""System, network and storage templates (extensions.md §3.2-§3.4), and `GET
/provisioner/template`, which lists all three.

Values use PVC's names (`vcpus`, `vram`, `disk_size`, `filesystem_arg`, `permit_duplicate`), the
documents the record fields of `pvcd.domain.provisioner`. Each write is checked whole by
`pvcd.specs.provisioner` against the cache (nodes, networks, pools, the profiles that name the
template) and written with one compare-and-set transaction (`pvcd.api.provisioner_objects`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pvcd.api.provisioner_objects import NAME_LIMIT, ProvisionerHandler, retry_lost_races
from pvcd.api.routing import route
from pvcd.api.values import Value, accepts, boolean, choice, flag, integer, texts, value
from pvcd.domain.errors import InvalidValue, NotFound
from pvcd.domain.mac_template import check_mac_template
from pvcd.domain.provisioner import (
    FILESYSTEMS,
    MIGRATION_METHODS,
    NODE_SELECTORS,
    NetworkTemplate,
    StorageTemplate,
    SystemTemplate,
    TemplateDisk,
    TemplateNetwork,
)
from pvcd.drivers.ceph.values import check_pool_name, check_volume_name
from pvcd.specs.provisioner import (
    DISK_SIZE_GB,
    MIGRATION_MAX_DOWNTIME,
    VCPUS,
    VRAM_MB,
    check_disk_id,
    check_filesystem_arg,
    check_mountpoint,
    check_network_added,
    check_network_exists,
    check_object_name,
    check_profile,
    check_storage_template,
    check_system_template,
    check_vnc_bind,
    parse_node_limit,
    parse_template_vni,
)
from pvcd.state.provisioner import profiles_naming, read_objects

# --- system templates (§3.2) -------------------------------------------------------------

NAME = value("name", "The new object's name: 1-63 letters, digits, _ . + - (not starting with "
             ". + -).", str, required=True)


SERIAL = boolean("serial", "A serial console (the console log needs it).", True)
VNC = boolean("vnc", "A VNC console.", False)
VNC_BIND = value("vnc_bind", "The address VNC listens on (default 127.0.0.1).", check_vnc_bind)
NODE_LIMIT = value("node_limit", "Comma-separated nodes the VM may run on (empty: any).",
                   parse_node_limit)
NODE_SELECTOR = choice("node_selector", NODE_SELECTORS, "How a node is chosen (none: the "
                       "cluster default).")
NODE_AUTOSTART = boolean("node_autostart", "Start the VM when its node becomes ready.", False)
MIGRATION_METHOD = choice("migration_method", MIGRATION_METHODS, "How the VM moves (none: the "
                          "cluster default).")
MIGRATION_MAX_DOWNTIME_VALUE = integer(
    "migration_max_downtime", "The longest pause of a live migration, in ms.",
    minimum=MIGRATION_MAX_DOWNTIME[0], maximum=MIGRATION_MAX_DOWNTIME[1])
SYSTEM_OPTIONS: tuple[Value[Any], ...] = (
    SERIAL, VNC, VNC_BIND, NODE_LIMIT, NODE_SELECTOR, NODE_AUTOSTART, MIGRATION_METHOD,
    MIGRATION_MAX_DOWNTIME_VALUE)
_VCPUS_HELP, _VRAM_HELP = "Virtual CPUs.", "Memory in MiB."
VCPUS_NEW = integer("vcpus", _VCPUS_HELP, required=True, minimum=VCPUS[0], maximum=VCPUS[1])
VRAM_NEW = integer("vram", _VRAM_HELP, required=True, minimum=VRAM_MB[0], maximum=VRAM_MB[1])
VCPUS_CHANGE = integer("vcpus", _VCPUS_HELP, minimum=VCPUS[0], maximum=VCPUS[1])
VRAM_CHANGE = integer("vram", _VRAM_HELP, minimum=VRAM_MB[0], maximum=VRAM_MB[1])
# value → record field, where they differ
SYSTEM_FIELDS = {"vcpus": "vcpu_count", "vram": "vram_mb"}


class SystemTemplateBase(ProvisionerHandler):
    async def add(self, name: str) -> None:
        template = SystemTemplate(check_object_name(name, "system template"),
                                  self.values[VCPUS_NEW], self.values[VRAM_NEW])
        for option in SYSTEM_OPTIONS:
            if self.values[option] is not None:
                setattr(template, option.name, self.values[option])
        check_system_template(template, self.view.node_names())
        await self.create("system", name, template.to_doc())
        self.message(f"Added system template '{name}'")


class SystemTemplateListHandler(SystemTemplateBase):
    @accepts(NAME_LIMIT)
    def get(self) -> None:
        self.reply(self.listed("system"))

    @accepts(NAME, VCPUS_NEW, VRAM_NEW, *SYSTEM_OPTIONS)
    @retry_lost_races
    async def post(self) -> None:
        await self.add(self.values[NAME])


class SystemTemplateHandler(SystemTemplateBase):
    def get(self, name: str) -> None:
        self.reply([self.record("system", name)[0].to_doc()])

    @accepts(VCPUS_NEW, VRAM_NEW, *SYSTEM_OPTIONS)
    @retry_lost_races
    async def post(self, name: str) -> None:
        await self.add(name)

    @accepts(VCPUS_CHANGE, VRAM_CHANGE, *SYSTEM_OPTIONS)
    @retry_lost_races
    async def put(self, name: str) -> None:
        template, version = self.record("system", name)
        given = [v for v in (VCPUS_CHANGE, VRAM_CHANGE, *SYSTEM_OPTIONS) if self.values.given(v)]
        if not given:
            raise InvalidValue("nothing to change: give at least one of vcpus, vram, "
                               f"{', '.join(v.name for v in SYSTEM_OPTIONS)}")
        for option in given:
            field = SYSTEM_FIELDS.get(option.name, option.name)
            new = self.values[option]
            if new is None and option in (VCPUS_CHANGE, VRAM_CHANGE):
                raise InvalidValue(f"{option.name} cannot be empty: a system template needs it")
            if new is None:  # given empty: back to the default (node_limit: no limit)
                new = getattr(SystemTemplate(name, 1, 64), field)
            setattr(template, field, new)
        check_system_template(template, self.view.node_names())
        await self.replace("system", name, template.to_doc(), version)
        self.message(f"Modified system template '{name}'")

    @retry_lost_races
    async def delete(self, name: str) -> None:
        await self.remove("system", name)
        self.message(f"Removed system template '{name}'")


# --- network templates (§3.3) ------------------------------------------------------------

MAC_TEMPLATE = value("mac_template", "MAC address template with {prefix} (52:54:01), {vmid} "
                     "and {netid}, e.g. {prefix}:a0:0{vmid}:0{netid} (default: random MACs).",
                     check_mac_template)
VNI = value("vni", "The VNI of an existing client network (managed or bridged).",
            parse_template_vni, required=True,
            schema={"type": "integer", "minimum": 1, "maximum": 2**24 - 1})
PERMIT_DUPLICATE = flag("permit_duplicate", "Allow a network the template already has (a "
                        "second NIC on it).")


class NetworkTemplateBase(ProvisionerHandler):
    def network_template(self, name: str) -> tuple[NetworkTemplate, int]:
        return self.record("network", name)

    async def add(self, name: str) -> None:
        template = NetworkTemplate(check_object_name(name, "network template"),
                                   self.values[MAC_TEMPLATE])
        await self.create("network", name, template.to_doc())
        self.message(f"Added network template '{name}'")

    async def add_network(self, name: str, vni: int) -> None:
        template, version = self.network_template(name)
        check_network_exists(vni, self.view.network_vnis())
        check_network_added(template, vni, self.values[PERMIT_DUPLICATE])
        template.networks.append(TemplateNetwork(vni))
        await self.replace("network", name, template.to_doc(), version)
        self.message(f"Added network {vni} to network template '{name}' (NIC "
                     f"{len(template.networks) - 1})")


class NetworkTemplateListHandler(NetworkTemplateBase):
    @accepts(NAME_LIMIT)
    def get(self) -> None:
        self.reply(self.listed("network"))

    @accepts(NAME, MAC_TEMPLATE)
    @retry_lost_races
    async def post(self) -> None:
        await self.add(self.values[NAME])


class NetworkTemplateHandler(NetworkTemplateBase):
    def get(self, name: str) -> None:
        self.reply([self.network_template(name)[0].to_doc()])

    @accepts(MAC_TEMPLATE)
    @retry_lost_races
    async def post(self, name: str) -> None:
        await self.add(name)

    @accepts(MAC_TEMPLATE)
    @retry_lost_races
    async def put(self, name: str) -> None:
        template, version = self.network_template(name)
        if not self.values.given(MAC_TEMPLATE):
            raise InvalidValue("nothing to change: give mac_template (empty: random MACs)")
        template.mac_template = self.values[MAC_TEMPLATE]
        await self.replace("network", name, template.to_doc(), version)
        self.message(f"Modified network template '{name}'")

    @retry_lost_races
    async def delete(self, name: str) -> None:
        await self.remove("network", name)
        self.message(f"Removed network template '{name}'")


class TemplateNetworkListHandler(NetworkTemplateBase):
    def get(self, name: str) -> None:
        template, _ = self.network_template(name)
        self.reply([dataclasses.asdict(n) for n in template.networks])

    @accepts(VNI, PERMIT_DUPLICATE)
    @retry_lost_races
    async def post(self, name: str) -> None:
        await self.add_network(name, self.values[VNI])


class TemplateNetworkHandler(NetworkTemplateBase):
    def matching(self, name: str, vni_text: str) -> tuple[NetworkTemplate, int, int]:
        template, version = self.network_template(name)
        vni = parse_template_vni(vni_text)
        return template, version, vni

    def get(self, name: str, vni_text: str) -> None:
        template, _, vni = self.matching(name, vni_text)
        found = [dataclasses.asdict(n) for n in template.networks if n.vni == vni]
        if not found:
            raise NotFound(f"network template '{name}' has no network {vni}")
        self.reply(found)

    @accepts(PERMIT_DUPLICATE)
    @retry_lost_races
    async def post(self, name: str, vni_text: str) -> None:
        await self.add_network(name, parse_template_vni(vni_text))

    @retry_lost_races
    async def delete(self, name: str, vni_text: str) -> None:
        template, version, vni = self.matching(name, vni_text)
        kept = [n for n in template.networks if n.vni != vni]
        if len(kept) == len(template.networks):
            raise NotFound(f"network template '{name}' has no network {vni}")
        removed = len(template.networks) - len(kept)
        template.networks = kept
        await self.replace("network", name, template.to_doc(), version)
        self.message(f"Removed network {vni} from network template '{name}'"
                     + (f" ({removed} NICs)" if removed > 1 else ""))


# --- storage templates (§3.4) ------------------------------------------------------------

DISK_ID = value("disk_id", "sd[a-z] (virtio-scsi) or vd[a-z] (virtio-blk), unique in the "
                "template.", check_disk_id, required=True)
POOL = value("pool", "An existing RBD pool.", check_pool_name, required=True)
SOURCE_VOLUME = value("source_volume", "A volume of the pool to copy (checked at creation).",
                      check_volume_name)
DISK_SIZE = integer("disk_size", "Size in GiB: of a new volume, or what a copy is grown to.",
                    minimum=DISK_SIZE_GB[0], maximum=DISK_SIZE_GB[1])
FILESYSTEM = choice("filesystem", FILESYSTEMS, "Format a new volume with this filesystem.")
FILESYSTEM_ARG = texts("filesystem_arg", "An argument of mkfs: -X or -X=value.",
                       check_filesystem_arg)
MOUNTPOINT = value("mountpoint", "An absolute path (stored; needs filesystem).",
                   check_mountpoint)
DISK_VALUES: tuple[Value[Any], ...] = (POOL, SOURCE_VOLUME, DISK_SIZE, FILESYSTEM,
                                       FILESYSTEM_ARG, MOUNTPOINT)


class StorageTemplateBase(ProvisionerHandler):
    def storage_template(self, name: str) -> tuple[StorageTemplate, int]:
        return self.record("storage", name)

    async def add(self, name: str) -> None:
        template = StorageTemplate(check_object_name(name, "storage template"))
        await self.create("storage", name, template.to_doc())
        self.message(f"Added storage template '{name}'")

    async def add_disk(self, name: str, disk_id: str) -> None:
        template, version = self.storage_template(name)
        if any(d.disk_id == disk_id for d in template.disks):
            raise InvalidValue(f"storage template '{name}' already has disk {disk_id}; remove "
                               "it first or choose another disk_id")
        disk = TemplateDisk(disk_id, self.values[POOL], self.values[SOURCE_VOLUME],
                            self.values[DISK_SIZE], self.values[FILESYSTEM],
                            self.values[FILESYSTEM_ARG], self.values[MOUNTPOINT])
        template.disks = sorted([*template.disks, disk], key=lambda d: d.disk_id)
        check_storage_template(template, self.view.cache.children(
            self.view.paths.storage_pools))
        for profile in profiles_naming(self.view, "storage", name):  # e.g. a blank profile
            try:
                check_profile(profile, self.exists, template)
            except InvalidValue as exc:
                raise InvalidValue(f"profile '{profile.name}' uses storage template '{name}', "
                                   f"and then: {exc}") from None
        await self.replace("storage", name, template.to_doc(), version)
        self.message(f"Added disk {disk_id} to storage template '{name}'")


class StorageTemplateListHandler(StorageTemplateBase):
    @accepts(NAME_LIMIT)
    def get(self) -> None:
        self.reply(self.listed("storage"))

    @accepts(NAME)
    @retry_lost_races
    async def post(self) -> None:
        await self.add(self.values[NAME])


class StorageTemplateHandler(StorageTemplateBase):
    def get(self, name: str) -> None:
        self.reply([self.storage_template(name)[0].to_doc()])

    @retry_lost_races
    async def post(self, name: str) -> None:
        await self.add(name)

    @retry_lost_races
    async def delete(self, name: str) -> None:
        await self.remove("storage", name)
        self.message(f"Removed storage template '{name}'")


class TemplateDiskListHandler(StorageTemplateBase):
    def get(self, name: str) -> None:
        self.reply(self.storage_template(name)[0].to_doc()["disks"])

    @accepts(DISK_ID, *DISK_VALUES)
    @retry_lost_races
    async def post(self, name: str) -> None:
        await self.add_disk(name, self.values[DISK_ID])


class TemplateDiskHandler(StorageTemplateBase):
    def get(self, name: str, disk_id: str) -> None:
        disks = self.storage_template(name)[0].to_doc()["disks"]
        found = [d for d in disks if d["disk_id"] == disk_id]
        if not found:
            raise NotFound(f"storage template '{name}' has no disk {disk_id[:40]}")
        self.reply(found)

    @accepts(*DISK_VALUES)
    @retry_lost_races
    async def post(self, name: str, disk_id: str) -> None:
        await self.add_disk(name, check_disk_id(disk_id))

    @retry_lost_races
    async def delete(self, name: str, disk_id: str) -> None:
        template, version = self.storage_template(name)
        kept = [d for d in template.disks if d.disk_id != disk_id]
        if len(kept) == len(template.disks):
            raise NotFound(f"storage template '{name}' has no disk {disk_id[:40]}")
        template.disks = kept
        await self.replace("storage", name, template.to_doc(), version)
        self.message(f"Removed disk {disk_id} from storage template '{name}'")


# --- all templates (§3.1) ----------------------------------------------------------------

class TemplateListHandler(ProvisionerHandler):
    @accepts(NAME_LIMIT)
    def get(self) -> None:
        pattern = self.values[NAME_LIMIT]
        self.reply({f"{kind}-templates": [t.to_doc() for t in read_objects(self.view, kind)
                                          if pattern is None or pattern.search(t.name)]
                    for kind in ("system", "network", "storage")})


ROUTES = [
    route("/provisioner/template", TemplateListHandler),
    route("/provisioner/template/system", SystemTemplateListHandler),
    route("/provisioner/template/system/<template>", SystemTemplateHandler),
    route("/provisioner/template/network", NetworkTemplateListHandler),
    route("/provisioner/template/network/<template>", NetworkTemplateHandler),
    route("/provisioner/template/network/<template>/net", TemplateNetworkListHandler),
    route("/provisioner/template/network/<template>/net/<vni>", TemplateNetworkHandler),
    route("/provisioner/template/storage", StorageTemplateListHandler),
    route("/provisioner/template/storage/<template>", StorageTemplateHandler),
    route("/provisioner/template/storage/<template>/disk", TemplateDiskListHandler),
    route("/provisioner/template/storage/<template>/disk/<disk_id>", TemplateDiskHandler),
]
