"""VM endpoints: list/define, element (GET/PUT/DELETE), state, node (migrate), dump.

Every write is validated first (XML parsed safely, names and UUIDs unique, states, actions,
selectors and nodes checked, the stored document's size within what ZooKeeper takes in one
request: `pvcd.state.request_size`) and then recorded as desired state in one compare-and-set
transaction; the VM controller of the named node carries it out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from pvcd.api.base import ApiContext, BaseHandler
from pvcd.api.change_feed import classify
from pvcd.api.provisioner_create import CREATE_VALUES, start_create
from pvcd.api.ready_list import ReadyList
from pvcd.api.render import FragmentRenderer
from pvcd.api.routing import route
from pvcd.api.storage import check_vm_volumes, vm_removal, vm_volume_failures
from pvcd.api.tasks import WAIT_FOR_TASK
from pvcd.api.values import accepts, choice, flag, limit, text, texts
from pvcd.api.vm_meta_values import META_VALUES, read_meta
from pvcd.api.vm_rename import rename_vm
from pvcd.api.volumes import refuse_busy_disks
from pvcd.api.waiting import (
    DEFAULT_WAIT_TIMEOUT,
    WAIT_TIMEOUT,
    WAIT_VALUES,
    reply_when_settled,
    requested_wait,
    vm_settles,
    wait_until,
)
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound, PvcError
from pvcd.domain.moves import Move, check_migrate, check_unmigrate, holder, reassign
from pvcd.domain.placement import choose_node, require_node
from pvcd.domain.records import VmSpec, from_dict
from pvcd.domain.states import (
    MIGRATE_ACTIONS,
    NODE_SELECTORS,
    PROVISION_VM_STATE,
    STOPPED_VM_STATES,
    VM_STATE_REQUESTS,
    VM_STATES,
    vm_state,
)
from pvcd.domain.tasks import busy_task
from pvcd.domain.vm_meta import check_tag_name, node_limit_of, user_tags
from pvcd.specs.vms import check_name_kept, check_uuid_kept
from pvcd.state.request_size import check_request_size
from pvcd.state.store import Op
from pvcd.state.tasks import read_tasks
from pvcd.state.view import ClusterView
from pvcd.state.vm_move import MoveBasis, move_vm
from pvcd.state.vm_removal import forget_vm_ops
from pvcd.state.vm_snapshots import snapshot_list
from pvcd.vmxml import RESERVED_VM_NAMES, Disk, parse_domain_xml

# a VM on a node in one of these daemon states is removed by that node (docs/vms.md)
ACTING_DAEMON_STATES = ("init", "run")
REMOVAL_WAIT = 60.0  # seconds, without Ceph (with it: drivers.ceph.request_timeout)


def removal_timeout(ctx: ApiContext) -> float:
    """How long DELETE /vm/<vm> waits for the node (and the disks' removal)."""
    timeout = ctx.storage_request_timeout
    return REMOVAL_WAIT if timeout is None else float(timeout)


def vm_object(view: ClusterView, uuid: str, now: float | None = None
              ) -> dict[str, Any] | None:
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
    obj.update(_meta_fields(spec))
    obj["xml"] = spec.get("xml")
    obj["snapshots"] = snapshot_list(view, uuid, str(spec.get("xml") or ""),
                                     time.time() if now is None else now) \
        if view.cache.children(view.paths.vm_snapshots(uuid)) else []
    return obj


def _meta_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """The metadata and tags of a stored spec (extensions.md §6; `selector`: schema 1)."""
    return {"node_limit": spec.get("node_limit") or [],
            "node_selector": spec.get("node_selector") or spec.get("selector") or "none",
            "node_autostart": bool(spec.get("node_autostart", False)),
            "migration_method": spec.get("migration_method") or "none",
            "migration_max_downtime": spec.get("migration_max_downtime", 300),
            "profile": spec.get("profile"),
            "tags": spec.get("tags") or []}


def vm_renderer(view: ClusterView, clock: Callable[[], float] = time.time
                ) -> FragmentRenderer:
    entry, children, paths = view.cache.entry, view.cache.children, view.paths

    def basis(uuid: str) -> tuple[Any, ...]:
        return entry(paths.vm(uuid)), entry(paths.vm_status(uuid)), snapshots(uuid)

    def snapshots(uuid: str) -> tuple[Any, ...]:
        """Nothing for a VM without snapshots; else their records and the second (a
        snapshot's `age` grows: such a VM's fragment is rebuilt at most once a second)."""
        names = children(paths.vm_snapshots(uuid))
        if not names:
            return ()
        return (int(clock()), *(entry(paths.vm_snapshot(uuid, name)) for name in names))

    return FragmentRenderer(basis, lambda uuid: vm_object(view, uuid, clock()))


class VmFacts(NamedTuple):
    """What the list's filters look at, taken when the VM's fragment is."""

    name: str
    node: Any
    state: str
    tags: frozenset[str]


def vm_answers(view: ClusterView, renderer: FragmentRenderer,
               clock: Callable[[], float] = time.time) -> ReadyList[VmFacts]:
    """`GET /vm` as ready-made bytes: a VM's row changes with what `classify` counts as the
    VM (its spec, status, claim, hold, snapshots; not its console)."""
    prefix = view.paths.root.rstrip("/") + "/"

    def key_of(path: str) -> str | None:
        if path == view.paths.vms:
            return ""  # the parent itself (a restore): no VM's key, but a change to count
        found = classify(path[len(prefix):]) if path.startswith(prefix) else None
        return found[1] if found is not None and found[0] == "vm" else None

    def facts(uuid: str) -> VmFacts | None:
        spec = view.cache.get(view.paths.vm(uuid))
        if not isinstance(spec, dict):
            return None
        tags = spec.get("tags")
        names = [t.get("name") for t in tags if isinstance(t, dict)] \
            if isinstance(tags, list) else []
        return VmFacts(str(spec.get("name", "")), spec.get("node"),
                       vm_state(spec, view.cache.get(view.paths.vm_status(uuid)) or {}),
                       frozenset(name for name in names if isinstance(name, str)))

    return ReadyList(view.cache, renderer, view.vm_uuids, key_of, facts,
                     lambda uuid: bool(view.cache.children(view.paths.vm_snapshots(uuid))),
                     clock)


SELECTOR = choice("selector", NODE_SELECTORS, "How to choose the node when `node` is not given "
                  "or not valid: mem (least allocated memory), vcpus (least allocated vCPUs), "
                  "load (least load), vms (fewest VMs); memprov is mem; none (the default) is "
                  "the VM's own node_selector.")


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

    def refuse_if_provisioning(self, spec: VmSpec) -> None:
        """A VM in state `provision` belongs to its `provisioner.create` task until the task
        hands it over (extensions.md §3.9)."""
        if spec.state == PROVISION_VM_STATE:
            task = busy_task([f"vm:{spec.uuid}"], read_tasks(self.ctx.view))
            by = f" by task {task.id} (GET /api/v1/tasks/{task.id})" if task else ""
            raise Conflict(f"VM '{spec.name}' is being provisioned{by}; it takes state and node "
                           "requests once its disks are made; nothing was changed")

    async def define(self, xml: str, wanted_node: str | None, wait: float | None,
                     path_name: str | None = None) -> None:
        """Define a VM from `xml` with the metadata and tags of the request (`POST /vm`, and
        PVC's alias `POST /vm/<vm>`, whose path must name the XML's VM: `path_name`); the
        handler declares `META_VALUES`, `USER_TAGS` and `PROTECTED_TAGS`."""
        view = self.ctx.view
        definition = parse_domain_xml(xml)
        if definition.name in RESERVED_VM_NAMES:
            raise InvalidValue(f"'{definition.name}' is reserved (an API path, /vm/"
                               f"{definition.name}); choose another VM name")
        if path_name is not None and definition.name != path_name:
            raise InvalidValue(f"the XML names the VM '{definition.name}', not '{path_name}' "
                               "as the path does; nothing was changed")
        meta = read_meta(self.values, view)
        tags = user_tags(self.values[USER_TAGS], self.values[PROTECTED_TAGS])
        if view.resolve_vm(definition.name) is not None:
            raise Conflict(f"A VM named '{definition.name}' already exists")
        if view.cache.exists(view.paths.vm(definition.uuid)):
            raise Conflict(f"A VM with UUID {definition.uuid} already exists")
        if any(disk.protocol == "rbd" for disk in definition.disks):  # (else none is busy)
            refuse_busy_disks(view, definition.name, definition.disks)
        spec = VmSpec(uuid=definition.uuid, name=definition.name, xml=definition.xml,
                      node="", memory=definition.memory, vcpu=definition.vcpu,
                      state="start", info=definition.to_api_fields(), tags=tags, **meta)
        node = spec.node = choose_node(view.node_loads(), wanted_node, spec.node_selector,
                                       memory=definition.memory, limit=spec.node_limit)
        ops = [Op.create(view.paths.vm(spec.uuid), spec.to_doc()),
               Op.create(view.paths.vm_name(spec.name), {"uuid": spec.uuid})]
        check_request_size(ops, f"VM '{spec.name}' (its XML and the fields taken from it)")
        await self.commit(ops)
        await reply_when_settled(self, wait, vm_settles(view, spec.uuid),
                                 f"Added VM '{spec.name}' ({spec.uuid}) on node {node}")


def stored_disks(spec: VmSpec) -> tuple[Disk, ...]:
    """The disks of a VM's stored XML; none when it does not parse (written past the API: no
    node runs it, pvcd.specs.vms)."""
    try:
        return tuple(parse_domain_xml(spec.xml, default_uuid=spec.uuid).disks)
    except (PvcError, TypeError, ValueError):
        return ()


VM_LIMIT = limit("VM names")
NODE_FILTER = text("node", "Only VMs assigned to this node (pvcd addition).")
STATE_FILTER = choice("state", VM_STATES, "Only VMs in this state (pvcd addition).")
USER_TAGS = texts("user_tags", "Tags of the new VM.", check_tag_name)
PROTECTED_TAGS = texts("protected_tags", "Protected tags of the new VM.", check_tag_name)
TAG_FILTER = text("tag", "Only VMs with this tag.")
NEGATE = flag("negate", "Invert the node, state and tag filters: VMs not on that node, not in "
              "that state, without that tag.")
XML = text("xml", "The libvirt domain XML.", required=True)
NODE = text("node", "The node to run it on (default: chosen by selector).")


class VmListHandler(VmBaseHandler):
    @accepts(VM_LIMIT, NODE_FILTER, STATE_FILTER, TAG_FILTER, NEGATE)
    async def get(self) -> None:
        limit = self.values[VM_LIMIT]
        node = self.values[NODE_FILTER]
        state = self.values[STATE_FILTER]
        tag = self.values[TAG_FILTER]
        keep = not self.values[NEGATE]  # what a filter's match must be for a VM to be listed
        if node is not None and self.ctx.view.node_spec_entry(node) is None:
            raise NotFound(f"Node '{node}' not found")
        answer = self.ctx.vm_answers.current()
        if limit is None and node is None and state is None and tag is None:
            await self.reply_ready(answer)
            return

        def selected(vm: VmFacts) -> bool:
            return (limit is None or limit.search(vm.name)) and \
                (node is None or (vm.node == node) == keep) and \
                (state is None or (vm.state == state) == keep) and \
                (tag is None or (tag in vm.tags) == keep)

        await self.reply_ready(answer, (limit and limit.pattern, node, state, tag, keep),
                               selected)

    @accepts(XML, NODE, *META_VALUES, USER_TAGS, PROTECTED_TAGS, *WAIT_VALUES)
    async def post(self) -> None:
        await self.define(self.values[XML], self.values[NODE], requested_wait(self.values))


NEW_XML = text("xml", "The new libvirt domain XML (same UUID).", required=True)
RESTART = flag("restart", "Restart the VM to apply the change.")
DELETE_DISKS = flag("delete_disks", "Also remove the VM's RBD volumes.")


VM_TEMPLATE = text("vm_template", "Create the VM from this provisioner profile "
                   "(POST /provisioner/create with name=<vm>, profile=<vm_template>).")
DEFINE_XML = text("xml", "Define the VM from this libvirt domain XML, whose <name> must be the "
                  "path's <vm> (PVC 1.0's alias of POST /vm).")


class VmHandler(VmBaseHandler):
    def get(self, vm: str) -> None:
        obj = vm_object(self.ctx.view, self.vm_uuid(vm), self.ctx.clock())
        if obj is None:
            raise NotFound(f"VM '{vm}' not found")
        self.reply([obj])

    @accepts(VM_TEMPLATE, DEFINE_XML, NODE, *META_VALUES, USER_TAGS, PROTECTED_TAGS,
             WAIT_TIMEOUT, *CREATE_VALUES)
    async def post(self, vm: str) -> None:
        """The manual's `POST /vm/<vm>` (extensions.md §3.9): `vm_template` or `xml`."""
        template, xml = self.values[VM_TEMPLATE], self.values[DEFINE_XML]
        if (template is None) == (xml is None):
            raise InvalidValue("give exactly one of vm_template (a provisioner profile to "
                               "create the VM from) and xml (a domain XML to define)")
        if template is not None:
            await start_create(self, vm, template)
            return
        assert xml is not None
        timeout = self.values[WAIT_TIMEOUT]
        wait = (DEFAULT_WAIT_TIMEOUT if timeout is None else timeout) \
            if self.values[WAIT_FOR_TASK] else None
        await self.define(xml, self.values[NODE], wait, path_name=vm)

    @accepts(NEW_XML, RESTART)
    async def put(self, vm: str) -> None:
        view = self.ctx.view
        spec, version = self.vm_spec(vm)
        definition = parse_domain_xml(self.values[NEW_XML], default_uuid=spec.uuid)
        restart = self.values[RESTART]
        check_uuid_kept(definition, spec.uuid)
        self.refuse_if_removing(spec)
        self.refuse_if_provisioning(spec)
        check_name_kept(definition, spec.name)  # nothing was changed
        spec.xml = definition.xml
        spec.memory, spec.vcpu, spec.info = definition.memory, definition.vcpu, \
            definition.to_api_fields()
        if restart:
            refuse_busy_disks(view, spec.name, definition.disks)
            spec.restart_request += 1
            spec.state = "start"
        ops = [Op.set(view.paths.vm(spec.uuid), spec.to_doc(), version)]
        check_request_size(ops, f"VM '{spec.name}' (its XML and the fields taken from it)")
        await self.commit(ops)
        self.message(f"Modified VM '{spec.name}'" + (" and restarting it" if restart else
                                                     "; restart it to apply the change"))

    @accepts(DELETE_DISKS)
    async def delete(self, vm: str) -> None:
        view = self.ctx.view
        spec, version = self.vm_spec(vm)
        self.refuse_if_removing(spec)
        if busy_task([f"vm:{spec.uuid}"], read_tasks(view)) is not None:
            self.refuse_if_provisioning(spec)  # (its task removes it if it fails)
        volumes: list[tuple[str, str]] = []
        if self.values[DELETE_DISKS]:
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
            path = view.paths.vm(spec.uuid)
            _, gone = await wait_until(view.cache, (path,), lambda: view.cache.exists(path),
                                       lambda exists: not exists, timeout)
            if not gone:
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


STATE = choice("state", VM_STATE_REQUESTS, "The wanted state.", required=True)


class VmStateHandler(VmBaseHandler):
    @accepts(*WAIT_VALUES)
    async def get(self, vm: str) -> None:
        uuid, wait = self.vm_uuid(vm), requested_wait(self.values)

        def answer() -> dict[str, Any]:
            obj = vm_object(self.ctx.view, uuid) or {"name": vm, "state": None}
            return {"name": obj["name"], "state": obj["state"]}

        await reply_when_settled(self, wait, vm_settles(self.ctx.view, uuid), answer)

    @accepts(STATE, *WAIT_VALUES)
    async def post(self, vm: str) -> None:
        spec, version = self.vm_spec(vm)
        self.refuse_if_removing(spec)
        self.refuse_if_provisioning(spec)
        wanted = self.values[STATE]
        wait = requested_wait(self.values)
        if wanted in ("start", "restart"):
            refuse_busy_disks(self.ctx.view, spec.name, stored_disks(spec))
        spec.state_request += 1
        if wanted in STOPPED_VM_STATES:
            spec.node_autostart = False  # the operator wants it off: no `ready` starts it
        if wanted == "restart":
            spec.restart_request += 1
            spec.state = "start"
        else:
            spec.state = str(wanted)
        await self.commit([Op.set(self.ctx.view.paths.vm(spec.uuid), spec.to_doc(), version)])
        await reply_when_settled(self, wait, vm_settles(self.ctx.view, spec.uuid),
                                 f"Setting VM '{spec.name}' to state {wanted}")


ACTION = choice("action", MIGRATE_ACTIONS, "migrate, or unmigrate (return to last_node).",
                required=True)
TARGET_NODE = text("node", "The target node (default: chosen by selector).")
PERMANENT = flag("permanent", "Do not remember the node it came from (a move).")
FORCE = flag("force", "Migrate again although the VM was migrated already.")


class VmNodeHandler(VmBaseHandler):
    def get(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        self.reply({"name": spec.name, "node": spec.node, "last_node": spec.last_node})

    @accepts(ACTION, TARGET_NODE, SELECTOR, PERMANENT, FORCE, *WAIT_VALUES)
    async def post(self, vm: str) -> None:
        view = self.ctx.view
        uuid = self.vm_uuid(vm)
        action = self.values[ACTION]
        given_selector = self.values[SELECTOR]
        permanent, force = self.values[PERMANENT], self.values[FORCE]
        wait = requested_wait(self.values)
        chosen: dict[str, str] = {}

        def decide(basis: MoveBasis) -> VmSpec:
            """The move, on the spec, status and claim as ZooKeeper has them now."""
            spec, status, owner = basis.spec, basis.status, basis.owner
            self.refuse_if_removing(spec)
            self.refuse_if_provisioning(spec)
            memory = spec.memory if spec.state not in STOPPED_VM_STATES else 0
            if action == "unmigrate":
                target = require_node(view.node_loads(), check_unmigrate(spec), memory)
                why = Move.UNMIGRATE
            else:
                check_migrate(spec, force, permanent)
                # never the node it is on, nor the one still handing it over
                exclude = {spec.node, holder(spec, status, owner) or spec.node}
                selector = spec.node_selector if given_selector in (None, "none") else \
                    given_selector
                target = choose_node(view.node_loads(), self.values[TARGET_NODE], selector,
                                     exclude=exclude, memory=memory, limit=node_limit_of(spec))
                why = Move.MOVE if permanent else Move.MIGRATE
            chosen.update(name=spec.name, source=spec.node, target=target)
            return reassign(spec, status, target, why, owner=owner)

        new = await asyncio.to_thread(move_vm, self.ctx.store, view.paths, uuid, decide)
        assert new is not None
        verb = "Migrating" if new.migration is not None else "Moving"
        await reply_when_settled(self, wait, vm_settles(view, uuid),
                                 f"{verb} VM '{chosen['name']}' from {chosen['source']} to "
                                 f"{chosen['target']}")


NEW_NAME = text("new_name", "The new VM name: valid, unused, not reserved.", required=True)


class VmRenameHandler(VmBaseHandler):
    @accepts(NEW_NAME)
    async def post(self, vm: str) -> None:
        spec, version = self.vm_spec(vm)
        self.message(await rename_vm(self, spec, version, self.values[NEW_NAME]))


class VmDumpHandler(VmBaseHandler):
    def get(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        self.set_header("Content-Type", "application/xml; charset=utf-8")
        self.finish(spec.xml)


ROUTES = [
    route("/vm", VmListHandler),
    route("/vm/<vm>", VmHandler),
    route("/vm/<vm>/state", VmStateHandler),
    route("/vm/<vm>/node", VmNodeHandler),
    route("/vm/<vm>/rename", VmRenameHandler),
    route("/vm/<vm>/dump", VmDumpHandler),
]
