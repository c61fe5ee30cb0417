"""VM endpoints: list/define, element (GET/PUT/DELETE), state, node (migrate), dump.

Every write is validated first (XML parsed safely, names and UUIDs unique, states, actions,
selectors and nodes checked) and then recorded as desired state in one compare-and-set
transaction; the VM controller of the named node carries it out.
"""

from __future__ import annotations

from typing import Any

from pvcd.api.base import ApiContext, BaseHandler
from pvcd.api.render import FragmentRenderer
from pvcd.api.routing import route
from pvcd.api.storage import (
    check_vm_volumes,
    request_waiter,
    vm_removal,
    vm_volume_failures,
)
from pvcd.api.vm_rename import rename_vm
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound
from pvcd.domain.records import Migration, VmSpec, from_dict
from pvcd.domain.states import MIGRATE_ACTIONS, SELECTORS, VM_STATE_REQUESTS, VM_STATES
from pvcd.placement import choose_node
from pvcd.state.store import Op
from pvcd.state.view import ClusterView
from pvcd.state.vm_removal import forget_vm_ops
from pvcd.vmxml import parse_domain_xml

# a VM on a node in one of these daemon states is removed by that node (docs/vms.md)
ACTING_DAEMON_STATES = ("init", "run")
REMOVAL_WAIT = 60.0  # seconds, without Ceph (with it: drivers.ceph.request_timeout)


def removal_timeout(ctx: ApiContext) -> float:
    """How long DELETE /vm/<vm> waits for the node (and the disks' removal)."""
    timeout = ctx.extras.get("storage_request_timeout")
    return REMOVAL_WAIT if timeout is None else float(timeout)


def vm_state(spec: dict[str, Any], status: dict[str, Any]) -> str:
    """The state word of objects.md, from desired and observed state."""
    migration = spec.get("migration")
    if isinstance(migration, dict) and \
            int(status.get("migration_done", 0)) < int(migration.get("request", 0)):
        return str(migration.get("action", "migrate"))
    if int(spec.get("restart_request", 0)) > int(status.get("restart_done", 0)):
        return "restart"
    if status.get("state") == "failed" and \
            int(status.get("state_request_done", 0)) >= int(spec.get("state_request", 0)):
        return "failed"
    return str(spec.get("state", "start"))


def vm_object(view: ClusterView, uuid: str) -> dict[str, Any] | None:
    spec = view.cache.get(view.paths.vm(uuid))
    if not isinstance(spec, dict):
        return None
    status = view.cache.get(view.paths.vm_status(uuid)) or {}
    info = spec.get("info") or {}
    obj: dict[str, Any] = {
        "name": spec.get("name"),
        "uuid": uuid,
        "state": vm_state(spec, status),
        "node": spec.get("node"),
        "last_node": spec.get("last_node"),
        "migrated": spec.get("last_node") is not None,
        "failed_reason": status.get("failed_reason") or None,
        "running_on": status.get("node") if status.get("state") == "running" else None,
    }
    obj.update(info)
    obj["xml"] = spec.get("xml")
    return obj


def vm_renderer(view: ClusterView) -> FragmentRenderer:
    entry, paths = view.cache.entry, view.paths

    def basis(uuid: str) -> tuple[Any, ...]:
        return entry(paths.vm(uuid)), entry(paths.vm_status(uuid))

    return FragmentRenderer(basis, lambda uuid: vm_object(view, uuid))


class VmBaseHandler(BaseHandler):
    def vm_uuid(self, name_or_uuid: str) -> str:
        uuid = self.ctx.view.resolve_vm(name_or_uuid)
        if uuid is None:
            raise NotFound(f"VM '{name_or_uuid}' not found")
        return uuid

    def vm_spec(self, name_or_uuid: str) -> tuple[VmSpec, int]:
        uuid = self.vm_uuid(name_or_uuid)
        entry = self.ctx.view.cache.entry(self.ctx.view.paths.vm(uuid))
        if entry is None:
            raise NotFound(f"VM '{name_or_uuid}' not found")
        return from_dict(VmSpec, entry.doc), entry.version

    def refuse_if_removing(self, spec: VmSpec) -> None:
        if spec.removing:
            raise Conflict(f"VM '{spec.name}' is being removed")

    def selector(self) -> str | None:
        return self.values.choice("selector", SELECTORS, required=False)


