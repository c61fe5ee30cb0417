"""`pvc storage`: the Ceph cluster's status and utilisation, OSDs, pools, volumes, snapshots.

Ceph writes return only once Ceph has carried them out (the manual's safety rule), so they
are sent with a long HTTP timeout and need no `--wait`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pvcd.cli.client import STORAGE_TIMEOUT, api_path
from pvcd.cli.completion import complete_nodes
from pvcd.cli.context import CliContext, confirm, format_option, pass_cli, yes_option
from pvcd.cli.output import Column, field, render_fields, size_bytes, table_of
from pvcd.cli.upload import volume_upload

CEPH = ("storage", "ceph")
Command = TypeVar("Command", bound=Callable[..., Any])


def ceph_text(doc: Any) -> str:
    """`ceph status` / `rados df` as the API passed it on (text, or a parsed form)."""
    data = doc.get("ceph_data") if isinstance(doc, dict) else doc
    if isinstance(data, str):
        return data.rstrip("\n")
    return json.dumps(data, indent=2)


def stat(*keys: str) -> Any:
    return field("stats", *keys)


OSD_COLUMNS = [
    Column("ID", field("id"), right=True),
    Column("NODE", lambda o: o.get("node") or stat("node")(o)),
    Column("DEVICE", field("device")),
    Column("UP", stat("up")),
    Column("IN", stat("in")),
    Column("WEIGHT", stat("weight"), right=True),
    Column("REWEIGHT", stat("reweight"), right=True),
    Column("PGS", stat("pgs"), right=True),
    Column("USED", lambda o: size_bytes(stat("used")(o)), right=True),
    Column("AVAIL", lambda o: size_bytes(stat("avail")(o)), right=True),
    Column("UTIL %", stat("utilization"), right=True),
    Column("STATE", stat("state")),
]

POOL_COLUMNS = [
    Column("NAME", field("name")),
    Column("ID", stat("id"), right=True),
    Column("PGS", field("pgs"), right=True),
    Column("SIZE", lambda p: size_bytes(stat("size_bytes")(p)), right=True),
    Column("OBJECTS", stat("num_objects"), right=True),
    Column("CLONES", stat("num_object_clones"), right=True),
    Column("COPIES", stat("num_object_copies"), right=True),
    Column("DEGRADED", stat("num_objects_degraded"), right=True),
    Column("UNFOUND", stat("num_objects_unfound"), right=True),
    Column("READ OPS", stat("read_ops"), right=True),
    Column("READ", lambda p: size_bytes(stat("read_bytes")(p)), right=True),
    Column("WRITE OPS", stat("write_ops"), right=True),
    Column("WRITTEN", lambda p: size_bytes(stat("write_bytes")(p)), right=True),
]

VOLUME_COLUMNS = [
    Column("NAME", field("name")),
    Column("POOL", field("pool")),
    Column("SIZE", lambda v: size_bytes(stat("size")(v)), right=True),
    Column("OBJECTS", stat("num_objs"), right=True),
    Column("ORDER", stat("order"), right=True),
    Column("FORMAT", stat("format"), right=True),
    Column("FEATURES", stat("features")),
]

SNAPSHOT_COLUMNS = [
    Column("POOL", field("pool")),
    Column("VOLUME", field("volume")),
    Column("SNAPSHOT", field("snapshot")),
]


def osd_details(osds: Any) -> str:
    rows = osds if isinstance(osds, list) else [osds]
    return "\n\n".join(render_fields([
        ("ID", osd.get("id")), ("Node", osd.get("node")), ("Device", osd.get("device")),
        *[(k, v) for k, v in (osd.get("stats") or {}).items() if k != "node"]])
        for osd in rows)


@click.group()
def storage() -> None:
    """Ceph storage: status, OSDs, pools, volumes and snapshots."""


@storage.command("status")
@format_option
@pass_cli
def storage_status(cli: CliContext) -> None:
    """Show the Ceph cluster's status (`ceph status`)."""
    cli.emit(cli.client.get(api_path(*CEPH, "status")), ceph_text)


@storage.command("util")
@format_option
@pass_cli
def storage_util(cli: CliContext) -> None:
    """Show the Ceph cluster's utilisation (`rados df`)."""
    cli.emit(cli.client.get(api_path(*CEPH, "df")), ceph_text)


@storage.command("request")
@click.argument("request_id", metavar="ID")
@format_option
@pass_cli
def storage_request(cli: CliContext, request_id: str) -> None:
    """Show a storage request (one the API stopped waiting for names its ID)."""
    cli.emit(cli.client.get(api_path(*CEPH, "request", request_id)),
             lambda r: render_fields([(k.replace("_", " ").capitalize(), v)
                                      for k, v in r.items()]))


