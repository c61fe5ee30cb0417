"""`pvc provisioner`: templates (system, network, storage), userdata, the built-in install
methods and profiles (extensions.md §3). This module holds the group and the templates; the
rest is in `pvcd.cli.provisioner_profiles`.

Option names follow PVC's CLI (`--vcpus`, `--vram`, `--size`, `--filesystem-arg`, ...); they
map onto the API's values one to one. `modify` sends only the options given.
"""

from __future__ import annotations

from typing import Any

import click

from pvcd.cli.client import Value, api_path
from pvcd.cli.context import CliContext, confirm, format_option, pass_cli, yes_option
from pvcd.cli.output import Column, Row, field, table_of
from pvcd.cli.ova import ova
from pvcd.cli.provisioner_objects import object_commands
from pvcd.cli.provisioner_profiles import profile, script, userdata

SELECTORS = ("mem", "memprov", "vcpus", "load", "vms", "none")
MIGRATION_METHODS = ("live", "shutdown", "none")
FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "swap")
T = "/provisioner/template"


@click.group()
def provisioner() -> None:
    """Templates, userdata, install methods and profiles to create VMs from."""


@provisioner.group("template")
def template() -> None:
    """System, network and storage templates."""


SYSTEM_COLUMNS = [
    Column("NAME", field("name")), Column("VCPUS", field("vcpu_count"), right=True),
    Column("VRAM MB", field("vram_mb"), right=True), Column("SERIAL", field("serial")),
    Column("VNC", field("vnc")), Column("VNC BIND", field("vnc_bind")),
    Column("NODE LIMIT", field("node_limit")), Column("SELECTOR", field("node_selector")),
    Column("AUTOSTART", field("node_autostart")), Column("MIGRATION", field("migration_method")),
    Column("MAX DOWNTIME", field("migration_max_downtime"), right=True),
]


def _vnis(row: Row) -> str:
    return ", ".join(str(n.get("vni")) for n in row.get("networks") or []) or "-"


NETWORK_COLUMNS = [Column("NAME", field("name")), Column("MAC TEMPLATE", field("mac_template")),
                   Column("NETWORKS (NIC ORDER)", _vnis)]


def _disk_line(disk: Row) -> str:
    parts = [f"{disk.get('disk_id')}: {disk.get('pool')}"]
    if disk.get("source_volume"):
        parts.append(f"copy of {disk['source_volume']}")
    if disk.get("disk_size_gb"):
        parts.append(f"{disk['disk_size_gb']} GiB")
    if disk.get("filesystem"):
        parts.append(" ".join([disk["filesystem"], *(disk.get("filesystem_args") or [])]))
    if disk.get("mountpoint"):
        parts.append(f"at {disk['mountpoint']}")
    return ", ".join(parts)


STORAGE_COLUMNS = [Column("NAME", field("name")),
                   Column("DISKS", lambda row: "; ".join(
                       _disk_line(d) for d in row.get("disks") or []) or "-")]
DISK_COLUMNS = [
    Column("DISK", field("disk_id")), Column("POOL", field("pool")),
    Column("SOURCE VOLUME", field("source_volume")),
    Column("SIZE GB", field("disk_size_gb"), right=True),
    Column("FILESYSTEM", field("filesystem")), Column("FS ARGS", field("filesystem_args")),
    Column("MOUNTPOINT", field("mountpoint")),
]


def _sections(doc: Any) -> str:
    blocks = [("System templates", SYSTEM_COLUMNS, "system-templates"),
              ("Network templates", NETWORK_COLUMNS, "network-templates"),
              ("Storage templates", STORAGE_COLUMNS, "storage-templates")]
    return "\n\n".join(f"{title}:\n" + table_of(columns, "  none")(doc.get(key) or [])
                       for title, columns, key in blocks)


@template.command("list")
@click.argument("limit", required=False)
@format_option
@pass_cli
def template_list(cli: CliContext, limit: str | None) -> None:
    """List the templates of every kind (LIMIT: a regular expression matched in the names)."""
    cli.emit(cli.client.get(T, {"limit": limit}), _sections)