class VmListHandler(VmBaseHandler):
    def get(self) -> None:
        view = self.ctx.view
        limit = self.values.limit()
        node = self.values.get("node")
        state = self.values.choice("state", VM_STATES, required=False)
        if node is not None and view.node_spec_entry(node) is None:
            raise NotFound(f"Node '{node}' not found")
        renderer = self.ctx.extras.get("vm_renderer")
        if renderer is None:
            renderer = self.ctx.extras["vm_renderer"] = vm_renderer(view)
        selected = []
        for uuid in view.vm_uuids():
            spec = view.cache.get(view.paths.vm(uuid))
            if not isinstance(spec, dict):
                continue
            if limit is not None and not limit.search(str(spec.get("name", ""))):
                continue
            if node is not None and spec.get("node") != node:
                continue
            if state is not None and vm_state(
                    spec, view.cache.get(view.paths.vm_status(uuid)) or {}) != state:
                continue
            selected.append(uuid)
        self.reply_json(renderer.render(selected))

    async def post(self) -> None:
        view = self.ctx.view
        definition = parse_domain_xml(self.values.require("xml"))
        selector = self.selector()
        if view.resolve_vm(definition.name) is not None:
            raise Conflict(f"A VM named '{definition.name}' already exists")
        if view.cache.exists(view.paths.vm(definition.uuid)):
            raise Conflict(f"A VM with UUID {definition.uuid} already exists")
        node = choose_node(view, self.values.get("node"), selector)
        spec = VmSpec(uuid=definition.uuid, name=definition.name, xml=definition.xml,
                      node=node, memory=definition.memory, vcpu=definition.vcpu,
                      state="start", selector=selector, info=definition.to_api_fields())
        await self.commit([
            Op.create(view.paths.vm(spec.uuid), spec.to_doc()),
            Op.create(view.paths.vm_name(spec.name), {"uuid": spec.uuid}),
        ])
        self.message(f"Added VM '{spec.name}' ({spec.uuid}) on node {node}")


class VmHandler(VmBaseHandler):
    def get(self, vm: str) -> None:
        obj = vm_object(self.ctx.view, self.vm_uuid(vm))
        if obj is None:
            raise NotFound(f"VM '{vm}' not found")
        self.reply([obj])

    async def put(self, vm: str) -> None:
        view = self.ctx.view
        spec, version = self.vm_spec(vm)
        definition = parse_domain_xml(self.values.require("xml"), default_uuid=spec.uuid)
        restart = self.values.flag("restart")
        if definition.uuid != spec.uuid:
            raise InvalidValue(f"the XML's UUID {definition.uuid} is not the VM's UUID "
                               f"{spec.uuid}; the UUID of a VM cannot change")
        self.refuse_if_removing(spec)
        if definition.name != spec.name:
            # libvirt keeps one name per UUID: a new name needs the domain redefined, which
            # the rename does (with the disks named after the VM); nothing was changed here
            raise InvalidValue(f"the XML names the VM '{definition.name}', not '{spec.name}': "
                               f"rename the VM with POST /vm/{spec.name}/rename "
                               f"(new_name={definition.name}) first")
        spec.xml = definition.xml
        spec.memory, spec.vcpu, spec.info = definition.memory, definition.vcpu, \
            definition.to_api_fields()
        if restart:
            spec.restart_request += 1
            spec.state = "start"
        await self.commit([Op.set(view.paths.vm(spec.uuid), spec.to_doc(), version)])
        self.message(f"Modified VM '{spec.name}'" + (" and restarting it" if restart else
                                                     "; restart it to apply the change"))

    async def delete(self, vm: str) -> None:
        view = self.ctx.view
        spec, version = self.vm_spec(vm)
        self.refuse_if_removing(spec)
        volumes: list[tuple[str, str]] = []
        if self.values.flag("delete_disks"):
            volumes = parse_domain_xml(spec.xml, default_uuid=spec.uuid).rbd_volumes()
            if volumes:
                check_vm_volumes(self.ctx, volumes)  # Ceph configured, every volume known
        removal = vm_removal(self.ctx, volumes)
        node_state = view.node_daemon_state(spec.node)
        timeout = removal_timeout(self.ctx)
        disks = f" and its disks {', '.join(f'{p}/{v}' for p, v in volumes)}" if volumes else ""
        if node_state in ACTING_DAEMON_STATES:
            spec.remove = removal  # its node takes the guest down, then forgets the VM
            await self.commit([Op.set(view.paths.vm(spec.uuid), spec.to_doc(), version)])
            gone = await request_waiter(self.ctx).wait(view.cache, view.paths.vm(spec.uuid),
                                                       timeout, settled=lambda doc: doc is None)
            if gone is not None:
                raise BackendError(
                    f"VM '{spec.name}' is being removed, but node {spec.node} has not stopped "
                    f"and undefined it after {timeout:g} s; it keeps going there"
                    + (" (its disks are removed after that)" if volumes else ""))
            after = f"; node {spec.node} stopped and undefined it"
        elif volumes and node_state != "fenced":
            raise Conflict(
                f"VM '{spec.name}' is on node {spec.node}, which is not running (daemon state "
                f"{node_state}); its disks are removed only after its node has stopped and "
                "undefined it, since a guest may still hold them open: start the node (or "
                "fence it) first, or delete the VM without delete_disks; nothing was changed")
        else:  # no node can hold the guest now: forgotten at once
            await self.commit(forget_vm_ops(view, spec, version, removal, self.ctx.clock()))
            after = f"; node {spec.node} is {node_state}" + \
                ("" if node_state == "fenced" else " and undefines it when it runs again")
        failed = await vm_volume_failures(self.ctx, removal, timeout) if volumes else []
        if failed:
            raise BackendError(f"Removed VM '{spec.name}', but not all of its disks: "
                               + "; ".join(failed))
        self.message(f"Removed VM '{spec.name}'{disks}{after}")


