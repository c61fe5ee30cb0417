"""What every command shares: the connection (resolved lazily), the output format, waiting,
confirmation, and the options that express them.

Commands receive a `CliContext` (`@pass_cli`) and stay a few lines each: call the client,
then `emit()` the result or `message()` the API's answer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from pvcd.cli.client import ApiClient
from pvcd.cli.connection import Connection, default_environment, resolve_connection
from pvcd.cli.output import to_json
from pvcd.cli.waiting import DEFAULT_TIMEOUT, Observation, Waiter

FORMATS = ("table", "json")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliContext:
    lab: str | None = None
    connection_name: str | None = None
    format: str = "table"
    env: Mapping[str, str] = field(default_factory=default_environment)
    _client: ApiClient | None = None

    @property
    def json(self) -> bool:
        return self.format == "json"

    def connection(self) -> Connection:
        return resolve_connection(self.lab, self.connection_name, self.env)

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            self._client = ApiClient(self.connection())
        return self._client

    # output
    def emit(self, data: Any, human: Callable[[Any], str]) -> None:
        """The API's data: as JSON, or through `human` as text."""
        text = to_json(data) if self.json else human(data)
        if text:
            click.echo(text)

    def message(self, text: str, result: Any = None) -> None:
        """A write's answer: the API's message (and, after --wait, the object it waited for)."""
        if self.json:
            doc: dict[str, Any] = {"message": text}
            if result is not None:
                doc["result"] = result
            click.echo(to_json(doc))
        else:
            click.echo(text)

    def follow(self, message: str, wait: bool, what: str, probe: Callable[[], Observation],
               timeout: float) -> None:
        """A state change's answer; with `wait`, then poll `probe` until done (progress on
        stderr). In JSON, one document at the end, with the object as last seen."""
        if not wait:
            self.message(message)
            return
        if not self.json:
            click.echo(message)
        stream = sys.stderr
        waiter = Waiter(stream, interactive=stream.isatty() and
                        self.env.get("TERM", "") not in ("", "dumb"))
        result = waiter.wait(what, probe, timeout)
        if self.json:
            self.message(message, result)


pass_cli = click.make_pass_decorator(CliContext, ensure=True)


def _set_format(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(CliContext).format = value


def format_option(command: F) -> F:
    """`--format` on a command too, so `pvc node list --format json` works as well as
    `pvc --format json node list`."""
    return click.option("--format", "-f", "output_format", type=click.Choice(FORMATS),
                        default=None, expose_value=False, callback=_set_format,
                        help="Output format (default: table).")(command)


def wait_options(command: F) -> F:
    command = click.option("--timeout", type=click.FloatRange(min=0), default=DEFAULT_TIMEOUT,
                           show_default=True, metavar="SECONDS",
                           help="How long --wait waits.")(command)
    return click.option("--wait", "-w", is_flag=True,
                        help="Follow until the change is carried out.")(command)


def yes_option(command: F) -> F:
    return click.option("--yes", "-y", is_flag=True,
                        help="Do not ask for confirmation.")(command)


def confirm(yes: bool, question: str) -> None:
    """Ask before a destructive change; a "no" (or no terminal to ask on) aborts, exit 1."""
    if not yes:
        click.confirm(question, abort=True, err=True)
