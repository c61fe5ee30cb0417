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

from pvcd.cli.client import ApiClient, Value
from pvcd.cli.connection import Connection, default_environment, resolve_connection
from pvcd.cli.output import to_json
from pvcd.cli.waiting import DEFAULT_TIMEOUT, HTTP_SLACK, Waiter

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

    def change(self, path: str, values: Mapping[str, Value], wait: bool, timeout: float,
               what: str, state: tuple[str, Mapping[str, Value]],
               result: Callable[[], Any]) -> None:
        """POST a state change. With `wait`, the API answers once it has settled (progress on
        stderr meanwhile); `state` (a path and values) is where to ask again with `wait` after
        a primary handover cut the request. In JSON, one document at the end, with the object
        (`result()`) as it is then."""
        if not wait:
            self.message(self.client.post(path, values))
            return
        client = self.client

        def send(seconds: float) -> dict[str, Any]:
            return dict(client.post_doc(path, {**values, "wait": True, "wait_timeout": seconds},
                                        timeout=seconds + HTTP_SLACK))

        def ask_again(seconds: float) -> dict[str, Any]:
            doc = client.get(state[0], {**state[1], "wait": True, "wait_timeout": seconds},
                             timeout=seconds + HTTP_SLACK)
            return {"message": f"Done: {what}", **doc}

        stream = sys.stderr
        waiter = Waiter(stream, interactive=stream.isatty() and
                        self.env.get("TERM", "") not in ("", "dumb"))
        answer = waiter.wait(what, send, ask_again, timeout)
        self.message(str(answer.get("message")), result() if self.json else None)


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


def timed_wait_options(timeout: float, wait_help: str, timeout_help: str
                       ) -> Callable[[F], F]:
    """`--wait` and its `--timeout` (`timeout` seconds by default) on a command."""
    def add(command: F) -> F:
        command = click.option("--timeout", type=click.FloatRange(min=0), default=timeout,
                               show_default=True, metavar="SECONDS",
                               help=timeout_help)(command)
        return click.option("--wait", "-w", is_flag=True, help=wait_help)(command)
    return add


# a change the API can wait for (`wait`)
wait_options = timed_wait_options(DEFAULT_TIMEOUT, "Follow until the change is carried out.",
                                  "How long --wait waits.")


def yes_option(command: F) -> F:
    return click.option("--yes", "-y", is_flag=True,
                        help="Do not ask for confirmation.")(command)


def confirm(yes: bool, question: str) -> None:
    """Ask before a destructive change; a "no" (or no terminal to ask on) aborts, exit 1."""
    if not yes:
        click.confirm(question, abort=True, err=True)