# --- OSDs -------------------------------------------------------------------------------


@storage.group("osd")
def osd() -> None:
    """Ceph OSDs (one per disk) and cluster-wide OSD options."""


@osd.command("list")
@click.argument("limit", required=False)
@format_option
@pass_cli
def osd_list(cli: CliContext, limit: str | None) -> None:
    """List OSDs (LIMIT: a regular expression)."""
    cli.emit(cli.client.get(api_path(*CEPH, "osd"), {"limit": limit}),
             table_of(OSD_COLUMNS, "No OSDs found."))


@osd.command("info")
@click.argument("osd_id", metavar="ID")
@format_option
@pass_cli
def osd_info(cli: CliContext, osd_id: str) -> None:
    """Show one OSD."""
    cli.emit(cli.client.get(api_path(*CEPH, "osd", osd_id)), osd_details)


@osd.command("add")
@click.argument("node", shell_complete=complete_nodes)
@click.argument("device")
@click.option("--weight", type=float, default=1.0, show_default=True,
              help="CRUSH weight (1.0 when all disks are the same size).")
@format_option
@pass_cli
def osd_add(cli: CliContext, node: str, device: str, weight: float) -> None:
    """Create an OSD on DEVICE (e.g. /dev/sdb) of NODE."""
    cli.message(cli.client.post(api_path(*CEPH, "osd"),
                                {"node": node, "device": device, "weight": weight},
                                timeout=STORAGE_TIMEOUT))


@osd.command("remove")
@click.argument("osd_id", metavar="ID")
@yes_option
@format_option
@pass_cli
def osd_remove(cli: CliContext, osd_id: str, yes: bool) -> None:
    """Remove an OSD (set it out and let it drain first)."""
    confirm(yes, f"Remove OSD {osd_id}? Without draining it first, data redundancy suffers.")
    cli.message(cli.client.delete(api_path(*CEPH, "osd", osd_id),
                                  {"yes_i_really_mean_it": True}, timeout=STORAGE_TIMEOUT))


def _osd_state(cli: CliContext, osd_id: str, state: str) -> None:
    cli.message(cli.client.post(api_path(*CEPH, "osd", osd_id, "state"), {"state": state},
                                timeout=STORAGE_TIMEOUT))


@osd.command("in")
@click.argument("osd_id", metavar="ID")
@format_option
@pass_cli
def osd_in(cli: CliContext, osd_id: str) -> None:
    """Mark an OSD in (it takes data)."""
    _osd_state(cli, osd_id, "in")


@osd.command("out")
@click.argument("osd_id", metavar="ID")
@format_option
@pass_cli
def osd_out(cli: CliContext, osd_id: str) -> None:
    """Mark an OSD out (its data moves elsewhere)."""
    _osd_state(cli, osd_id, "out")


def _cluster_option(cli: CliContext, action: str, option: str) -> None:
    cli.message(cli.client.post(api_path(*CEPH, "cluster-option"),
                                {"action": action, "option": option}, timeout=STORAGE_TIMEOUT))


@osd.command("set")
@click.argument("option")
@format_option
@pass_cli
def osd_set(cli: CliContext, option: str) -> None:
    """Set a cluster-wide OSD option (e.g. noout, noscrub)."""
    _cluster_option(cli, "set", option)


@osd.command("unset")
@click.argument("option")
@format_option
@pass_cli
def osd_unset(cli: CliContext, option: str) -> None:
    """Unset a cluster-wide OSD option."""
    _cluster_option(cli, "unset", option)


# --- pools ------------------------------------------------------------------------------


@storage.group("pool")
def pool() -> None:
    """RBD pools."""


@pool.command("list")
@click.argument("limit", required=False)
@format_option
@pass_cli
def pool_list(cli: CliContext, limit: str | None) -> None:
    """List pools (LIMIT: a regular expression matched in the names)."""
    cli.emit(cli.client.get(api_path(*CEPH, "pool"), {"limit": limit}),
             table_of(POOL_COLUMNS, "No pools found."))


@pool.command("info")
@click.argument("name")
@format_option
@pass_cli
def pool_info(cli: CliContext, name: str) -> None:
    """Show one pool."""
    cli.emit(cli.client.get(api_path(*CEPH, "pool", name)), table_of(POOL_COLUMNS, ""))


