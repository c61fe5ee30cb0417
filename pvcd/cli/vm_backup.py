"""`pvc vm snapshot export|import`, `pvc vm backup create|list|remove|restore` and `pvc vm
restore`: VM exports and backups (extensions.md §5.2-5.4; docs/backups.md). PVC 1.0's names
and argument order: `DOMAIN SNAPSHOT_NAME EXPORT_PATH`, `DOMAIN BACKUP_PATH`, `DOMAIN
BACKUP_DATESTRING BACKUP_PATH`, `--incremental`, `--retain-snapshot`. Exports, imports, backups
and restores are tasks: the command answers with the task, or follows it with `--wait` and a
progress bar in bytes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from pvcd.cli.client import Value, api_path
from pvcd.cli.completion import complete_vms
from pvcd.cli.context import CliContext, confirm, format_option, pass_cli, yes_option
from pvcd.cli.output import Column, field, render_table, size_bytes
from pvcd.cli.progress import ProgressBar
from pvcd.cli.task import follow_task, interactive
from pvcd.cli.vm_snapshot import timeout_option, wait_option

vm_argument = click.argument("name", metavar="VM", shell_complete=complete_vms)
new_name_option = click.option("--new-name", default=None,
                               help="Import as a new VM of this name (a new UUID; volumes named "
                                    "after the VM are renamed).")
retain_option = click.option("--retain-snapshot/--no-retain-snapshot", default=True,
                             show_default=True,
                             help="Keep the imported snapshot as a VM snapshot.")
start_option = click.option("--start/--no-start", "start_vm", default=True, show_default=True,
                            help="Start the VM once it is defined.")


def run_backup_task(cli: CliContext, method: str, path: str, values: dict[str, Value],
                    wait: bool, timeout: float) -> None:
    """Start the task; print its acceptance, or follow it with a progress bar in bytes."""
    accepted = cli.client.request(method, path, values).json()
    if not wait:
        cli.message(str(accepted.get("message")), accepted if cli.json else None)
        return
    stream = sys.stderr
    follow_task(cli, str(accepted["task_id"]), timeout,
                ProgressBar(stream, interactive(cli, stream), unit="bytes"))


@click.command("export")
@vm_argument
@click.argument("snapshot_name")
@click.argument("export_path")
@click.option("--incremental", "-i", "incremental_parent", default=None, metavar="PARENT",
              help="Export only the difference from the older snapshot PARENT (its export must "
                   "be in EXPORT_PATH).")
@wait_option
@timeout_option
@format_option
@pass_cli
def snapshot_export(cli: CliContext, name: str, snapshot_name: str, export_path: str,
                    incremental_parent: str | None, wait: bool, timeout: float) -> None:
    """Export snapshot SNAPSHOT_NAME of VM into EXPORT_PATH/VM/SNAPSHOT_NAME/ on the primary
    (inside backup.allowed_paths)."""
    run_backup_task(cli, "POST", api_path("vm", name, "snapshot", "export"),
                    {"snapshot_name": snapshot_name, "export_path": export_path,
                     "incremental_parent": incremental_parent}, wait, timeout)


def restoring(command: Callable[..., None]) -> Callable[..., None]:
    """The options of an import and a restore: --new-name, --[no-]retain-snapshot,
    --start/--no-start, --wait, --timeout, --format."""
    for decorate in (pass_cli, format_option, timeout_option, wait_option, start_option,
                     retain_option, new_name_option):
        command = decorate(command)
    return command


@click.command("import")
@vm_argument
@click.argument("snapshot_name")
@click.argument("import_path")
@restoring
def snapshot_import(cli: CliContext, name: str, snapshot_name: str, import_path: str,
                    new_name: str | None, retain_snapshot: bool, start_vm: bool, wait: bool,
                    timeout: float) -> None:
    """Import the export IMPORT_PATH/VM/SNAPSHOT_NAME/ (and the exports it is incremental from)
    as a VM; every file's checksum is checked before anything is created."""
    run_backup_task(cli, "POST", api_path("vm", name, "snapshot", "import"),
                    {"snapshot_name": snapshot_name, "import_path": import_path,
                     "new_name": new_name, "retain_snapshot": retain_snapshot,
                     "start_vm": start_vm}, wait, timeout)


