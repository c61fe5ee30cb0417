"""Reading a VM's snapshot records from the cache, and the checks that both the API (before a
task is created) and the snapshot tasks (right before they act) make (extensions.md §5.1, §5.2).
"""

from __future__ import annotations

from typing import Any

from pvcd.domain.errors import Conflict, InvalidValue, NotFound, PvcError
from pvcd.domain.records import VmSpec
from pvcd.domain.vm_snapshots import VmSnapshot, rbd_snapshot_spec, split_rbd_snapshot
from pvcd.state.store import Op
from pvcd.state.view import ClusterView
from pvcd.vmxml import parse_domain_xml, renamed_domain_xml

STOPPED_STATES = ("stop", "disable")  # the desired states in which a VM may be rolled back
RUNNING_STATES = ("running", "migrating", "shutting-down")  # observed: a guest exists


def snapshot_volumes(spec: VmSpec) -> list[tuple[str, str]]:
    """(pool, volume) of every writable RBD disk of the VM (CD-ROMs and read-only disks left
    out); InvalidValue when it has none, or a writable disk that is not RBD."""
    disks = [d for d in parse_domain_xml(spec.xml, default_uuid=spec.uuid).disks if d.writable]
    other = [d.name or d.dev or "?" for d in disks if d.protocol != "rbd"]
    if other:
        raise InvalidValue(f"VM '{spec.name}' has writable disks that are not RBD volumes "
                           f"({', '.join(other)}), which a VM snapshot cannot cover")
    volumes: list[tuple[str, str]] = []
    for disk in disks:
        pool, _, volume = (disk.name or "").partition("/")
        if "@" in volume or not pool or not volume:
            raise InvalidValue(f"VM '{spec.name}' disk {disk.name!r} is not a writable RBD "
                               "volume 'pool/volume'")
        if (pool, volume) not in volumes:
            volumes.append((pool, volume))
    if not volumes:
        raise InvalidValue(f"VM '{spec.name}' has no writable RBD disk to snapshot")
    return volumes


def read_snapshots(view: ClusterView, uuid: str) -> list[VmSnapshot]:
    """The VM's readable snapshot records, oldest first (a malformed one is left out)."""
    records = []
    for name in view.cache.children(view.paths.vm_snapshots(uuid)):
        try:
            records.append(VmSnapshot.from_doc(
                view.cache.get(view.paths.vm_snapshot(uuid, name))))
        except InvalidValue:
            continue
    return sorted(records, key=lambda r: (r.timestamp, r.name))


def read_snapshot(view: ClusterView, uuid: str, name: str) -> VmSnapshot:
    """The record, or NotFound; InvalidValue for a malformed one."""
    doc = view.cache.get(view.paths.vm_snapshot(uuid, name))
    if doc is None:
        raise NotFound(f"the VM has no snapshot '{name}'")
    return VmSnapshot.from_doc(doc)


def check_rollback(view: ClusterView, spec: VmSpec, record: VmSnapshot) -> None:
    """Conflict unless the VM is stopped and runs nowhere; NotFound unless every volume of the
    snapshot (and its RBD snapshot) is still there."""
    status = view.vm_status(spec.uuid)
    where = status.node if status is not None and status.state in RUNNING_STATES else None
    if spec.state not in STOPPED_STATES or where is not None:
        raise Conflict(f"VM '{spec.name}' must be stopped (stop or disable) and running nowhere "
                       f"to be rolled back (state {spec.state}"
                       + (f", running on {where or 'its node'}" if where else "") + ")")
    for pool, volume in record.volumes():
        if not view.cache.exists(view.paths.storage_volume(pool, volume)):
            raise NotFound(f"RBD volume {pool}/{volume} of snapshot '{record.name}' no longer "
                           "exists")
        if not view.cache.exists(view.paths.storage_snapshot(pool, volume, record.name)):
            raise NotFound(f"RBD snapshot {pool}/{volume}@{record.name} no longer exists")


def snapshot_list(view: ClusterView, uuid: str, current_xml: str, now: float
                  ) -> list[dict[str, Any]]:
    """The VM object's `snapshots` (extensions.md §5.1), oldest first."""
    return [record.summary(current_xml, now) for record in read_snapshots(view, uuid)]


def renamed_snapshot_ops(view: ClusterView, uuid: str, new_name: str,
                         volumes: dict[str, str]) -> list[Op]:
    """The writes that keep the VM's snapshot records true after a rename (extensions.md
    §11.1): RBD snapshots move with their volumes (`volumes`: "pool/volume" → "pool/new"),
    and each record's XML gets the new `<name>` and disk sources."""
    ops = []
    for name in view.cache.children(view.paths.vm_snapshots(uuid)):
        path = view.paths.vm_snapshot(uuid, name)
        entry = view.cache.entry(path)
        try:
            record = VmSnapshot.from_doc(entry.doc if entry is not None else None)
        except InvalidValue:
            continue  # unreadable: never acted on anyway
        assert entry is not None
        moved = []
        for spec in record.rbd_snapshots:
            pool, volume, snapshot = split_rbd_snapshot(spec)
            new_pool, _, new_volume = volumes.get(f"{pool}/{volume}",
                                                  f"{pool}/{volume}").partition("/")
            moved.append(rbd_snapshot_spec(new_pool, new_volume, snapshot))
        record.rbd_snapshots = moved
        try:
            record.xml = renamed_domain_xml(record.xml, new_name, volumes)
        except PvcError:
            pass  # an XML the parser refuses stays as it was (a rollback refuses it too)
        ops.append(Op.set(path, record.to_doc(), entry.version))
    return ops
