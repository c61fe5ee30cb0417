"""`pvc provisioner`: templates, profiles, OVAs and VM creation (spec extensions.md §3).

Each kind of object has its own module and subgroup; this group gathers them.
"""

from __future__ import annotations

import click

from pvcd.cli.ova import ova


@click.group("provisioner")
def provisioner() -> None:
    """Create VMs from profiles: templates, profiles, OVAs."""


provisioner.add_command(ova)