@pool.command("add")
@click.argument("name")
@click.argument("pgs", type=click.IntRange(min=1))
@format_option
@pass_cli
def pool_add(cli: CliContext, name: str, pgs: int) -> None:
    """Create pool NAME with PGS placement groups (3 copies)."""
    cli.message(cli.client.post(api_path(*CEPH, "pool"), {"pool": name, "pgs": pgs},
                                timeout=STORAGE_TIMEOUT))


@pool.command("remove")
@click.argument("name")
@yes_option
@format_option
@pass_cli
def pool_remove(cli: CliContext, name: str, yes: bool) -> None:
    """Remove a pool and DELETE every volume in it."""
    confirm(yes, f"Remove pool '{name}' and DELETE ALL ITS VOLUMES?")
    cli.message(cli.client.delete(api_path(*CEPH, "pool", name), {"yes_i_really_mean_it": True},
                                  timeout=STORAGE_TIMEOUT))


# --- volumes ----------------------------------------------------------------------------

FORCE_OPTION = click.option("--force", is_flag=True,
                            help="Allow the pool past 80 % of its capacity (the soft cap).")
LONG_WAIT_OPTION = click.option("--wait", is_flag=True,
                                help="Wait up to the API's api.task_wait (120 s) instead of "
                                     "the storage request timeout before it goes on as a task.")


@storage.group("volume")
def volume() -> None:
    """RBD volumes (VM disks)."""


volume.add_command(volume_upload)


@volume.command("list")
@click.argument("limit", required=False)
@click.option("--pool", "-p", "pool_name", help="Only volumes of this pool.")
@format_option
@pass_cli
def volume_list(cli: CliContext, limit: str | None, pool_name: str | None) -> None:
    """List volumes (LIMIT: a regular expression matched in the names)."""
    cli.emit(cli.client.get(api_path(*CEPH, "volume"), {"limit": limit, "pool": pool_name}),
             table_of(VOLUME_COLUMNS, "No volumes found."))


@volume.command("info")
@click.argument("pool_name", metavar="POOL")
@click.argument("name")
@format_option
@pass_cli
def volume_info(cli: CliContext, pool_name: str, name: str) -> None:
    """Show one volume."""
    cli.emit(cli.client.get(api_path(*CEPH, "volume", pool_name, name)),
             table_of(VOLUME_COLUMNS, ""))


@volume.command("add")
@click.argument("pool_name", metavar="POOL")
@click.argument("name")
@click.argument("size")
@format_option
@pass_cli
def volume_add(cli: CliContext, pool_name: str, name: str, size: str) -> None:
    """Create volume NAME of SIZE (bytes, or with a unit: 4096M, 20G) in POOL."""
    cli.message(cli.client.post(api_path(*CEPH, "volume"),
                                {"volume": name, "pool": pool_name, "size": size},
                                timeout=STORAGE_TIMEOUT))


@volume.command("resize")
@click.argument("pool_name", metavar="POOL")
@click.argument("name")
@click.argument("size")
@click.option("--allow-shrink", is_flag=True,
              help="Allow a smaller SIZE (the data beyond it is destroyed).")
@FORCE_OPTION
@format_option
@pass_cli
def volume_resize(cli: CliContext, pool_name: str, name: str, size: str,
                  allow_shrink: bool, force: bool) -> None:
    """Resize a volume to SIZE (bytes, or with a unit: 4096M, 20G)."""
    cli.message(cli.client.put(api_path(*CEPH, "volume", pool_name, name),
                               {"size": size, "allow_shrink": allow_shrink or None,
                                "force": force or None},
                               timeout=STORAGE_TIMEOUT))


@volume.command("clone")
@click.argument("pool_name", metavar="POOL")
@click.argument("name")
@click.argument("new_name")
@click.option("--snapshot", "-s", help="Copy the volume as it was at this snapshot.")
@FORCE_OPTION
@LONG_WAIT_OPTION
@format_option
@pass_cli
def volume_clone(cli: CliContext, pool_name: str, name: str, new_name: str,
                 snapshot: str | None, force: bool, wait: bool) -> None:
    """Copy volume NAME (or its --snapshot) into the new, independent volume NEW_NAME.

    A copy still running after the API's timeout goes on as a task (follow it with `pvc task
    wait ID`). A volume a running VM uses is copied from a snapshot only."""
    cli.message(cli.client.post(api_path(*CEPH, "volume", pool_name, name, "clone"),
                                {"new_volume": new_name, "snapshot": snapshot,
                                 "force": force or None, "wait": wait or None},
                                timeout=STORAGE_TIMEOUT))


