"""`pvc provisioner ova`: imported OVAs (spec extensions.md §3.7): list, show, upload, remove.

`upload` streams the file as the request body (`pvcd.cli.upload`: nothing is sent if the API
refuses the values) with a progress bar on stderr (rate and ETA on a terminal, plain lines
otherwise), and answers with the task's end: the OVA, its system template and profile, or why
it failed (exit 1). A task still running when the body is in (more than `api.task_wait`) is
named, to follow with `pvc task wait`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pvcd.cli.client import STORAGE_TIMEOUT, api_path
from pvcd.cli.context import CliContext, confirm, format_option, pass_cli, yes_option
from pvcd.cli.errors import ApiFailure
from pvcd.cli.output import Column, field, render_fields, table_of
from pvcd.cli.progress import ProgressBar
from pvcd.cli.upload import upload_file

OVA_PATH = ("provisioner", "ova")
# the body's time is the file's; the answer comes within api.task_wait after it
UPLOAD_TIMEOUT = 3600.0

OVA_COLUMNS = [
    Column("NAME", field("name")),
    Column("POOL", field("pool")),
    Column("VOLUMES", lambda o: ", ".join(v.get("volume_name", "") for v in o.get("volumes")
                                          or [])),
    Column("SYSTEM TEMPLATE", field("system_template")),
    Column("PROFILE", field("profile")),
]


def ova_fields(docs: Any) -> str:
    doc = docs[0] if isinstance(docs, list) and docs else docs
    volumes = [f"{v.get('disk_id')}: {v.get('pool')}/{v.get('volume_name')} "
               f"({v.get('volume_format')}, {v.get('disk_size_gb')} GiB)"
               for v in doc.get("volumes") or []]
    return render_fields([("Name", doc.get("name")), ("Pool", doc.get("pool")),
                          ("System template", doc.get("system_template")),
                          ("Profile", doc.get("profile")), ("Volumes", volumes)])


@click.group("ova")
def ova() -> None:
    """OVA appliances imported as volumes, a system template and a profile."""


@ova.command("list")
@click.option("--limit", "-l", metavar="REGEX", help="Only OVAs whose name matches.")
@format_option
@pass_cli
def ova_list(cli: CliContext, limit: str | None) -> None:
    """List imported OVAs."""
    cli.emit(cli.client.get(api_path(*OVA_PATH), {"limit": limit}),
             table_of(OVA_COLUMNS, "No OVAs."))


@ova.command("info")
@click.argument("name")
@format_option
@pass_cli
def ova_info(cli: CliContext, name: str) -> None:
    """Show one OVA: its volumes, system template and profile."""
    cli.emit(cli.client.get(api_path(*OVA_PATH, name)), ova_fields)


@ova.command("upload")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--pool", "-p", required=True, help="The pool for the OVA's disk images.")
@format_option
@pass_cli
def ova_upload(cli: CliContext, name: str, file: Path, pool: str) -> None:
    """Upload FILE (an .ova) as OVA NAME: its disks become volumes in POOL."""
    stream = sys.stderr
    interactive = stream.isatty() and cli.env.get("TERM", "") not in ("", "dumb")
    bar = ProgressBar(stream, interactive, unit="bytes")

    def progress(sent: int, total: int) -> None:
        bar.update(sent, total, "sending" if sent < total else "sent; importing")

    response = upload_file(cli.client, api_path(*OVA_PATH, name),
                           {"pool": pool, "ova_size": file.stat().st_size, "wait": True},
                           file, progress, UPLOAD_TIMEOUT)
    doc = response.json()
    bar.finish(f"Uploaded {file.name}")
    if response.status == 202:
        cli.message(f"{doc.get('message')}; follow it with: pvc task wait {doc.get('task_id')}")
        return
    if isinstance(doc, dict) and "result" not in doc:
        raise ApiFailure(str(doc.get("message")), response.status, doc)
    cli.message(str(doc.get("message")), doc.get("result"))


@ova.command("remove")
@click.argument("name")
@yes_option
@format_option
@pass_cli
def ova_remove(cli: CliContext, name: str, yes: bool) -> None:
    """Remove an OVA: its volumes, its system template and its profile."""
    confirm(yes, f"Remove OVA '{name}', its volumes, system template and profile?")
    cli.message(cli.client.delete(api_path(*OVA_PATH, name), timeout=STORAGE_TIMEOUT))
