"""`POST` and `DELETE /vm/<vm>/device` (extensions.md §11.2): attach or detach one libvirt device,
kept in the VM's stored XML so it survives a restart.

Everything is judged first (`pvcd.state.vm_devices`: the device XML, the VM's state, volumes,
networks, MACs); a refusal is a 510 that changes nothing. A VM that does not run only gets its
XML changed (one compare-and-set write, 200). A running VM gets the task `vm.device_attach` or
`vm.device_detach` on its node (202, or its end with `wait`), which writes the XML and
hot-plugs the device (`pvcd.controllers.vm_devices`); a VM whose device task has not finished
is busy: a second change is refused, naming it.
"""

from __future__ import annotations

from pvcd.api.routing import route
from pvcd.api.tasks import TASK_VALUES, start_task, task_location
from pvcd.api.values import accepts, text
from pvcd.api.vms import VmBaseHandler
from pvcd.domain.errors import Conflict
from pvcd.domain.tasks import busy_task
from pvcd.state.tasks import read_tasks
from pvcd.state.vm_devices import (
    ATTACH,
    DETACH,
    TASK_NAMES,
    new_device_mac,
    plan_attach,
    plan_detach,
    running_node,
)

DEVICE_XML = text("xml", "One libvirt device element (<disk>, <interface>, <controller>, "
                  "<hostdev>, <serial>, <channel>, <input>, <rng>, ...). A disk is matched by "
                  "its target dev, an interface by its MAC, anything else by its whole XML.",
                  required=True)


class VmDeviceHandler(VmBaseHandler):
    @accepts(DEVICE_XML, *TASK_VALUES)
    async def post(self, vm: str) -> None:
        await self._change(vm, ATTACH)

    @accepts(DEVICE_XML, *TASK_VALUES)
    async def delete(self, vm: str) -> None:
        await self._change(vm, DETACH)

    async def _change(self, vm: str, action: str) -> None:
        view = self.ctx.view
        spec, version = self.vm_spec(vm)
        self.refuse_if_provisioning(spec)  # (its message names the task)
        text_xml = self.values[DEVICE_XML]
        change = plan_attach(view, spec, text_xml, new_device_mac) if action == ATTACH \
            else plan_detach(view, spec, text_xml)
        objects = [f"vm:{spec.uuid}"]
        node = running_node(view, spec)
        if node is not None:
            await start_task(self, TASK_NAMES[action],
                             {"vm": spec.name, "uuid": spec.uuid, "xml": change.device.xml},
                             objects, run_on=node)
            return
        busy = busy_task(objects, read_tasks(view))
        if busy is not None:  # (a device task still running on it, a snapshot, ...)
            raise Conflict(f"VM '{spec.name}' is busy with task {busy.id} ({busy.name}, "
                           f"{busy.state}); try again when it has finished "
                           f"(GET {task_location(busy.id)}); nothing was changed")
        await self.commit(change.ops(view, version))
        done = "Attached" if action == ATTACH else "Detached"
        way = "to" if action == ATTACH else "from"
        self.message(f"{done} {change.device.label} {way} the XML of VM '{spec.name}', which "
                     "is not running: it takes effect when the VM starts")


ROUTES = [route("/vm/<vm>/device", VmDeviceHandler)]