def backups_table(backups: list[dict[str, Any]]) -> str:
    return render_table(backups, [
        Column("DATESTRING", field("datestring")),
        Column("TAKEN", lambda b: time.strftime("%Y-%m-%d %H:%M:%S",
                                                time.localtime(float(b.get("created") or 0)))),
        Column("TYPE", field("type")),
        Column("PARENT", lambda b: b.get("incremental_parent") or "-"),
        Column("SIZE", lambda b: size_bytes(int(b.get("export_size_bytes") or 0))),
        Column("SNAPSHOT", lambda b: "retained" if b.get("retained_snapshot") else "-"),
    ], empty="No backups of this VM there.")


@click.group("backup")
def vm_backup() -> None:
    """Per-VM backups into a folder on the primary (inside backup.allowed_paths)."""


@vm_backup.command("create")
@vm_argument
@click.argument("backup_path")
@click.option("--incremental", "-i", "incremental_parent", default=None,
              metavar="DATESTRING", help="Back up only the difference from the earlier full "
                                         "backup DATESTRING (taken with --retain-snapshot).")
@click.option("--retain-snapshot", "-r", is_flag=True,
              help="Keep this full backup's snapshot, so later backups can be incremental.")
@wait_option
@timeout_option
@format_option
@pass_cli
def backup_create(cli: CliContext, name: str, backup_path: str, incremental_parent: str | None,
                  retain_snapshot: bool, wait: bool, timeout: float) -> None:
    """Back VM up into BACKUP_PATH/VM/<datestring>/."""
    run_backup_task(cli, "POST", api_path("vm", name, "backup"),
                    {"backup_path": backup_path, "incremental_parent": incremental_parent,
                     "retain_snapshot": retain_snapshot or None}, wait, timeout)


@vm_backup.command("list")
@vm_argument
@click.argument("backup_path")
@format_option
@pass_cli
def backup_list(cli: CliContext, name: str, backup_path: str) -> None:
    """List the backups of VM (or of a removed VM of that name) in BACKUP_PATH."""
    cli.emit(cli.client.get(api_path("vm", name, "backup"), {"backup_path": backup_path}),
             backups_table)


@vm_backup.command("remove")
@vm_argument
@click.argument("backup_datestring")
@click.argument("backup_path")
@yes_option
@format_option
@pass_cli
def backup_remove(cli: CliContext, name: str, backup_datestring: str, backup_path: str,
                  yes: bool) -> None:
    """Remove backup BACKUP_DATESTRING of VM from BACKUP_PATH (and its retained snapshot)."""
    confirm(yes, f"Remove backup {backup_datestring} of VM '{name}' from {backup_path}?")
    cli.message(cli.client.delete(api_path("vm", name, "backup"),
                                  {"backup_path": backup_path,
                                   "backup_datestring": backup_datestring}))


@click.command("restore")
@vm_argument
@click.argument("backup_datestring")
@click.argument("backup_path")
@restoring
def vm_restore(cli: CliContext, name: str, backup_datestring: str, backup_path: str,
               new_name: str | None, retain_snapshot: bool, start_vm: bool, wait: bool,
               timeout: float) -> None:
    """Restore backup BACKUP_DATESTRING of VM from BACKUP_PATH (checksums first)."""
    run_backup_task(cli, "POST", api_path("vm", name, "restore"),
                    {"backup_path": backup_path, "backup_datestring": backup_datestring,
                     "new_name": new_name, "retain_snapshot": retain_snapshot,
                     "start_vm": start_vm}, wait, timeout)


vm_backup.add_command(vm_restore)  # PVC's `pvc vm backup restore`