class VmStateHandler(VmBaseHandler):
    def get(self, vm: str) -> None:
        obj = vm_object(self.ctx.view, self.vm_uuid(vm))
        assert obj is not None
        self.reply({"name": obj["name"], "state": obj["state"]})

    async def post(self, vm: str) -> None:
        spec, version = self.vm_spec(vm)
        self.refuse_if_removing(spec)
        wanted = self.values.choice("state", VM_STATE_REQUESTS)
        spec.state_request += 1
        if wanted == "restart":
            spec.restart_request += 1
            spec.state = "start"
        else:
            spec.state = str(wanted)
        await self.commit([Op.set(self.ctx.view.paths.vm(spec.uuid), spec.to_doc(), version)])
        self.message(f"Setting VM '{spec.name}' to state {wanted}")


class VmNodeHandler(VmBaseHandler):
    def get(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        self.reply({"name": spec.name, "node": spec.node, "last_node": spec.last_node})

    async def post(self, vm: str) -> None:
        view = self.ctx.view
        spec, version = self.vm_spec(vm)
        self.refuse_if_removing(spec)
        action = self.values.choice("action", MIGRATE_ACTIONS)
        selector = self.selector()
        permanent, force = self.values.flag("permanent"), self.values.flag("force")
        source = spec.node
        if action == "unmigrate":
            if spec.last_node is None:
                raise InvalidValue(f"VM '{spec.name}' has not been migrated; nothing to undo")
            target = spec.last_node
            if target == source:
                raise InvalidValue(f"VM '{spec.name}' is already on {target}")
            if target not in _ready_nodes(view):
                raise InvalidValue(f"VM '{spec.name}' cannot return to {target}: the node is "
                                   "not running and ready")
            spec.last_node = None
        else:
            if spec.last_node is not None and not force and not permanent:
                raise InvalidValue(f"VM '{spec.name}' has already been migrated from "
                                   f"{spec.last_node}; unmigrate it first, or use force")
            target = choose_node(view, self.values.get("node"), selector, exclude=[source])
            if permanent:
                spec.last_node = None
            elif spec.last_node is None:
                spec.last_node = source  # `force` keeps the original previous node
        spec.node = target
        # a VM that should run is handed over by its node even if its status has not said
        # `running` yet (it may have just started there): never reassigned under its feet
        running = _running_on(view, spec.uuid) or (source if spec.state == "start" else None)
        if running is not None:
            done = int((view.cache.get(view.paths.vm_status(spec.uuid)) or {})
                       .get("migration_done", 0))
            previous = spec.migration.request if spec.migration else 0
            spec.migration = Migration(source=running, request=max(done, previous) + 1,
                                       action=str(action))
        await self.commit([Op.set(view.paths.vm(spec.uuid), spec.to_doc(), version)])
        verb = "Migrating" if running is not None else "Moving"
        self.message(f"{verb} VM '{spec.name}' from {source} to {target}")


class VmRenameHandler(VmBaseHandler):
    async def post(self, vm: str) -> None:
        spec, version = self.vm_spec(vm)
        self.message(await rename_vm(self, spec, version, self.values.require("new_name")))


class VmDumpHandler(VmBaseHandler):
    def get(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        self.set_header("Content-Type", "application/xml; charset=utf-8")
        self.finish(spec.xml)


def _running_on(view: ClusterView, uuid: str) -> str | None:
    status = view.cache.get(view.paths.vm_status(uuid)) or {}
    if status.get("state") in ("running", "migrating", "shutting-down"):
        return str(status.get("node")) or None
    return None


def _ready_nodes(view: ClusterView) -> set[str]:
    from pvcd.placement import candidate_nodes

    return set(candidate_nodes(view))


ROUTES = [
    route("/vm", VmListHandler),
    route("/vm/<vm>", VmHandler),
    route("/vm/<vm>/state", VmStateHandler),
    route("/vm/<vm>/node", VmNodeHandler),
    route("/vm/<vm>/rename", VmRenameHandler),
    route("/vm/<vm>/dump", VmDumpHandler),
]