# --- system -------------------------------------------------------------------------------

@template.group("system")
def system() -> None:
    """System templates: vCPUs, memory, consoles and placement of new VMs."""


object_commands(system, ("template", "system"), "system templates", SYSTEM_COLUMNS,
                remove_note=" (refused while a profile names it)")


def system_options(required: bool) -> Any:
    def add(command: Any) -> Any:
        options: list[tuple[str, dict[str, Any]]] = [
            ("--vcpus", {"type": click.IntRange(1, 256), "required": required,
                         "help": "Virtual CPUs."}),
            ("--vram", {"type": click.IntRange(64), "required": required,
                        "help": "Memory in MiB."}),
            ("--serial/--no-serial", {"default": None, "help": "A serial console (default: "
                                                              "yes)."}),
            ("--vnc/--no-vnc", {"default": None, "help": "A VNC console (default: no)."}),
            ("--vnc-bind", {"help": "Address VNC listens on (default 127.0.0.1)."}),
            ("--node-limit", {"help": "Comma-separated nodes the VM may run on ('' in modify: "
                                      "any)."}),
            ("--node-selector", {"type": click.Choice(SELECTORS),
                                 "help": "How a node is chosen."}),
            ("--node-autostart/--no-node-autostart", {"default": None,
                                                     "help": "Start when its node is ready."}),
            ("--migration-method", {"type": click.Choice(MIGRATION_METHODS),
                                    "help": "How the VM moves."}),
            ("--migration-max-downtime", {"type": click.IntRange(1, 60000),
                                          "help": "Longest live-migration pause, ms."}),
        ]
        for decl, kwargs in reversed(options):
            command = click.option(decl, **kwargs)(command)
        return command
    return add


def _system_values(options: dict[str, Any]) -> dict[str, Value]:
    return {name: options[name] for name in (
        "vcpus", "vram", "serial", "vnc", "vnc_bind", "node_limit", "node_selector",
        "node_autostart", "migration_method", "migration_max_downtime")}


@system.command("add")
@click.argument("name")
@system_options(required=True)
@format_option
@pass_cli
def system_add(cli: CliContext, name: str, **options: Any) -> None:
    """Add system template NAME."""
    cli.message(cli.client.post(f"{T}/system", {"name": name, **_system_values(options)}))


@system.command("modify")
@click.argument("name")
@system_options(required=False)
@format_option
@pass_cli
def system_modify(cli: CliContext, name: str, **options: Any) -> None:
    """Change the given values of system template NAME."""
    values = _system_values(options)
    if all(v is None for v in values.values()):
        raise click.UsageError("nothing to change: give at least one option")
    cli.message(cli.client.put(api_path("provisioner", "template", "system", name), values))


# --- network ------------------------------------------------------------------------------

@template.group("network")
def network() -> None:
    """Network templates: the client networks of a new VM's NICs, and their MACs."""


object_commands(network, ("template", "network"), "network templates", NETWORK_COLUMNS,
                remove_note=" (refused while a profile names it)")
MAC_HELP = ("MAC template, e.g. '{prefix}:a0:0{vmid}:0{netid}' ({prefix} is 52:54:01; "
            "default: random MACs).")


@network.command("add")
@click.argument("name")
@click.option("--mac-template", help=MAC_HELP)
@format_option
@pass_cli
def network_add(cli: CliContext, name: str, mac_template: str | None) -> None:
    """Add network template NAME (add its networks with `net add`)."""
    cli.message(cli.client.post(f"{T}/network", {"name": name, "mac_template": mac_template}))


@network.command("modify")
@click.argument("name")
@click.option("--mac-template", required=True, help=MAC_HELP + " '' for random MACs.")
@format_option
@pass_cli
def network_modify(cli: CliContext, name: str, mac_template: str) -> None:
    """Change the MAC template of network template NAME."""
    cli.message(cli.client.put(api_path("provisioner", "template", "network", name),
                               {"mac_template": mac_template}))


