"""The transaction that forgets a removed VM, in one place for its two writers.

The VM's node commits it once it has undefined the domain (`pvcd.controllers.vm_removal`); the
API commits it itself only when no node can hold the guest any more (the VM's node is not
running and no disk is removed, or the node is fenced). Either way the spec, its status and its
name index go together with the creation of the storage requests that remove the disks, so a
removed VM never leaves a volume behind that nobody is asked to remove.
"""

from __future__ import annotations

from pvcd.domain.records import VmRemoval, VmSpec
from pvcd.state.store import Op
from pvcd.state.view import ClusterView


def forget_vm_ops(view: ClusterView, spec: VmSpec, version: int, removal: VmRemoval,
                  now: float) -> list[Op]:
    """Delete the VM's records (its snapshot records, guest hold, status, claim and console
    buffer, the spec compare-and-set at `version`) and create `removal`'s volume requests. A
    child written meanwhile makes the spec's delete fail ("has children"), and the writer
    retries on fresh state. The RBD snapshots stay on kept volumes and go with removed ones."""
    paths = view.paths
    ops: list[Op] = []
    snapshots = paths.vm_snapshots(spec.uuid)  # its snapshot records (extensions.md §5.1)
    ops += [Op.delete(paths.vm_snapshot(spec.uuid, name))
            for name in view.cache.children(snapshots)]
    for child in (snapshots, paths.vm_hold(spec.uuid), paths.vm_status(spec.uuid),
                  paths.vm_owner(spec.uuid), paths.vm_console(spec.uuid)):
        if view.cache.exists(child):
            ops.append(Op.delete(child))
    if view.vm_uuid_by_name(spec.name) == spec.uuid:
        ops.append(Op.delete(paths.vm_name(spec.name)))
    ops.append(Op.delete(paths.vm(spec.uuid), version))
    ops += [Op.create(paths.storage_request(request.id), request.to_doc())
            for request in removal.volume_requests(now)]
    return ops
