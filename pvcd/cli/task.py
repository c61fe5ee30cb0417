"""`pvc task`: long jobs the cluster carries out (docs/tasks.md): list them, show one, and
follow one to its end with a progress bar.

`wait` asks `GET /tasks/<id>` every `POLL` seconds (the client speaks HTTP only), shows the
task's progress on stderr (a bar with rate and ETA on a terminal, plain lines otherwise) and
ends with the task: its message on success (exit 0), its message on failure (exit 1), or a
timeout (exit 5). A primary handover in between is only a short gap: the API is asked again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from pvcd.cli.client import api_path
from pvcd.cli.context import CliContext, F, format_option, pass_cli, timed_wait_options
from pvcd.cli.errors import ApiFailure, ApiUnreachable, WaitTimedOut
from pvcd.cli.output import Column, field, render_fields, show, table_of
from pvcd.cli.progress import ProgressBar

STATES = ("pending", "running", "success", "failure")
POLL = 0.5  # seconds between two looks at the task

TASK_COLUMNS = [
    Column("ID", field("id")),
    Column("NAME", field("name")),
    Column("STATE", field("state")),
    Column("NODE", field("run_on")),
    Column("PROGRESS", lambda t: f"{t.get('current')}/{t.get('total')}"
           if t.get("total") else None, right=True),
    Column("STATUS", lambda t: t.get("status") or t.get("message")),
]


def task_fields(task: dict[str, Any]) -> str:
    progress = task.get("progress") or {}
    pairs: list[tuple[str, Any]] = [
        ("ID", task.get("id")), ("Name", task.get("name")), ("State", task.get("state")),
        ("Runs on", task.get("run_on")), ("Executor", task.get("executor")),
        ("Progress", f"{progress.get('current')}/{progress.get('total')} "
                     f"{progress.get('message') or ''}".strip()),
        ("Message", task.get("message")), ("Error", task.get("error")),
        ("Objects", task.get("objects")),
        ("Artifacts", [f"{a.get('kind')} {a.get('ref')}" for a in task.get("artifacts") or []]),
        ("Arguments", task.get("args")), ("Result", task.get("result")),
        ("Created", task.get("created")), ("Started", task.get("started")),
        ("Finished", task.get("finished")),
    ]
    log = task.get("log") or []
    text = render_fields(pairs)
    return text + ("\nLog:\n" + "\n".join(f"  {line}" for line in log) if log else "")


@click.group("task")
def task() -> None:
    """Long jobs the cluster carries out (uploads, provisioning, storage requests)."""


@task.command("list")
@click.option("--limit", "-l", metavar="REGEX", help="Only tasks whose name matches.")
@click.option("--state", "-s", type=click.Choice(STATES), help="Only tasks in this state.")
@click.option("--node", "-n", metavar="NODE", help="Only tasks that run on this node.")
@format_option
@pass_cli
def task_list(cli: CliContext, limit: str | None, state: str | None, node: str | None) -> None:
    """List tasks, newest first."""
    values = {k: v for k, v in {"limit": limit, "state": state, "node": node}.items() if v}
    cli.emit(cli.client.get(api_path("tasks"), values), table_of(TASK_COLUMNS, "No tasks."))


@task.command("info")
@click.argument("task_id", metavar="ID")
@format_option
@pass_cli
def task_info(cli: CliContext, task_id: str) -> None:
    """Show one task: its progress, artifacts, log and outcome."""
    cli.emit(cli.client.get(api_path("tasks", task_id)), task_fields)


@task.command("wait")
@click.argument("task_id", metavar="ID")
@click.option("--timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              metavar="SECONDS", help="How long to follow the task.")
@format_option
@pass_cli
def task_wait(cli: CliContext, task_id: str, timeout: float) -> None:
    """Follow a task until it ends, showing its progress."""
    follow_task(cli, task_id, timeout)


def follow_task_options(timeout: float) -> Callable[[F], F]:
    """`--wait` (follow the task the request starts, as `task wait` does) and its `--timeout`,
    for a command whose request starts a task."""
    return timed_wait_options(timeout, "Follow the task to its end with a progress display.",
                              "How long --wait follows the task.")


def interactive(cli: CliContext, stream: Any) -> bool:
    """Whether progress goes to a terminal (one line rewritten) or a log (plain lines)."""
    return bool(stream.isatty()) and cli.env.get("TERM", "") not in ("", "dumb")


def follow_task(cli: CliContext, task_id: str, timeout: float,
                progress: ProgressBar | None = None) -> dict[str, Any]:
    """Follow task `task_id` to its end with a progress display (the module docstring); the
    finished task, or ApiFailure (it failed) or WaitTimedOut. `progress`: a bar already on
    the screen (an upload's, continued by its conversion)."""
    stream = sys.stderr
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while True:
        try:
            doc = dict(cli.client.get(api_path("tasks", task_id)))
        except ApiUnreachable:  # the API moving to a new primary: ask again
            if not doc:
                raise
        else:
            if doc.get("state") in ("success", "failure"):
                break
            if progress is None:  # uploads count bytes (spec §1.1): shown as sizes
                progress = ProgressBar(stream, interactive(cli, stream), unit="bytes" if str(
                    doc.get("name", "")).endswith(".upload") else "steps")
            progress.update(int(doc.get("current") or 0), int(doc.get("total") or 0),
                            str(doc.get("status") or doc.get("state")))
        if time.monotonic() >= deadline:
            if progress is not None:
                progress.finish(f"Task {task_id}: still {doc.get('state', 'unknown')}")
            raise WaitTimedOut(f"timed out after {timeout:g} s waiting for task {task_id}")
        time.sleep(POLL)
    if progress is not None:
        progress.finish(f"Task {task_id} ({doc.get('name')}): {doc.get('state')}")
    if cli.json:
        cli.emit(doc, show)
    if doc.get("state") == "failure":
        raise ApiFailure(str(doc.get("message") or "the task failed"), 510, doc)
    if not cli.json:
        cli.message(str(doc.get("message") or "done"))
    return doc
