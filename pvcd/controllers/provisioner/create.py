"""The `provisioner.create` task: a VM from a profile (extensions.md §3.9), on the primary.

Steps, each reported in `progress` (total: the disks, plus 2 with `define_vm`):
0. Plan again with the cluster as it is now (`pvcd.domain.provisioning.plan_create`: what
   changed since the API accepted it fails the task before anything is made), ask Ceph whether
   each pool has room for its disks, and build the domain XML (`pvcd.provisioner_xml`), checked
   by `pvcd.vmxml` like any XML a client defines.
1. With `define_vm`: the VM spec and its name index in one transaction, in state `provision`
   (no node acts on it) on the node placement chose.
2. Each disk in `disk_id` order, by its method: a copy (`volume-clone`, then a grow), or a new
   volume (`volume-add`) then filled by a fresh filesystem or a converted OVA image
   (`pvcd.drivers.disk_images`). Ceph is changed through storage requests only.
3. The hand-over: `provision` → `start` (or `stop`), placed again first if its node is no longer
   ready. The task succeeds once the start is requested; the VM's node boots it.

Every volume and the VM record are artifacts, recorded before they are made: a failure (here)
or an interruption (the primary's janitor) removes them newest first, volumes before the VM
record. `undo` leaves in place what a handed-over VM uses: after step 3 the VM is the
operator's.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pvcd.config.schema import CephDriverSection, LibvirtDriverSection
from pvcd.controllers.tasks import TaskContext, TaskKind, TaskOutcome
from pvcd.controllers.tasks.storage_steps import StorageSteps
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound
from pvcd.domain.pool_space import PoolSpace
from pvcd.domain.provisioning import (
    CreatePlan,
    CreateRequest,
    DiskStep,
    place_vm,
    plan_create,
    random_mac,
    vm_meta,
)
from pvcd.domain.records import VmRemoval, VmSpec, from_dict
from pvcd.domain.states import PROVISION_VM_STATE
from pvcd.domain.tasks import Artifact
from pvcd.drivers.disk_images import DiskImages
from pvcd.provisioner_xml import (
    CephAccess,
    GeneratedDisk,
    GeneratedDomain,
    domain_xml,
    serial_log_path,
)
from pvcd.state.provisioning import cluster_facts, provisioner_objects
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.state.vm_removal import forget_vm_ops
from pvcd.vmxml import DomainDefinition, parse_domain_xml

log = logging.getLogger(__name__)

NAME = "provisioner.create"
UNDO_PATIENCE = 120.0  # seconds an undo retries a volume that cannot be removed yet
UNDO_RETRY = 1.0
VOLUME, VM = "volume", "vm"  # artifact kinds


class ProvisionerCreate:
    """The task kind (`kind()`); its dependencies are the primary's view of the cluster."""

    def __init__(self, view: ClusterView, store: Store, pool_space: Callable[[str], PoolSpace],
                 images: DiskImages, libvirt: LibvirtDriverSection, ceph: CephDriverSection,
                 monitors: Callable[[], tuple[tuple[str, int], ...]], arch: str,
                 clock: Callable[[], float] = time.time,
                 octets: Callable[[int], bytes] = secrets.token_bytes,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.view = view
        self.store = store
        self.pool_space = pool_space
        self.images = images
        self.libvirt = libvirt
        self.ceph = ceph
        self.monitors = monitors
        self.arch = arch
        self.clock = clock
        self.octets = octets
        self.sleep = sleep
        self.steps = StorageSteps(view, store, clock)

    def kind(self) -> TaskKind:
        return TaskKind(NAME, self.run, self.undo)

    # -- run ------------------------------------------------------------------------------------

    def run(self, ctx: TaskContext) -> TaskOutcome:
        request = CreateRequest.from_args(ctx.args)
        uuid = str(ctx.args.get("uuid") or "")
        plan = plan_create(request, provisioner_objects(self.view), cluster_facts(self.view),
                           lambda: random_mac(self.octets))
        total = plan.steps
        ctx.progress(0, total, "checking the pools' free space")
        self._check_space(plan)
        definition = parse_domain_xml(self._xml(plan, uuid))
        done = 0
        if request.define_vm:
            ctx.progress(done, total, f"recording VM {request.name} on node {plan.node} "
                                      "(state provision)")
            self._record_vm(ctx, plan, definition)
            done += 1
        for disk in plan.disks:
            ctx.progress(done, total, f"disk {disk.disk_id} ({disk.spec}): {_doing(disk)}")
            self._make_disk(ctx, disk)
            done += 1
        node, started = plan.node, False
        if request.define_vm:
            ctx.progress(done, total, f"handing VM {request.name} over to its node")
            ctx.check()
            node = self._hand_over(definition.uuid, plan, request.start_vm)
            started = request.start_vm
            done += 1
        ctx.progress(done, total, "done")
        result: dict[str, Any] = {
            "name": request.name, "uuid": definition.uuid, "node": node if request.define_vm
            else None, "volumes": [d.spec for d in plan.disks],
            "macs": [n.mac for n in plan.nics], "defined": request.define_vm,
            "started": started}
        if not request.define_vm:
            result["xml"] = definition.xml
        what = "started" if started else "defined" if request.define_vm else "made the disks of"
        return TaskOutcome(f"Created VM '{request.name}' from profile '{plan.profile.name}' "
                           f"({len(plan.disks)} disks); {what}"
                           + (f" on node {node}" if request.define_vm else ""), result)

    def _check_space(self, plan: CreatePlan) -> None:
        for pool, needed in sorted(plan.space_needed().items()):
            space = self.pool_space(pool)
            if needed >= space.free:
                raise InvalidValue(f"the disks in pool {pool} need {needed} bytes, but it has "
                                   f"only {space.free} bytes free; nothing was created")

    def _xml(self, plan: CreatePlan, uuid: str) -> str:
        system, request = plan.system, plan.request
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d %H:%M:%S")
        description = request.description or \
            f"pvcd provisioner, profile '{plan.profile.name}', {stamp} UTC"
        domain = GeneratedDomain(
            name=request.name, uuid=uuid, description=description,
            memory_mib=system.vram_mb, vcpus=system.vcpu_count,
            domain_type=self.libvirt.domain_type, arch=self.arch,
            disks=[GeneratedDisk(d.pool, d.volume, d.disk_id) for d in plan.disks],
            nics=[(n.vni, n.mac) for n in plan.nics], cdrom=plan.cdrom,
            serial_log=serial_log_path(self.libvirt.console_log_directory, request.name)
            if system.serial else None,
            vnc_bind=system.vnc_bind if system.vnc else None)
        access = CephAccess(self.ceph.libvirt_user, self.ceph.libvirt_secret_uuid,
                            self.monitors())
        return domain_xml(domain, access)

    def _record_vm(self, ctx: TaskContext, plan: CreatePlan,
                   definition: DomainDefinition) -> None:
        spec = VmSpec(uuid=definition.uuid, name=definition.name, xml=definition.xml,
                      node=plan.node, memory=definition.memory, vcpu=definition.vcpu,
                      state=PROVISION_VM_STATE, info=definition.to_api_fields(),
                      profile=plan.profile.name, **vm_meta(plan.system))
        paths = self.view.paths
        ctx.artifact(VM, spec.uuid)
        try:
            self.store.commit([Op.create(paths.vm(spec.uuid), spec.to_doc()),
                               Op.create(paths.vm_name(spec.name), {"uuid": spec.uuid})])
        except Conflict:
            raise Conflict(f"a VM named '{spec.name}' was defined meanwhile; nothing was "
                           "created") from None
        log.info("event=provision-vm-recorded vm=%s name=%s node=%s task=%s", spec.uuid,
                 spec.name, plan.node, ctx.task_id)

    def _make_disk(self, ctx: TaskContext, disk: DiskStep) -> None:
        if self.view.cache.exists(self.view.paths.storage_volume(disk.pool, disk.volume)):
            raise Conflict(f"RBD volume {disk.spec} was created meanwhile; it is not this "
                           "task's and stays")
        ctx.artifact(VOLUME, disk.spec)  # listed before it exists: a crash leaves it listed
        check = ctx.check
        if disk.how == "copy":
            assert disk.source is not None
            args: dict[str, Any] = {"pool": disk.pool, "volume": disk.source,
                                    "new_volume": disk.volume, "force": True}
            if disk.source_snapshot is not None:
                args["snapshot"] = disk.source_snapshot
            copied = self.steps.run("volume-clone", args, check)
            if int(copied.result.get("size") or 0) < disk.size:
                self.steps.run("volume-modify", {"pool": disk.pool, "volume": disk.volume,
                                                 "size": disk.size, "force": True}, check)
            return
        self.steps.run("volume-add", {"pool": disk.pool, "volume": disk.volume,
                                      "size": disk.size}, check)
        if disk.how == "convert":
            assert disk.source is not None and disk.source_format is not None
            self.images.convert(disk.pool, disk.source, disk.source_format, disk.pool,
                                disk.volume, disk.size)
        elif disk.filesystem:
            self.images.write_filesystem(disk.pool, disk.volume, disk.size, disk.filesystem,
                                         disk.filesystem_args)

    def _hand_over(self, uuid: str, plan: CreatePlan, start: bool) -> str:
        """`provision` → `start`/`stop` in one compare-and-set; placed again if its node is
        no longer running and ready (nodes ignored it while it was provisioned)."""
        chosen: list[str] = []

        def change(doc: Any) -> Any:
            spec = from_dict(VmSpec, doc)
            if spec.state != PROVISION_VM_STATE:
                raise Conflict(f"VM {spec.name} left state provision meanwhile ({spec.state})")
            loads = self.view.node_loads()
            if not any(n.name == spec.node and n.available for n in loads):
                spec.node = place_vm(plan.system, loads)
            spec.state = "start" if start else "stop"
            spec.state_request += 1
            chosen[:] = [spec.node]
            return spec.to_doc()

        self.store.update(self.view.paths.vm(uuid), change)
        return chosen[0]

    # -- undo -----------------------------------------------------------------------------------

    def undo(self, artifact: Artifact) -> None:
        if artifact.kind == VOLUME:
            self._remove_volume(artifact.ref)
        elif artifact.kind == VM:
            self._forget_vm(artifact.ref)
        else:
            raise InvalidValue(f"{NAME} made no artifact of kind {artifact.kind!r}")

    def _remove_volume(self, ref: str) -> None:
        pool, _, volume = ref.partition("/")
        user = self._handed_over_user(pool, volume)
        if user is not None:
            raise Conflict(f"VM '{user}' uses it and was handed over to its node already")
        deadline = time.monotonic() + UNDO_PATIENCE
        while True:
            try:
                self.steps.run("volume-remove", {"pool": pool, "volume": volume,
                                                 "with_snapshots": True})
            except NotFound:
                return  # never made (or removed already)
            except (Conflict, BackendError) as exc:
                # a copy cut off with its daemon (its `rbd` outlives a killed process) holds
                # the image open until it ends: removed once it has
                if time.monotonic() >= deadline:
                    raise
                log.info("event=provision-volume-remove-retry volume=%s/%s error=%s", pool,
                         volume, exc)
                self.sleep(UNDO_RETRY)
                continue
            log.info("event=provision-volume-removed volume=%s/%s", pool, volume)
            return

    def _handed_over_user(self, pool: str, volume: str) -> str | None:
        for uuid in self.view.vm_uuids():
            spec = self.view.vm_spec(uuid)
            if spec is None or spec.state == PROVISION_VM_STATE:
                continue
            disks = spec.info.get("disks") if isinstance(spec.info, dict) else None
            if any(isinstance(d, dict) and d.get("name") == f"{pool}/{volume}"
                   for d in disks or []):
                return spec.name
        return None

    def _forget_vm(self, uuid: str) -> None:
        for _ in range(5):
            entry = self.view.cache.entry(self.view.paths.vm(uuid))
            if entry is None:
                return
            spec = from_dict(VmSpec, entry.doc)
            if spec.state != PROVISION_VM_STATE:
                raise Conflict(f"VM '{spec.name}' was handed over to its node already")
            try:
                self.store.commit(forget_vm_ops(self.view, spec, entry.version, VmRemoval(),
                                                self.clock()))
            except Conflict:
                continue  # changed meanwhile: look again
            log.info("event=provision-vm-forgotten vm=%s name=%s", uuid, spec.name)
            return
        raise BackendError(f"VM {uuid} kept changing while it was being removed")


def _doing(disk: DiskStep) -> str:
    if disk.how == "copy":
        source = f"{disk.pool}/{disk.source}" + \
            (f"@{disk.source_snapshot}" if disk.source_snapshot else "")
        return f"copying {source}"
    if disk.how == "convert":
        return f"converting {disk.pool}/{disk.source} ({disk.source_format})"
    return f"new volume of {disk.size} bytes" + \
        (f", {disk.filesystem} filesystem" if disk.filesystem else "")
