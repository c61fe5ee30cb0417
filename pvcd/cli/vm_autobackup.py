"""`pvc vm autobackup [show|set|run]`: autobackup (extensions.md §5.5; docs/backups.md).

PVC 1.0's `pvc vm autobackup [--force-full] [--wait]` runs it now; that still works (the group
without a subcommand runs). pvcd keeps the configuration in the cluster rather than in a
config file, so `show` and `set` read and change it (`GET`/`PUT /vm/autobackup`)."""

from __future__ import annotations

import time
from typing import Any

import click

from pvcd.cli.context import CliContext, format_option, pass_cli
from pvcd.cli.output import Column, render_fields, render_table, size_bytes
from pvcd.cli.vm_backup import run_backup_task
from pvcd.cli.vm_snapshot import timeout_option, wait_option

PATH = "/vm/autobackup"
force_full_option = click.option("--force-full", "-F", is_flag=True,
                                 help="Take full backups of every VM in this run.")


def _when(moment: Any) -> str:
    if not isinstance(moment, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(moment)))


def autobackup_details(doc: dict[str, Any]) -> str:
    last = doc.get("last_run") or {}
    fields = render_fields([
        ("Enabled", "yes" if doc.get("enabled") else "no"),
        ("Folder", f"{doc.get('backup_root_path') or '-'}{doc.get('backup_root_suffix') or ''}"),
        ("Tags", ", ".join(doc.get("backup_tags") or []) or "-"),
        ("Schedule", f"{doc.get('schedule')} (the primary's local time)"),
        ("Full interval", doc.get("full_interval")),
        ("Full retention", doc.get("full_retention")),
        ("Next run", _when(doc.get("next_run"))),
        ("Last run", f"{last.get('task_id')} {last.get('state')}, started "
                     f"{_when(last.get('started'))}" if last else "-"),
    ])
    latest = [{"vm": name, **entry} for name, entry in sorted((doc.get("latest") or {}).items())]
    if not latest:
        return fields
    table = render_table(latest, [
        Column("VM", lambda e: e["vm"]),
        Column("RESULT", lambda e: e.get("result") or "-"),
        Column("TYPE", lambda e: e.get("type") or "-"),
        Column("SNAPSHOT", lambda e: e.get("snapshot_name") or "-"),
        Column("SIZE", lambda e: size_bytes(int(e.get("export_size_bytes") or 0))),
        Column("MESSAGE", lambda e: e.get("message") or ""),
    ])
    return f"{fields}\n\n{table}"


@click.group("autobackup", invoke_without_command=True)
@force_full_option
@wait_option
@timeout_option
@format_option
@pass_cli
@click.pass_context
def vm_autobackup(ctx: click.Context, cli: CliContext, force_full: bool, wait: bool,
                  timeout: float) -> None:
    """Back up every VM with one of the autobackup tags, on a schedule (show, set) or now
    (run; also this command alone, as in PVC 1.0)."""
    if ctx.invoked_subcommand is None:
        run_backup_task(cli, "POST", PATH, {"force_full": force_full or None}, wait, timeout)


@vm_autobackup.command("run")
@force_full_option
@wait_option
@timeout_option
@format_option
@pass_cli
def autobackup_run(cli: CliContext, force_full: bool, wait: bool, timeout: float) -> None:
    """Run autobackup now (one run at a time)."""
    run_backup_task(cli, "POST", PATH, {"force_full": force_full or None}, wait, timeout)


@vm_autobackup.command("show")
@format_option
@pass_cli
def autobackup_show(cli: CliContext) -> None:
    """Show the configuration, the next and last run, and each VM's latest result."""
    cli.emit(cli.client.get(PATH), autobackup_details)


@vm_autobackup.command("set")
@click.option("--enable/--disable", "enabled", default=None,
              help="Run on the schedule (needs a folder and tags).")
@click.option("--path", "backup_root_path", default=None,
              help="The folder on the primary (inside backup.allowed_paths).")
@click.option("--suffix", "backup_root_suffix", default=None,
              help="'/name' appended to the folder, or '' for none.")
@click.option("--tag", "backup_tags", multiple=True,
              help="A VM with one of these tags is backed up (repeat; replaces the list).")
@click.option("--schedule", default=None,
              help="A 5-field cron expression in the primary's local time, e.g. '0 2 * * *'.")
@click.option("--full-interval", type=click.IntRange(min=1), default=None,
              help="A full backup after this many backups.")
@click.option("--full-retention", type=click.IntRange(min=1), default=None,
              help="Full backups (with their incrementals) kept per VM.")
@format_option
@pass_cli
def autobackup_set(cli: CliContext, enabled: bool | None, backup_root_path: str | None,
                   backup_root_suffix: str | None, backup_tags: tuple[str, ...],
                   schedule: str | None, full_interval: int | None,
                   full_retention: int | None) -> None:
    """Change the values given of the autobackup configuration."""
    values: dict[str, Any] = {"enabled": enabled, "backup_root_path": backup_root_path,
                              "backup_root_suffix": backup_root_suffix,
                              "backup_tags": list(backup_tags) or None, "schedule": schedule,
                              "full_interval": full_interval, "full_retention": full_retention}
    cli.message(cli.client.put(PATH, values))  # None: not given
