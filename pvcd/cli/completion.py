"""Shell completion of object names (nodes, VMs, networks), asked of the API.

click completes commands and options by itself (`_PVC_COMPLETE=bash_source pvc`, see
docs/cli.md); these callbacks add the names of existing objects. Completion must never
print an error into the operator's shell, so any failure completes nothing.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

from pvcd.cli.client import ApiClient
from pvcd.cli.connection import default_environment, resolve_connection
from pvcd.cli.errors import CliError

COMPLETION_TIMEOUT = 2.0


def _names(ctx: click.Context, path: str, keys: tuple[str, ...],
           incomplete: str) -> list[CompletionItem]:
    root = ctx.find_root().params
    try:
        connection = resolve_connection(root.get("lab"), root.get("connection"),
                                        default_environment())
        items: Any = ApiClient(connection, timeout=COMPLETION_TIMEOUT).get(path)
    except CliError:
        return []
    names = {str(item.get(key)) for item in items if isinstance(item, dict) for key in keys}
    return [CompletionItem(name) for name in sorted(names) if name.startswith(incomplete)]


def complete_nodes(ctx: click.Context, param: click.Parameter,
                   incomplete: str) -> list[CompletionItem]:
    return _names(ctx, "/node", ("name",), incomplete)


def complete_vms(ctx: click.Context, param: click.Parameter,
                 incomplete: str) -> list[CompletionItem]:
    return _names(ctx, "/vm", ("name",), incomplete)


def complete_networks(ctx: click.Context, param: click.Parameter,
                      incomplete: str) -> list[CompletionItem]:
    return _names(ctx, "/network", ("description", "vni"), incomplete)