@network.group("net")
def net() -> None:
    """The networks of a network template, in NIC order."""


@net.command("add")
@click.argument("name")
@click.argument("vni")
@click.option("--permit-duplicate", is_flag=True, help="Add a network the template has "
                                                       "already (a second NIC on it).")
@format_option
@pass_cli
def net_add(cli: CliContext, name: str, vni: str, permit_duplicate: bool) -> None:
    """Add client network VNI to network template NAME (the next NIC)."""
    cli.message(cli.client.post(api_path("provisioner", "template", "network", name, "net"),
                                {"vni": vni, "permit_duplicate": permit_duplicate or None}))


@net.command("remove")
@click.argument("name")
@click.argument("vni")
@yes_option
@format_option
@pass_cli
def net_remove(cli: CliContext, name: str, vni: str, yes: bool) -> None:
    """Remove network VNI from network template NAME."""
    confirm(yes, f"Remove network {vni} from network template '{name}'?")
    cli.message(cli.client.delete(api_path("provisioner", "template", "network", name, "net",
                                           vni)))


# --- storage ------------------------------------------------------------------------------

@template.group("storage")
def storage() -> None:
    """Storage templates: the disks of a new VM."""


object_commands(storage, ("template", "storage"), "storage templates", STORAGE_COLUMNS,
                remove_note=" (refused while a profile names it)")


@storage.command("add")
@click.argument("name")
@format_option
@pass_cli
def storage_add(cli: CliContext, name: str) -> None:
    """Add storage template NAME (add its disks with `disk add`)."""
    cli.message(cli.client.post(f"{T}/storage", {"name": name}))


@storage.group("disk")
def disk() -> None:
    """The disks of a storage template."""


@disk.command("add")
@click.argument("name")
@click.argument("disk_id")
@click.option("--pool", "-p", required=True, help="An existing RBD pool.")
@click.option("--source-volume", "-i", help="A volume of the pool to copy.")
@click.option("--size", "-s", type=click.IntRange(1), help="Size in GiB (of a new volume, or "
                                                            "what a copy is grown to).")
@click.option("--filesystem", "filesystem", type=click.Choice(FILESYSTEMS),
              help="Format a new volume with this filesystem.")
@click.option("--filesystem-arg", "filesystem_args", multiple=True,
              help="An argument of mkfs, -X or -X=value; repeat for more.")
@click.option("--mountpoint", "-m", help="An absolute path (stored; needs --filesystem).")
@format_option
@pass_cli
def disk_add(cli: CliContext, name: str, disk_id: str, pool: str, source_volume: str | None,
             size: int | None, filesystem: str | None, filesystem_args: tuple[str, ...],
             mountpoint: str | None) -> None:
    """Add disk DISK_ID (sd[a-z] or vd[a-z]) to storage template NAME."""
    cli.message(cli.client.post(
        api_path("provisioner", "template", "storage", name, "disk"),
        {"disk_id": disk_id, "pool": pool, "source_volume": source_volume, "disk_size": size,
         "filesystem": filesystem,
         "filesystem_arg": list(filesystem_args) if filesystem_args else None,
         "mountpoint": mountpoint}))


@disk.command("remove")
@click.argument("name")
@click.argument("disk_id")
@yes_option
@format_option
@pass_cli
def disk_remove(cli: CliContext, name: str, disk_id: str, yes: bool) -> None:
    """Remove disk DISK_ID from storage template NAME."""
    confirm(yes, f"Remove disk {disk_id} from storage template '{name}'?")
    cli.message(cli.client.delete(api_path("provisioner", "template", "storage", name, "disk",
                                           disk_id)))


@disk.command("list")
@click.argument("name")
@format_option
@pass_cli
def disk_list(cli: CliContext, name: str) -> None:
    """List the disks of storage template NAME."""
    cli.emit(cli.client.get(api_path("provisioner", "template", "storage", name, "disk")),
             table_of(DISK_COLUMNS, "No disks."))


for group in (userdata, script, profile, ova):
    provisioner.add_command(group)
