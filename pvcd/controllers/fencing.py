"""Dead-node detection, fencing and VM recovery: the cluster's high availability.

Runs on every coordinator but acts only on the primary, one node at a time (one worker, plus
the cluster-wide ephemeral `coordinator/fence-lock`, so a primary change in the middle of a
fence cannot start a second one).

A node is *suspect* when its ephemeral `alive` znode is gone or its keepalive is late; it is
*dead* when its keepalive is older than `keepalive_interval x dead_threshold` (a hung daemon
keeps its session but stops its keepalive, so both failure kinds are caught). A dead node is
fenced as this coordinator's configuration says (`fencing.targets`: IPMI, its own watchdog, or
the lab's process killer), never as the node's record says. Only after the
fence is **confirmed** are its VMs started elsewhere, within their `node_limit`; one with
nowhere to go stays there shut down with `node_autostart`, so the node's `ready` starts it
(extensions.md §6.2); a failed fence leaves them alone (policy
`fencing.on_fence_failure: none`, the default) and is visible in the node's `fence_state`.
Maintenance mode suspends all of this.

Races named: (1) the node comes back while we decide: every write to its status is a
compare-and-set on the version we decided on, so its own fresh report wins and we re-check.
(2) the fenced node comes back: its VMs were reassigned before it could start again, and its
VM controller never starts a VM whose spec (read from ZooKeeper itself) names another node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pvcd.controllers.base import DONE, Result
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound
from pvcd.domain.moves import Move, reassign
from pvcd.domain.placement import select_target_node
from pvcd.domain.records import FenceRecord, NodeSpec, NodeStatus, VmSpec, from_dict
from pvcd.domain.states import PROVISION_VM_STATE, STOPPED_VM_STATES
from pvcd.domain.vm_meta import node_limit_of
from pvcd.drivers.fence import FenceDriver, FenceTarget, fence_driver
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.state.vm_move import MoveBasis, move_vm

log = logging.getLogger(__name__)


class FencingController:
    def __init__(self, name: str, view: ClusterView, store: Store,
                 is_primary: Callable[[], bool], keepalive_interval: float,
                 dead_threshold: int, fence_timeout: float, attempts: int,
                 on_failure: str, drivers: Callable[[str], FenceDriver] = fence_driver,
                 clock: Callable[[], float] = time.time,
                 targets: Mapping[str, FenceTarget] | None = None) -> None:
        """`targets`: how to fence each node, from this coordinator's own configuration (a
        node without one cannot be fenced); never from the node's record in ZooKeeper."""
        self.name = name
        self.targets: Mapping[str, FenceTarget] = targets if targets is not None else {}
        self.view = view
        self.store = store
        self.is_primary = is_primary
        self.dead_after = keepalive_interval * dead_threshold
        self.fence_timeout = fence_timeout
        self.attempts = attempts
        self.on_failure = on_failure
        self.drivers = drivers
        self.clock = clock
        self.fences = 0  # counters for metrics
        self.failed_fences = 0

    def keys(self) -> list[str]:
        if not self.is_primary():  # only the primary acts: no resync of every node elsewhere
            return []
        return [f"node/{n}" for n in self.view.node_names() if n != self.name]

    @staticmethod
    def key_of_node_path(nodes: str, path: str) -> str | None:
        """The key a change below `nodes` (the nodes' prefix, with its slash) concerns: a
        node's record, its status (the keepalive) or its `alive`; not its health rounds."""
        node, _, rest = path[len(nodes):].partition("/")
        return f"node/{node}" if node and rest in ("", "status", "alive") else None

    def reconcile(self, key: str) -> Result:
        node = key.split("/", 1)[1]
        if node == self.name or not self.is_primary():
            return DONE
        if self.view.maintenance():
            return Result(requeue_after=1.0)
        entry = self.view.cache.entry(self.view.paths.node_status(node))
        if entry is None:
            return DONE
        status = from_dict(NodeStatus, entry.doc)
        state = status.daemon_state
        record = self._record(node)
        if state in ("stop", "shutdown", "init"):
            return DONE  # a clean stop is not a death
        if state == "fenced":
            if record is not None and record.state == "fenced" and not record.recovered:
                return self._recover(node, record)
            return DONE
        age = self.clock() - status.keepalive
        if age < self.dead_after:
            if record is not None:  # it came back: the old record is history
                self._delete_record(node)
            return Result(requeue_after=max(0.05, self.dead_after - age + 0.05))
        if record is not None and record.state == "failed" and record.attempts >= self.attempts:
            if self.on_failure == "recover" and not record.recovered:
                log.warning("event=recover-after-failed-fence node=%s policy=recover", node)
                return self._recover(node, record)
            return Result(requeue_after=5.0)
        return self._fence(node, entry.version, record)

    def _fence(self, node: str, status_version: int, record: FenceRecord | None) -> Result:
        attempts = (record.attempts if record is not None else 0) + 1
        if not self._take_lock(node):
            return Result(requeue_after=1.0)
        try:
            fencing = FenceRecord("fencing", attempts, "fencing in progress", self.clock())
            try:
                self._write_record(node, fencing)
                self._set_daemon_state(node, "dead", status_version)
            except Conflict as exc:
                log.info("event=fence-deferred node=%s reason=%s", node, exc)
                return Result(requeue_after=0.1)  # it reported meanwhile: look again
            target = self.targets.get(node)
            log.warning("event=fence-start node=%s driver=%s attempt=%d", node,
                        target.driver if target else "none", attempts)
            started = time.monotonic()
            try:
                if target is None:
                    raise InvalidValue(f"node {node} has no fence target in this "
                                       "coordinator's configuration (fencing.targets)")
                self.drivers(target.driver).fence(target, self.fence_timeout)
            except (BackendError, InvalidValue) as exc:
                log.error("event=fence-failed node=%s attempt=%d reason=%s", node, attempts, exc)
                self._write_record(node, FenceRecord("failed", attempts, str(exc), self.clock()))
                self.failed_fences += 1  # counted once its record says so (metrics agree)
                return Result(requeue_after=1.0)
            log.warning("event=fence-confirmed node=%s seconds=%.3f", node,
                        time.monotonic() - started)
            done = FenceRecord("fenced", attempts, "fenced; VMs being recovered", self.clock())
            self._write_record(node, done)
            self.fences += 1
            self._mark_fenced(node)
            return self._recover(node, done)
        finally:
            self._release_lock()

    def _recover(self, node: str, record: FenceRecord) -> Result:
        """Start every VM of `node` elsewhere (by its selector, where memory allows)."""
        pending = 0
        for uuid in self.view.vm_uuids():
            spec = self.view.vm_spec(uuid)
            if spec is None or spec.state == PROVISION_VM_STATE:
                continue  # (a VM being provisioned is placed again by its task at the end)
            migration_from_dead = spec.migration is not None and spec.migration.source == node
            if spec.node != node and not migration_from_dead:
                continue
            if spec.node == node and spec.node_autostart and spec.state in STOPPED_VM_STATES:
                continue  # (shut down for want of a target: it waits for the node's `ready`)
            try:
                target = spec.node if spec.node != node else select_target_node(
                    self.view.node_loads(), spec.node_selector, exclude=[node],
                    memory=spec.memory if spec.state not in STOPPED_VM_STATES else 0,
                    limit=node_limit_of(spec))
            except InvalidValue as exc:
                if spec.node == node and self._wait_for_node(uuid, node, str(exc)):
                    continue
                log.error("event=recover-no-target vm=%s node=%s reason=%s", uuid, node, exc)
                pending += 1
                continue
            try:
                move_vm(self.store, self.view.paths, uuid, _recovery(node, target))
            except NotFound:
                continue  # removed meanwhile: nothing to recover
            log.warning("event=vm-recovered vm=%s name=%s from=%s to=%s", uuid, spec.name,
                        node, target)
        if pending:
            return Result(requeue_after=2.0)
        record.recovered = True
        record.message = f"{record.message.split(';')[0]}; VMs recovered"
        self._write_record(node, record)
        return DONE

    # records and status
    def _wait_for_node(self, uuid: str, node: str, reason: str) -> bool:
        """A VM of the fenced `node` with nowhere to go (extensions.md §6.2, as a flush does):
        it stays there shut down, with `node_autostart`, so the node's `ready` starts it
        again. False when it is not assigned there any more (decided again)."""
        def change(doc: Any) -> Any:
            spec = from_dict(VmSpec, doc)
            if spec.node != node:
                return None
            if spec.state not in STOPPED_VM_STATES:
                spec.state, spec.node_autostart = "shutdown", True
                spec.state_request += 1
            return spec.to_doc()

        try:
            self.store.update(self.view.paths.vm(uuid), change)
        except Conflict:  # removed, or changing meanwhile: decided again on the next pass
            return False
        log.warning("event=recover-no-target vm=%s node=%s action=autostart-on-ready "
                    "reason=%s", uuid, node, reason)
        return True

    def _record(self, node: str) -> FenceRecord | None:
        doc = self.view.cache.get(self.view.paths.fence_record(node))
        return None if doc is None else from_dict(FenceRecord, doc)

    def _write_record(self, node: str, record: FenceRecord) -> None:
        path = self.view.paths.fence_record(node)
        entry = self.view.cache.entry(path)
        op = Op.create(path, record.to_doc()) if entry is None else \
            Op.set(path, record.to_doc(), entry.version)
        self.store.commit([op])

    def _delete_record(self, node: str) -> None:
        entry = self.view.cache.entry(self.view.paths.fence_record(node))
        if entry is not None:
            try:
                self.store.commit([Op.delete(self.view.paths.fence_record(node),
                                             entry.version)])
            except Conflict:
                pass

    def _set_daemon_state(self, node: str, state: str, version: int) -> None:
        path = self.view.paths.node_status(node)
        entry = self.view.cache.entry(path)
        if entry is None or entry.version != version:
            raise Conflict(f"{path} changed")
        status = from_dict(NodeStatus, entry.doc)
        status.daemon_state = state
        self.store.commit([Op.set(path, status.to_doc(), version)])

    def _mark_fenced(self, node: str) -> None:
        """The node is off: it reports `fenced`/`flushed`, and is flushed when it returns."""

        def status(doc: Any) -> Any:
            status = from_dict(NodeStatus, doc)
            status.daemon_state, status.domain_state = "fenced", "flushed"
            return status.to_doc()

        def spec(doc: Any) -> Any:
            spec = from_dict(NodeSpec, {"name": node, **(doc or {})})
            spec.domain_state = "flush"
            spec.domain_request += 1
            return spec.to_doc()

        self.store.update(self.view.paths.node_status(node), status)
        self.store.update(self.view.paths.node(node), spec)

    def _take_lock(self, node: str) -> bool:
        try:
            self.store.commit([Op.create(self.view.paths.fence_lock,
                                         {"node": self.name, "target": node}, ephemeral=True)])
            return True
        except Conflict:
            return False

    def _release_lock(self) -> None:
        try:
            self.store.commit([Op.delete(self.view.paths.fence_lock)])
        except (Conflict, BackendError):
            pass


def _recovery(dead: str, target: str) -> Callable[[MoveBasis], VmSpec | None]:
    """The move of a VM off `dead` (fenced: it hands nothing over) to `target`."""
    def decide(basis: MoveBasis) -> VmSpec | None:
        new = reassign(basis.spec, basis.status, target, Move.RECOVER, dead=dead,
                       owner=basis.owner)
        return None if new == basis.spec else new

    return decide