@volume.command("rename")
@click.argument("pool_name", metavar="POOL")
@click.argument("name")
@click.argument("new_name")
@format_option
@pass_cli
def volume_rename(cli: CliContext, pool_name: str, name: str, new_name: str) -> None:
    """Rename a volume."""
    cli.message(cli.client.put(api_path(*CEPH, "volume", pool_name, name), {"name": new_name},
                               timeout=STORAGE_TIMEOUT))


@volume.command("remove")
@click.argument("pool_name", metavar="POOL")
@click.argument("name")
@yes_option
@format_option
@pass_cli
def volume_remove(cli: CliContext, pool_name: str, name: str, yes: bool) -> None:
    """Remove a volume and DELETE its data."""
    confirm(yes, f"Remove volume '{pool_name}/{name}' and DELETE ITS DATA?")
    cli.message(cli.client.delete(api_path(*CEPH, "volume", pool_name, name),
                                  timeout=STORAGE_TIMEOUT))


# --- snapshots --------------------------------------------------------------------------


def snapshot_arguments(command: Command) -> Command:
    """POOL VOLUME NAME: the snapshot a command works on."""
    return click.argument("pool_name", metavar="POOL")(
        click.argument("volume_name", metavar="VOLUME")(click.argument("name")(command)))


@storage.group("snapshot")
def snapshot() -> None:
    """RBD volume snapshots."""


@snapshot.command("list")
@click.argument("limit", required=False)
@click.option("--pool", "-p", "pool_name", help="Only snapshots in this pool.")
@click.option("--volume", "-V", "volume_name", help="Only snapshots of this volume.")
@format_option
@pass_cli
def snapshot_list(cli: CliContext, limit: str | None, pool_name: str | None,
                  volume_name: str | None) -> None:
    """List snapshots (LIMIT: a regular expression matched in the names)."""
    values = {"limit": limit, "pool": pool_name, "volume": volume_name}
    cli.emit(cli.client.get(api_path(*CEPH, "volume", "snapshot"), values),
             table_of(SNAPSHOT_COLUMNS, "No snapshots found."))


@snapshot.command("info")
@snapshot_arguments
@format_option
@pass_cli
def snapshot_info(cli: CliContext, pool_name: str, volume_name: str, name: str) -> None:
    """Show one snapshot."""
    cli.emit(cli.client.get(api_path(*CEPH, "volume", "snapshot", pool_name, volume_name, name)),
             table_of(SNAPSHOT_COLUMNS, ""))


@snapshot.command("add")
@snapshot_arguments
@format_option
@pass_cli
def snapshot_add(cli: CliContext, pool_name: str, volume_name: str, name: str) -> None:
    """Snapshot VOLUME of POOL as NAME."""
    cli.message(cli.client.post(api_path(*CEPH, "volume", "snapshot"),
                                {"snapshot": name, "volume": volume_name, "pool": pool_name},
                                timeout=STORAGE_TIMEOUT))


@snapshot.command("remove")
@snapshot_arguments
@yes_option
@format_option
@pass_cli
def snapshot_remove(cli: CliContext, pool_name: str, volume_name: str, name: str,
                    yes: bool) -> None:
    """Remove a snapshot."""
    confirm(yes, f"Remove snapshot '{pool_name}/{volume_name}@{name}'?")
    cli.message(cli.client.delete(
        api_path(*CEPH, "volume", "snapshot", pool_name, volume_name, name),
        timeout=STORAGE_TIMEOUT))


@snapshot.command("rename")
@snapshot_arguments
@click.argument("new_name")
@format_option
@pass_cli
def snapshot_rename(cli: CliContext, pool_name: str, volume_name: str, name: str,
                    new_name: str) -> None:
    """Rename snapshot NAME of VOLUME to NEW_NAME."""
    cli.message(cli.client.put(
        api_path(*CEPH, "volume", "snapshot", pool_name, volume_name, name),
        {"new_name": new_name}, timeout=STORAGE_TIMEOUT))


@snapshot.command("rollback")
@snapshot_arguments
@LONG_WAIT_OPTION
@yes_option
@format_option
@pass_cli
def snapshot_rollback(cli: CliContext, pool_name: str, volume_name: str, name: str,
                      wait: bool, yes: bool) -> None:
    """Roll VOLUME back to snapshot NAME (what it holds now is LOST).

    Refused while a VM using the volume is not stopped, or anyone has it open."""
    confirm(yes, f"Roll '{pool_name}/{volume_name}' back to snapshot '{name}' and LOSE what "
                 "it holds now?")
    cli.message(cli.client.post(
        api_path(*CEPH, "volume", "snapshot", pool_name, volume_name, name, "rollback"),
        {"wait": wait or None}, timeout=STORAGE_TIMEOUT))
