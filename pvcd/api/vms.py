"""VM endpoints: list/define, element (GET/PUT/DELETE), state, node (migrate), dump.

Every write is validated first (XML parsed safely, names and UUIDs unique, states, actions,
selectors and nodes checked) and then recorded as desired state in one compare-and-set
transaction; the VM controller of the named node carries it out.
"""

from __future__ import annotations

from typing import Any

from pvcd.api.base import BaseHandler
from pvcd.api.render import FragmentRenderer
from pvcd.api.routing import route
from pvcd.api.storage import check_vm_volumes, delete_vm_volumes
from pvcd.api.waiting import reply_when_settled, requested_wait, vm_settles
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound
from pvcd.domain.records import Migration, VmSpec, from_dict
from pvcd.domain.states import MIGRATE_ACTIONS, SELECTORS, VM_STATE_REQUESTS, VM_STATES
from pvcd.placement import choose_node
from pvcd.state.store import Op
from pvcd.state.view import ClusterView
from pvcd.vmxml import parse_domain_xml


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
        wait = requested_wait(self.values)
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
        await reply_when_settled(self, wait, vm_settles(view, spec.uuid),
                                 f"Added VM '{spec.name}' ({spec.uuid}) on node {node}")


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
        ops = []
        if definition.name != spec.name:
            if view.resolve_vm(definition.name) is not None:
                raise Conflict(f"A VM named '{definition.name}' already exists")
            ops += [Op.delete(view.paths.vm_name(spec.name)),
                    Op.create(view.paths.vm_name(definition.name), {"uuid": spec.uuid})]
        spec.name, spec.xml = definition.name, definition.xml
        spec.memory, spec.vcpu, spec.info = definition.memory, definition.vcpu, \
            definition.to_api_fields()
        if restart:
            spec.restart_request += 1
            spec.state = "start"
        await self.commit([Op.set(view.paths.vm(spec.uuid), spec.to_doc(), version), *ops])
        self.message(f"Modified VM '{spec.name}'" + (" and restarting it" if restart else
                                                     "; restart it to apply the change"))

    async def delete(self, vm: str) -> None:
        view = self.ctx.view
        spec, version = self.vm_spec(vm)
        volumes: list[tuple[str, str]] = []
        if self.values.flag("delete_disks"):
            volumes = parse_domain_xml(spec.xml, default_uuid=spec.uuid).rbd_volumes()
            if volumes:
                check_vm_volumes(self.ctx, volumes)  # Ceph configured, every volume known
        ops = [Op.delete(view.paths.vm_name(spec.name))]
        status = view.cache.entry(view.paths.vm_status(spec.uuid))
        if status is not None:
            ops.append(Op.delete(view.paths.vm_status(spec.uuid)))
        ops.append(Op.delete(view.paths.vm(spec.uuid), version))
        await self.commit(ops)
        failed = await delete_vm_volumes(self, volumes) if volumes else []
        if failed:
            raise BackendError(f"Removed VM '{spec.name}', but not all of its disks: "
                               + "; ".join(failed))
        disks = f" and its disks {', '.join(f'{p}/{v}' for p, v in volumes)}" if volumes else ""
        self.message(f"Removed VM '{spec.name}'{disks}; it is being stopped and undefined on "
                     f"node {spec.node}")


class VmStateHandler(VmBaseHandler):
    async def get(self, vm: str) -> None:
        uuid, wait = self.vm_uuid(vm), requested_wait(self.values)

        def answer() -> dict[str, Any]:
            obj = vm_object(self.ctx.view, uuid) or {"name": vm, "state": None}
            return {"name": obj["name"], "state": obj["state"]}

        await reply_when_settled(self, wait, vm_settles(self.ctx.view, uuid), answer)

    async def post(self, vm: str) -> None:
        spec, version = self.vm_spec(vm)
        wanted = self.values.choice("state", VM_STATE_REQUESTS)
        wait = requested_wait(self.values)
        spec.state_request += 1
        if wanted == "restart":
            spec.restart_request += 1
            spec.state = "start"
        else:
            spec.state = str(wanted)
        await self.commit([Op.set(self.ctx.view.paths.vm(spec.uuid), spec.to_doc(), version)])
        await reply_when_settled(self, wait, vm_settles(self.ctx.view, spec.uuid),
                                 f"Setting VM '{spec.name}' to state {wanted}")


class VmNodeHandler(VmBaseHandler):
    def get(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        self.reply({"name": spec.name, "node": spec.node, "last_node": spec.last_node})

    async def post(self, vm: str) -> None:
        view = self.ctx.view
        spec, version = self.vm_spec(vm)
        action = self.values.choice("action", MIGRATE_ACTIONS)
        selector = self.selector()
        permanent, force = self.values.flag("permanent"), self.values.flag("force")
        wait = requested_wait(self.values)
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
        await reply_when_settled(self, wait, vm_settles(view, spec.uuid),
                                 f"{verb} VM '{spec.name}' from {source} to {target}")


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
    route("/vm/<vm>/dump", VmDumpHandler),
]
