"""`POST /provisioner/create`: a VM from a profile, as the task `provisioner.create`
(extensions.md §3.9). `POST /vm/<vm>` with `vm_template` (`pvcd.api.vms`) starts the same.

Everything §3.9 refuses "before the task" is judged here from the cache by the rule the task
applies again (`pvcd.domain.provisioning.plan_create`), so a 510 creates nothing: no task, no
record, no volume. The task then reserves what it works on through its `objects`: the VM's
UUID, its name (`vm-name:<name>`: a second create of the same name is refused while the first
runs) and each volume it will make. Pool free space is only known to Ceph: the task checks it
before its first step (with `wait` that failure is a 510 too, and nothing was created).
"""

from __future__ import annotations

import secrets
import uuid as uuidlib
from typing import Any

from pvcd.api.base import BaseHandler
from pvcd.api.routing import route
from pvcd.api.tasks import TASK_VALUES, start_task
from pvcd.api.values import Value, accepts, boolean, text, texts
from pvcd.domain.errors import InvalidValue
from pvcd.domain.provisioning import CreateRequest, plan_create, random_mac
from pvcd.state.provisioning import cluster_facts, provisioner_objects

TASK_NAME = "provisioner.create"

DEFINE_VM = boolean("define_vm", "Define the VM (default true); false: only the disks are made, "
                    "and the task's result holds the XML to define later.", True)
START_VM = boolean("start_vm", "Start the VM once its disks are made (default: true, or false "
                   "when define_vm is false).", None)
ARGS = texts("arg", "An argument of the profile's install method, name=value; overrides "
             "the profile's argument of that name.")
DESCRIPTION = text("description", "The domain's <description> (default: \"pvcd provisioner, "
                   "profile '<profile>', <time>\").")
CREATE_VALUES: tuple[Value[Any], ...] = (DEFINE_VM, START_VM, ARGS, DESCRIPTION, *TASK_VALUES)
NAME = text("name", "The new VM's name: 1-63 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit (it prefixes its volume names and is the guest's host name).",
            required=True)
PROFILE = text("profile", "The profile to create it from.", required=True)


async def start_create(handler: BaseHandler, name: str, profile: str) -> None:
    """Judge the creation of VM `name` from `profile` (the handler declares
    `CREATE_VALUES`) and start its task; see the module docstring."""
    values = handler.values
    define_vm = bool(values[DEFINE_VM])
    start_vm = values[START_VM]
    arguments: list[str] = values[ARGS]
    request = CreateRequest(name=name, profile=profile, define_vm=define_vm,
                            start_vm=define_vm if start_vm is None else bool(start_vm),
                            arguments=tuple(arguments), description=values[DESCRIPTION])
    view = handler.ctx.view
    plan = plan_create(request, provisioner_objects(view), cluster_facts(view),
                       lambda: random_mac(secrets.token_bytes))
    if plan.disks and handler.ctx.storage_request_timeout is None:
        raise InvalidValue(f"profile '{profile}' makes disks, but Ceph storage is not "
                           f"configured on the primary node {handler.ctx.node_name} "
                           "(drivers.ceph.enabled)")
    uuid = str(uuidlib.uuid4())
    objects = [f"vm:{uuid}", f"vm-name:{name}", *(f"volume:{d.spec}" for d in plan.disks)]
    await start_task(handler, TASK_NAME, {**request.to_args(), "uuid": uuid}, objects)


class ProvisionerCreateHandler(BaseHandler):
    @accepts(NAME, PROFILE, *CREATE_VALUES)
    async def post(self) -> None:
        await start_create(self, self.values[NAME], self.values[PROFILE])


ROUTES = [
    route("/provisioner/create", ProvisionerCreateHandler),
]
