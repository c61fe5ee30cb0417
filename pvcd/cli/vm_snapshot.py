"""`pvc vm snapshot create|list|rollback|remove`: VM snapshots (extensions.md §5.1, §5.2)
through `/vm/<vm>/snapshot`. Taking, removing and rolling back are tasks: the command answers
with the task's id, or follows it to its end with `--wait`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from pvcd.cli.client import Value, api_path
from pvcd.cli.completion import complete_vms
from pvcd.cli.context import CliContext, confirm, format_option, pass_cli, yes_option
from pvcd.cli.output import Column, field, render_table
from pvcd.cli.task import follow_task

CONSISTENCIES = ("auto", "freeze", "pause", "none")

wait_option = click.option("--wait", "-w", is_flag=True,
                           help="Follow the task to its end with a progress display.")
timeout_option = click.option("--timeout", type=click.FloatRange(min=0), default=3600.0,
                              show_default=True, metavar="SECONDS",
                              help="How long --wait follows the task.")


def on_a_snapshot(command: Callable[..., None]) -> Callable[..., None]:
    """The arguments and options of rollback and remove: VM, SNAPSHOT_NAME, --yes, --wait."""
    for decorate in (pass_cli, format_option, timeout_option, wait_option, yes_option,
                     click.argument("snapshot_name"),
                     click.argument("name", shell_complete=complete_vms)):
        command = decorate(command)
    return command


def snapshots_table(snapshots: list[dict[str, Any]]) -> str:
    return render_table(snapshots, [
        Column("NAME", field("name")),
        Column("TAKEN", lambda s: time.strftime("%Y-%m-%d %H:%M:%S",
                                                time.localtime(float(s.get("timestamp") or 0)))),
        Column("AGE", lambda s: _age(int(s.get("age") or 0))),
        Column("CONSISTENCY", field("consistency")),
        Column("DISKS", lambda s: ", ".join(str(r).split("@", 1)[0]
                                            for r in s.get("rbd_snapshots") or [])),
        Column("XML", lambda s: "changed" if s.get("xml_diff_lines") else "same"),
    ], empty="The VM has no snapshots.")


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def run_snapshot_task(cli: CliContext, method: str, name: str, path_tail: tuple[str, ...],
                      values: dict[str, Value], wait: bool, timeout: float) -> None:
    """Start the task; print its acceptance, or follow it with `--wait`."""
    accepted = cli.client.request(method, api_path("vm", name, "snapshot", *path_tail),
                                  values).json()
    if not wait:
        cli.message(str(accepted.get("message")), accepted if cli.json else None)
        return
    follow_task(cli, str(accepted["task_id"]), timeout)


@click.group("snapshot")
def vm_snapshot() -> None:
    """VM snapshots: every RBD disk of a VM at one instant, with its XML, metadata and tags."""


@vm_snapshot.command("create")
@click.argument("name", shell_complete=complete_vms)
@click.argument("snapshot_name", required=False)
@click.option("--consistency", type=click.Choice(CONSISTENCIES), default=None,
              help="auto (default: freeze through the guest agent if it answers within 2 s, "
                   "else pause; nothing if stopped), freeze, pause, or none (disk after disk "
                   "while it runs).")
@wait_option
@timeout_option
@format_option
@pass_cli
def snapshot_create(cli: CliContext, name: str, snapshot_name: str | None,
                    consistency: str | None, wait: bool, timeout: float) -> None:
    """Take a snapshot of VM NAME (default name: YYYYMMDDHHMMSS, the primary's local time)."""
    run_snapshot_task(cli, "POST", name, (), {"snapshot_name": snapshot_name,
                                              "consistency": consistency}, wait, timeout)


@vm_snapshot.command("list")
@click.argument("name", shell_complete=complete_vms)
@format_option
@pass_cli
def snapshot_list(cli: CliContext, name: str) -> None:
    """List the snapshots of VM NAME, oldest first."""
    cli.emit(cli.client.get(api_path("vm", name, "snapshot")), snapshots_table)


@vm_snapshot.command("rollback")
@on_a_snapshot
def snapshot_rollback(cli: CliContext, name: str, snapshot_name: str, yes: bool, wait: bool,
                      timeout: float) -> None:
    """Roll the stopped VM NAME back to SNAPSHOT_NAME: every disk, then its XML."""
    confirm(yes, f"Roll VM '{name}' back to snapshot '{snapshot_name}'? What its disks hold "
                 "now is lost.")
    run_snapshot_task(cli, "POST", name, ("rollback",), {"snapshot_name": snapshot_name},
                      wait, timeout)


@vm_snapshot.command("remove")
@on_a_snapshot
def snapshot_remove(cli: CliContext, name: str, snapshot_name: str, yes: bool, wait: bool,
                    timeout: float) -> None:
    """Remove snapshot SNAPSHOT_NAME of VM NAME (its RBD snapshots and its record)."""
    confirm(yes, f"Remove snapshot '{snapshot_name}' of VM '{name}'?")
    run_snapshot_task(cli, "DELETE", name, (), {"snapshot_name": snapshot_name}, wait,
                      timeout)
