"""`pvc vm device attach|detach NAME XML_FILE`: one libvirt device of a VM, through
`POST`/`DELETE /vm/<vm>/device` (extensions.md §11.2). A running VM's change is a task on its
node (`vm.device_attach`, `vm.device_detach`), which `--wait` follows with a progress display;
a stopped VM's change is only its XML, answered at once."""

from __future__ import annotations

from typing import TextIO

import click

from pvcd.cli.client import api_path
from pvcd.cli.completion import complete_vms
from pvcd.cli.context import CliContext, format_option, pass_cli
from pvcd.cli.task import follow_task, follow_task_options


@click.group("device")
def vm_device() -> None:
    """Attach and detach a VM's devices (disks, interfaces, ...), kept in its XML."""


def _device_command(verb: str, method: str, summary: str) -> None:
    @vm_device.command(verb, help=summary)
    @click.argument("name", shell_complete=complete_vms)
    @click.argument("xml_file", metavar="XML_FILE", type=click.File("r"))
    @follow_task_options(300.0)
    @format_option
    @pass_cli
    def command(cli: CliContext, name: str, xml_file: TextIO, wait: bool,
                timeout: float) -> None:
        doc = cli.client.request(method, api_path("vm", name, "device"),
                                 {"xml": xml_file.read()}).json()
        if wait and doc.get("task_id"):
            follow_task(cli, str(doc["task_id"]), timeout)
            return
        cli.message(str(doc.get("message")), doc if cli.json and "task_id" in doc else None)


_device_command("attach", "POST",
                "Attach the device in XML_FILE (one libvirt device element) to VM NAME: "
                "hot-plugged if it runs, and kept in its XML.")
_device_command("detach", "DELETE",
                "Detach the device XML_FILE names from VM NAME (a disk by target dev, an "
                "interface by MAC, anything else by its whole XML): hot-unplugged if it runs, "
                "and removed from its XML.")
