"""`POST /vm/<vm>/rename` (extensions.md §11.1): a stopped VM, and the RBD volumes named after
it, get a new name; the UUID stays.

libvirt keeps one name per UUID, so a name cannot change through `PUT /vm/<vm>` (the node could
not redefine the domain); this is the way. Everything is checked first, before anything changes:
the new name valid, unused and not reserved; the VM `stop` or `disable` and running nowhere;
every volume to rename (`<old>` or `<old>_<suffix>` among the VM's RBD disks) known, its new
name free, no storage request in flight on it. Then the volumes are renamed one by one through
storage requests (`volume-modify` with `name`; snapshots move with them); if one fails, those
already renamed are renamed back. Last, one compare-and-set transaction writes the spec (the
XML's `<name>` and the renamed disk sources, nothing else), moves the name index and updates
the VM's snapshot records (their RBD snapshots moved with the volumes). The VM's
node then undefines the old domain and defines the new one with the same UUID.

Race named: a state change between the volume renames and that transaction makes it fail; the
volumes are then renamed back (a start meanwhile fails on the missing volumes and is retried by
a new state request).
"""

from __future__ import annotations

from pvcd.api.base import BaseHandler
from pvcd.api.storage import run_request
from pvcd.domain.errors import Conflict, InvalidValue, NotFound, PvcError
from pvcd.domain.records import StorageRequest, VmSpec, from_dict
from pvcd.drivers.ceph.values import check_volume_name
from pvcd.state.store import Op
from pvcd.state.view import ClusterView
from pvcd.state.vm_snapshots import renamed_snapshot_ops
from pvcd.vmxml import RESERVED_VM_NAMES, check_vm_name, parse_domain_xml, renamed_domain_xml

STOPPED_STATES = ("stop", "disable")  # the desired states in which a VM may be renamed
RUNNING_STATES = ("running", "migrating", "shutting-down")  # observed: a guest exists


def volume_renames(spec: VmSpec, new_name: str) -> list[tuple[str, str, str]]:
    """(pool, volume, new volume) for each of the VM's RBD volumes named after it."""
    renames = []
    for pool, volume in parse_domain_xml(spec.xml, default_uuid=spec.uuid).rbd_volumes():
        if volume == spec.name or volume.startswith(spec.name + "_"):
            renames.append((pool, volume, new_name + volume[len(spec.name):]))
    return renames


def check_rename(view: ClusterView, spec: VmSpec, new_name: str,
                 renames: list[tuple[str, str, str]]) -> None:
    """InvalidValue, Conflict or NotFound unless the rename can go ahead."""
    check_vm_name(new_name)
    if new_name in RESERVED_VM_NAMES:
        raise InvalidValue(f"'{new_name}' is reserved (an API path); choose another VM name")
    if new_name == spec.name:
        raise InvalidValue(f"VM '{spec.name}' already has that name")
    if view.resolve_vm(new_name) is not None:
        raise Conflict(f"A VM named '{new_name}' already exists")
    if spec.removing:
        raise Conflict(f"VM '{spec.name}' is being removed")
    where = running_on(view, spec.uuid)
    if spec.state not in STOPPED_STATES or where is not None:
        raise Conflict(f"VM '{spec.name}' must be stopped to be renamed (state {spec.state}"
                       + (f", running on {where}" if where else "") + "); stop it first")
    busy = volumes_in_requests(view)
    for pool, volume, new_volume in renames:
        check_volume_name(new_volume)
        if not view.cache.exists(view.paths.storage_volume(pool, volume)):
            raise NotFound(f"RBD volume {pool}/{volume} of VM '{spec.name}' not found")
        if view.cache.exists(view.paths.storage_volume(pool, new_volume)):
            raise Conflict(f"RBD volume {pool}/{new_volume} already exists; VM '{spec.name}' "
                           f"cannot rename its volume {pool}/{volume} to it")
        if (pool, volume) in busy:
            raise Conflict(f"RBD volume {pool}/{volume} is busy (storage request "
                           f"{busy[(pool, volume)]} is not finished); try again later")


async def rename_vm(handler: BaseHandler, spec: VmSpec, version: int, new_name: str) -> str:
    """Rename the VM whose spec is at `version` (the module docstring); the 200 message."""
    view = handler.ctx.view
    renames = volume_renames(spec, new_name)
    check_rename(view, spec, new_name, renames)
    old_name = spec.name
    done: list[tuple[str, str, str]] = []
    try:
        for pool, volume, new_volume in renames:
            await run_request(handler, "volume-modify",
                              {"pool": pool, "volume": volume, "name": new_volume})
            done.append((pool, volume, new_volume))
        moved = {f"{pool}/{volume}": f"{pool}/{new_volume}" for pool, volume, new_volume in done}
        spec.xml = renamed_domain_xml(spec.xml, new_name, moved)
        spec.name = new_name
        spec.info = parse_domain_xml(spec.xml, default_uuid=spec.uuid).to_api_fields()
        await handler.commit([Op.set(view.paths.vm(spec.uuid), spec.to_doc(), version),
                              Op.delete(view.paths.vm_name(old_name)),
                              Op.create(view.paths.vm_name(new_name), {"uuid": spec.uuid}),
                              *renamed_snapshot_ops(view, spec.uuid, new_name, moved)])
    except PvcError as exc:
        if not done:
            raise
        raise type(exc)(f"{exc}; {await _rename_back(handler, done)}") from exc
    volumes = "".join(f"; RBD volume {p}/{v} is now {p}/{n}" for p, v, n in done)
    return f"Renamed VM '{old_name}' to '{new_name}'{volumes}"


async def _rename_back(handler: BaseHandler, done: list[tuple[str, str, str]]) -> str:
    failed = []
    for pool, volume, new_volume in reversed(done):
        try:
            await run_request(handler, "volume-modify",
                              {"pool": pool, "volume": new_volume, "name": volume})
        except PvcError as exc:
            failed.append(f"{pool}/{new_volume} (should be {volume}): {exc}")
    if failed:
        return "renaming the volumes back FAILED for " + "; ".join(failed)
    return "the volumes renamed so far were renamed back; the VM keeps its name"


def running_on(view: ClusterView, uuid: str) -> str | None:
    """Where the VM runs: its status, else a node whose libvirt listed it as running at its
    last keepalive."""
    status = view.vm_status(uuid)
    if status is not None and status.state in RUNNING_STATES:
        return status.node or "its node"
    for node in view.node_names():
        node_status = view.node_status(node)
        if node_status is not None and uuid in node_status.stats.running_domains:
            return node
    return None


def volumes_in_requests(view: ClusterView) -> dict[tuple[str, str], str]:
    """(pool, volume) → id of each unfinished storage request that names a volume."""
    busy = {}
    for request_id in view.cache.children(view.paths.storage_requests):
        doc = view.cache.get(view.paths.storage_request(request_id))
        if not isinstance(doc, dict):
            continue
        request = from_dict(StorageRequest, doc)
        pool, volume = request.args.get("pool"), request.args.get("volume")
        if not request.finished_state and pool and volume:
            busy[(str(pool), str(volume))] = request_id
    return busy
