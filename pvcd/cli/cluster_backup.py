"""`pvc cluster backup` and `pvc cluster restore` (PVC 1.0's names): the cluster's desired
state to a file, and a file back into the cluster (extensions.md §9, docs/backups.md).

The backup holds user-data and addresses, so a file written here is readable by its owner only.
A restore asks for confirmation (or `--yes`), sends the file as PVC's form value
`cluster_data`, and follows the `cluster.restore` task to its end with a progress display.
"""

from __future__ import annotations

import json
import os
import sys

import click

from pvcd.cli.client import api_path
from pvcd.cli.context import CliContext, confirm, pass_cli, yes_option
from pvcd.cli.errors import CliError
from pvcd.cli.task import follow_task

BACKUP_TIMEOUT = 300.0  # seconds a GET /backup of a large cluster may take


@click.command("backup")
@click.option("--file", "-f", "path", type=click.Path(dir_okay=False, writable=True),
              help="Write the backup to this file (mode 0600) instead of standard output.")
@pass_cli
def cluster_backup(cli: CliContext, path: str | None) -> None:
    """Save the cluster's desired state (VMs, networks with leases and ACLs, provisioner
    objects) as a JSON document. It holds user-data and addresses: keep it safe."""
    document = cli.client.get(api_path("backup"), timeout=BACKUP_TIMEOUT)
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if path is None:
        sys.stdout.write(text)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file too
        with os.fdopen(fd, "w") as out:
            out.write(text)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
    znodes = document.get("znodes", {}) if isinstance(document, dict) else {}
    cli.message(f"Saved the cluster's state ({len(znodes)} documents) to {path}")


@click.command("restore")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
@yes_option
@click.option("--timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              metavar="SECONDS", help="How long to follow the restore task.")
@pass_cli
def cluster_restore(cli: CliContext, path: str, yes: bool, timeout: float) -> None:
    """Replace the cluster's desired state with the backup in FILE. The cluster must be in
    maintenance mode (or empty) with no VM running; the state it replaces is saved first in
    the primary's backup.allowed_paths."""
    try:
        with open(path, encoding="utf-8") as source:
            text = source.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    confirm(yes, "Replace the cluster's VMs, networks and provisioner objects with the "
                 f"backup in {path}?")
    accepted = cli.client.post_doc(api_path("restore"), {"cluster_data": text,
                                                         "yes_i_really_mean_it": True})
    follow_task(cli, str(accepted["task_id"]), timeout)
