"""`pvc vm log` and `pvc node log`: the tail of a VM's serial console or of a node daemon's log
(`GET /vm/<vm>/console`, `GET /node/<node>/log`), and with `--follow` what comes after.

Following asks for the lines after the last one shown (`after=<last_line>`), so nothing is
shown twice and nothing is skipped; when lines left the buffer before they could be fetched
(the API says `truncated`) the command says so on stderr. A primary handover in between only
delays it: the command asks the new primary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from pvcd.cli.client import api_path
from pvcd.cli.completion import complete_nodes, complete_vms
from pvcd.cli.context import CliContext, pass_cli
from pvcd.cli.errors import ApiUnreachable
from pvcd.cli.output import to_json

FOLLOW_INTERVAL = 1.0  # seconds between two polls: the buffers are written once a second
FOLLOW_BATCH = 1000    # lines asked for at a time while following


def follow_log(cli: CliContext, path: str, lines: int, follow: bool,
               interval: float = FOLLOW_INTERVAL,
               sleep: Callable[[float], None] = time.sleep) -> None:
    """Show the last `lines` lines at `path`; with `follow`, then every new line until
    interrupted."""
    client = cli.client
    doc = client.get(path, {"lines": lines})
    if cli.json and not follow:
        click.echo(to_json(doc))
        return
    _show(cli, doc, shown_any=None)
    after = int(doc.get("last_line") or 0)
    unreachable = False
    try:
        while follow:
            sleep(interval)
            try:
                doc = client.get(path, {"lines": FOLLOW_BATCH, "after": after})
            except ApiUnreachable as exc:  # a handover: the new primary answers soon
                if not unreachable:
                    click.echo(f"pvc: {exc}; trying again", err=True)
                unreachable = True
                continue
            unreachable = False
            last = int(doc.get("last_line") or 0)
            if doc.get("truncated"):
                click.echo(f"pvc: lines after line {after} left the buffer before they "
                           "could be read; continuing with the oldest kept", err=True)
            if last != after or doc.get("truncated"):
                _show(cli, doc, shown_any=last != after)
            after = last
    except KeyboardInterrupt:
        sys.stdout.flush()


def _show(cli: CliContext, doc: dict[str, Any], shown_any: bool | None) -> None:
    """Print the answer's lines (an answer of one empty line is one empty line: `shown_any`
    says whether the answer had lines; None: judge by its text)."""
    if cli.json:
        click.echo(to_json(doc))
        return
    data = str(doc.get("data") or "")
    if data or shown_any:
        click.echo(data)


LINES = click.option("--lines", "-l", type=click.IntRange(min=1), default=10, show_default=True,
                     help="How many of the last lines to show first.")
FOLLOW = click.option("--follow", "-f", is_flag=True,
                      help="Keep showing new lines as they come (until interrupted).")


@click.command("log")
@click.argument("name", shell_complete=complete_vms)
@LINES
@FOLLOW
@pass_cli
def vm_log(cli: CliContext, name: str, lines: int, follow: bool) -> None:
    """Show a VM's serial console log, as its node keeps it."""
    follow_log(cli, api_path("vm", name, "console"), lines, follow)


@click.command("log")
@click.argument("name", shell_complete=complete_nodes)
@LINES
@FOLLOW
@pass_cli
def node_log(cli: CliContext, name: str, lines: int, follow: bool) -> None:
    """Show a node daemon's recent log (INFO and above), kept in the cluster."""
    follow_log(cli, api_path("node", name, "log"), lines, follow)
