"""Flush and ready: moving a node's VMs off it, and back, one level-based step at a time.

The node controller calls `flush_step` / `ready_step` on every reconcile of a domain-state
change until it returns True; each call looks at the cluster as it is now, writes what is
missing (idempotently) and returns — no worker ever blocks waiting for a migration. A newer
request (ready during a flush) simply changes what the next step does.

Flush: every VM assigned to the node is reassigned by the move rule (`pvcd.domain.moves`) to
the node its `node_selector` picks among those within its `node_limit` with room for it. A VM
that should run but has nowhere to go (one node, a limit that names only this node, or no node
with the memory) is shut down cleanly where it is and gets `node_autostart`, so that the node's
`ready` starts it again (PVC's behaviour, extensions.md §6.2): a flush always completes, and a
host's shutdown never waits for a target that cannot exist. The node is flushed only when
libvirt itself runs none of the cluster's VMs there any more and no migration into or out of it
is in flight.

Ready: every VM whose `last_node` is the node comes back (when it fits), and every VM assigned
to the node with `node_autostart` is started, its `node_autostart` reset in the same write (it
acts once).
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from pvcd.domain.errors import Conflict, InvalidValue, NotFound
from pvcd.domain.moves import Move, migration_pending, reassign
from pvcd.domain.placement import select_target_node
from pvcd.domain.records import VmSpec, from_dict
from pvcd.domain.states import PROVISION_VM_STATE, STOPPED_VM_STATES
from pvcd.domain.vm_meta import node_limit_of
from pvcd.state.store import Store
from pvcd.state.view import ClusterView
from pvcd.state.vm_move import MoveBasis, move_vm

log = logging.getLogger(__name__)


def flush_step(view: ClusterView, store: Store, node: str, running: Collection[str]) -> bool:
    """One step of flushing `node`; True once nothing of the cluster runs there any more.
    `running`: the UUIDs libvirt runs on this node now."""
    settled = True
    for uuid in view.vm_uuids_on(node):  # (assigned here, or migrating away from here)
        spec, status = view.vm_spec(uuid), view.vm_status(uuid)
        if spec is None or spec.removing:
            continue  # (one being removed is taken down where it is: `running` tells)
        if spec.state == PROVISION_VM_STATE:
            continue  # runs nowhere yet; its task places it again if its node is not ready
        if migration_pending(spec, status):
            assert spec.migration is not None
            if node in (spec.node, spec.migration.source):
                settled = False  # on its way in or out: look again once it has arrived
            continue
        should_run = spec.state not in STOPPED_VM_STATES
        if spec.node != node or (spec.node_autostart and not should_run):
            continue  # (shut down here for want of a target: it waits here for `ready`)
        try:
            target = select_target_node(view.node_loads(), spec.node_selector, exclude=[node],
                                        memory=spec.memory if should_run else 0,
                                        limit=node_limit_of(spec))
        except InvalidValue as exc:
            if should_run:
                _shut_down_for_flush(view, store, spec, node, str(exc))
            continue  # a stopped VM with nowhere to go stays (it runs nowhere)
        _move(view, store, uuid, target, Move.FLUSH)
        settled = False
    ours = set(view.vm_uuids())
    return settled and not ours.intersection(running)


def ready_step(view: ClusterView, store: Store, node: str) -> bool:
    """One step of bringing `node`'s VMs back; True once none is on its way."""
    settled = True
    for uuid in view.vm_uuids():
        spec, status = view.vm_spec(uuid), view.vm_status(uuid)
        if spec is None or spec.state == PROVISION_VM_STATE:
            continue
        if migration_pending(spec, status):
            assert spec.migration is not None
            if node in (spec.node, spec.migration.source):
                settled = False
            continue
        if spec.node == node and spec.node_autostart:
            _autostart(view, store, uuid, node)
        if spec.last_node != node or spec.node == node:
            continue
        memory = spec.memory if spec.state not in STOPPED_VM_STATES else 0
        load = next((n for n in view.node_loads() if n.name == node), None)
        if load is None or not load.fits(memory):  # (it is `unflush`, not `ready`, until done)
            log.warning("event=ready-vm-stays vm=%s node=%s reason=no room for %d MiB", uuid,
                        node, memory)
            continue
        _move(view, store, uuid, node, Move.RESTORE)
        settled = False
    return settled


def _move(view: ClusterView, store: Store, uuid: str, target: str, why: Move) -> None:
    def decide(basis: MoveBasis) -> VmSpec | None:
        if basis.spec.node == target:
            return None
        return reassign(basis.spec, basis.status, target, why, owner=basis.owner)

    try:
        moved = move_vm(store, view.paths, uuid, decide)
    except (Conflict, NotFound) as exc:  # a migration began meanwhile: the next step looks again
        log.info("event=flush-move-deferred vm=%s reason=%s", uuid, exc)
        return
    if moved is not None:
        log.info("event=vm-reassigned vm=%s to=%s why=%s", uuid, target, why.value)


def _shut_down_for_flush(view: ClusterView, store: Store, spec: VmSpec, node: str,
                         reason: str) -> None:
    def change(doc: object) -> object:
        current = from_dict(VmSpec, doc)
        if current.node != node or current.state in STOPPED_VM_STATES:
            return None
        current.state, current.node_autostart = "shutdown", True
        current.state_request += 1
        return current.to_doc()

    store.update(view.paths.vm(spec.uuid), change)
    log.warning("event=flush-no-target vm=%s name=%s node=%s action=shutdown reason=%s",
                spec.uuid, spec.name, node, reason)


def _autostart(view: ClusterView, store: Store, uuid: str, node: str) -> None:
    def change(doc: object) -> object:
        current = from_dict(VmSpec, doc)
        if current.node != node or not current.node_autostart:
            return None
        current.node_autostart = False
        if current.state != "start":
            current.state = "start"
            current.state_request += 1
        return current.to_doc()

    store.update(view.paths.vm(uuid), change)
    log.info("event=vm-autostarted vm=%s node=%s", uuid, node)
