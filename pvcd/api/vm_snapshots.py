"""`/vm/<vm>/snapshot` and `/vm/<vm>/snapshot/rollback` (extensions.md §5.1, §5.2).

A VM snapshot covers every writable RBD disk of the VM under one RBD snapshot name, plus its XML,
metadata and tags. Everything the cache knows is checked here first (a 510 changes nothing):
the name, the VM's state, its disks, whether the name is taken on the VM or on one of its
volumes, and (through `start_task`) whether the VM or a volume is busy with another task or
storage request. The work is a task run by the primary (`pvcd.controllers.vm_snapshots`),
whose objects are the VM and its volumes, so nothing else changes them meanwhile.
"""

from __future__ import annotations

from pvcd.api.routing import route
from pvcd.api.storage import storage_timeout
from pvcd.api.tasks import TASK_VALUES, start_task
from pvcd.api.values import accepts, choice, value
from pvcd.api.vm_rename import running_on
from pvcd.api.vms import VmBaseHandler
from pvcd.domain.errors import Conflict, NotFound
from pvcd.domain.records import VmSpec
from pvcd.domain.vm_snapshots import CONSISTENCY_REQUESTS, VmSnapshot, default_snapshot_name
from pvcd.drivers.ceph.values import check_snapshot_name
from pvcd.state.view import ClusterView
from pvcd.state.vm_snapshots import (
    check_rollback,
    read_snapshot,
    snapshot_list,
    snapshot_volumes,
)

SNAPSHOT_NAME = value("snapshot_name", "The snapshot's name (the RBD snapshot name rule: "
                      "1-96 letters, digits, '_', '.', '+' or '-'); default YYYYMMDDHHMMSS in "
                      "the primary's local time.", check_snapshot_name)
SNAPSHOT_NAME_REQUIRED = value("snapshot_name", "The VM snapshot's name.", check_snapshot_name,
                               required=True)
CONSISTENCY = choice("consistency", CONSISTENCY_REQUESTS,
                     "How the disks are made to match one instant: auto (the default: freeze "
                     "the guest's filesystems if its agent answers within 2 s, else pause it; "
                     "nothing if it is stopped), freeze (the guest agent must answer), pause, "
                     "none (disk after disk while it runs, as PVC 1.0).")


class VmSnapshotHandler(VmBaseHandler):
    def get(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        self.reply(snapshot_list(self.ctx.view, spec.uuid, spec.xml, self.ctx.clock()))

    @accepts(SNAPSHOT_NAME, CONSISTENCY, *TASK_VALUES)
    async def post(self, vm: str) -> None:
        view = self.ctx.view
        spec, _ = self.vm_spec(vm)
        name = self.values[SNAPSHOT_NAME] or default_snapshot_name(self.ctx.clock())
        consistency = self.values[CONSISTENCY] or "auto"
        self._refuse_busy_vm(spec)
        volumes = snapshot_volumes(spec)
        storage_timeout(self.ctx)  # Ceph is managed by this cluster
        if view.cache.exists(view.paths.vm_snapshot(spec.uuid, name)):
            raise Conflict(f"VM '{spec.name}' already has a snapshot '{name}'; choose another "
                           "snapshot_name")
        for pool, volume in volumes:
            if not view.cache.exists(view.paths.storage_volume(pool, volume)):
                raise NotFound(f"RBD volume {pool}/{volume} of VM '{spec.name}' not found")
            if view.cache.exists(view.paths.storage_snapshot(pool, volume, name)):
                raise Conflict(f"RBD volume {pool}/{volume} of VM '{spec.name}' already has a "
                               f"snapshot '{name}'; choose another snapshot_name")
        if view.cache.exists(view.paths.vm_hold(spec.uuid)):
            raise Conflict(f"VM '{spec.name}' is still held by an earlier snapshot task; try "
                           "again once it is released")
        await start_task(self, "vm.create_snapshot",
                         {"vm": spec.uuid, "name": spec.name, "snapshot_name": name,
                          "consistency": consistency},
                         _objects(spec.uuid, volumes))

    @accepts(SNAPSHOT_NAME_REQUIRED, *TASK_VALUES)
    async def delete(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        name = self.values[SNAPSHOT_NAME_REQUIRED]
        self.refuse_if_removing(spec)
        record = snapshot_record(self.ctx.view, spec, name)
        storage_timeout(self.ctx)
        await start_task(self, "vm.remove_snapshot",
                         {"vm": spec.uuid, "name": spec.name, "snapshot_name": name},
                         _objects(spec.uuid, record.volumes()))

    def _refuse_busy_vm(self, spec: VmSpec) -> None:
        self.refuse_if_removing(spec)
        self.refuse_if_provisioning(spec)
        status = self.ctx.view.vm_status(spec.uuid)
        migration = spec.migration
        if migration is not None and (status is None or
                                      status.migration_done < migration.request):
            raise Conflict(f"VM '{spec.name}' is migrating; take the snapshot once it has "
                           "arrived; nothing was changed")


class VmSnapshotRollbackHandler(VmBaseHandler):
    @accepts(SNAPSHOT_NAME_REQUIRED, *TASK_VALUES)
    async def post(self, vm: str) -> None:
        view = self.ctx.view
        spec, _ = self.vm_spec(vm)
        name = self.values[SNAPSHOT_NAME_REQUIRED]
        self.refuse_if_removing(spec)
        self.refuse_if_provisioning(spec)
        record = snapshot_record(view, spec, name)
        where = running_on(view, spec.uuid)
        if where is not None:
            raise Conflict(f"VM '{spec.name}' runs on {where}; stop it first (state stop or "
                           "disable) to roll it back")
        check_rollback(view, spec, record)
        storage_timeout(self.ctx)
        await start_task(self, "vm.rollback_snapshot",
                         {"vm": spec.uuid, "name": spec.name, "snapshot_name": name},
                         _objects(spec.uuid, record.volumes()))


def snapshot_record(view: ClusterView, spec: VmSpec, name: str) -> VmSnapshot:
    try:
        return read_snapshot(view, spec.uuid, name)
    except NotFound:
        raise NotFound(f"VM '{spec.name}' has no snapshot '{name}'") from None


def _objects(uuid: str, volumes: list[tuple[str, str]]) -> list[str]:
    return [f"vm:{uuid}", *(f"volume:{pool}/{volume}" for pool, volume in volumes)]


ROUTES = [
    route("/vm/<vm>/snapshot", VmSnapshotHandler),
    route("/vm/<vm>/snapshot/rollback", VmSnapshotRollbackHandler),
]
