"""The `pvc` command: a client of the pvcd HTTP API.

    pvc [--lab DIR | --connection NAME] [--format table|json] GROUP COMMAND ...

Groups: node, vm, network (lease, acl), storage (osd, pool, volume, snapshot), task, cluster,
connection. `python -m pvcd.cli.main` runs it too. Exit codes: see `pvcd.cli.errors`.
"""

from __future__ import annotations

from typing import Any

import click

from pvcd.cli.cluster import cluster
from pvcd.cli.connection import config_path, load_connections
from pvcd.cli.context import FORMATS, CliContext, format_option, pass_cli
from pvcd.cli.errors import CliError
from pvcd.cli.network import network
from pvcd.cli.node import node
from pvcd.cli.output import Column, field, render_fields, render_table
from pvcd.cli.provisioner import provisioner
from pvcd.cli.storage import storage
from pvcd.cli.task import task
from pvcd.cli.vm import vm


class PvcGroup(click.Group):
    """The root group: turns the client's failures into a message on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=PvcGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.option("--lab", metavar="DIR", type=click.Path(file_okay=False),
              help="Talk to the lab in DIR (reads DIR/lab.json).")
@click.option("--connection", "-c", metavar="NAME",
              help="Use the named connection of the config file (default: $PVC_CONNECTION, "
                   "else $PVC_URL, else the file's default).")
@click.option("--format", "-f", "output_format", type=click.Choice(FORMATS), default="table",
              show_default=True, help="Output format.")
@click.pass_context
def cli(ctx: click.Context, lab: str | None, connection: str | None,
        output_format: str) -> None:
    """Manage a pvcd cluster through its HTTP API.

    The API is chosen by --lab, --connection, $PVC_URL/$PVC_TOKEN or the config file
    ($PVC_CONFIG, default ~/.config/pvc/connections.yaml); see `pvc connection show`.
    """
    context = ctx.ensure_object(CliContext)
    context.lab, context.connection_name, context.format = lab, connection, output_format


@cli.group("connection")
def connection_group() -> None:
    """The configured connections, and which one is in use."""


@connection_group.command("list")
@format_option
@pass_cli
def connection_list(cli: CliContext) -> None:
    """List the connections of the config file."""
    config = load_connections(config_path(cli.env))
    default = config.default_name()
    rows = [{"name": name, "url": c.url, "default": name == default,
             "token": c.token is not None, "verify": c.verify, "ca_file": c.ca_file}
            for name, c in sorted(config.connections.items())]
    columns = [Column("NAME", field("name")), Column("URL", field("url")),
               Column("DEFAULT", field("default")), Column("TOKEN", field("token")),
               Column("VERIFY", field("verify")), Column("CA FILE", field("ca_file"))]
    cli.emit(rows, lambda r: render_table(r, columns, empty=f"No connections in {config.path}."))


@connection_group.command("show")
@format_option
@pass_cli
def connection_show(cli: CliContext) -> None:
    """Show the connection this command line would use (the token is not shown)."""
    c = cli.connection()
    doc = {"url": c.url, "source": c.source, "token": "set" if c.token else "none",
           "verify": c.verify, "ca_file": c.ca_file}
    labels = {"url": "URL", "source": "From", "token": "Token", "verify": "Verify TLS",
              "ca_file": "CA file"}
    cli.emit(doc, lambda d: render_fields([(labels[k], v) for k, v in d.items()]))


for group in (node, vm, network, storage, task, cluster, provisioner):
    cli.add_command(group)


def main() -> None:
    cli(prog_name="pvc")


if __name__ == "__main__":
    main()
