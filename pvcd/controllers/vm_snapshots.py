"""The VM snapshot tasks (extensions.md §5.1, §5.2): `vm.create_snapshot`,
`vm.remove_snapshot`, `vm.rollback_snapshot`, run by the primary.

`VmSnapshotSteps` holds the steps, so a backup task can take a snapshot (`take`, e.g.
`backup_<x>` with `auto` consistency) and remove it (`remove`) inside its own task, without a
child task on its own VM (spec §1.2):
- **take**: ask the VM's node to hold the guest still (`vms/<uuid>/hold`, carried out by
  `pvcd.controllers.guest_hold`; artifact `guest-hold`), wait for its report, snapshot every
  writable RBD disk under one name through storage requests (artifact `rbd-snapshot` each),
  let the guest go (always: a `finally`, and the artifact's undo if this daemon dies), then
  write the record `vms/<uuid>/snapshots/<name>` last, so a record always means a snapshot
  that was completely taken;
- **remove**: the RBD snapshots, then the record; one that cannot go (it has clones) fails the
  task and the record keeps only what remains;
- **rollback**: the VM stopped and running nowhere, every volume there; each disk rolled back,
  then the snapshot's XML (with the VM's current name) written to the spec. A failure part-way
  leaves the VM stopped and names the disks already rolled back.

Races named: the VM may start or migrate between the API's checks and the task; `take` asks
whichever node runs it (the hold is a document every node's controller reads, only the
running one acts), and a rollback re-checks the state right before the first disk.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from pvcd.controllers.guest_hold import EXPIRED, FAILED, HOLDING
from pvcd.controllers.tasks import TaskContext, TaskKind, TaskOutcome
from pvcd.controllers.tasks.storage_steps import StorageSteps
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound, PvcError
from pvcd.domain.records import VmSpec, from_dict
from pvcd.domain.tasks import Artifact
from pvcd.domain.vm_snapshots import (
    CRASH_CONSISTENT,
    FROZEN,
    NOT_CONSISTENT,
    STOPPED,
    GuestHold,
    HeldGuest,
    VmSnapshot,
    rbd_snapshot_spec,
    split_rbd_snapshot,
)
from pvcd.state.request_size import check_request_size
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.state.vm_snapshots import (
    RUNNING_STATES,
    check_rollback,
    read_snapshot,
    snapshot_volumes,
)
from pvcd.vmxml import parse_domain_xml, renamed_domain_xml

CREATE, REMOVE, ROLLBACK = "vm.create_snapshot", "vm.remove_snapshot", "vm.rollback_snapshot"
HOLD_ARTIFACT, RBD_ARTIFACT = "guest-hold", "rbd-snapshot"
RELEASE_WAIT = 30.0  # seconds to wait for the node to report the guest let go
STORAGE_WAIT = 3600.0  # seconds a storage request of a snapshot task may take
WAKE_EVERY = 1.0


class VmSnapshotSteps:
    def __init__(self, view: ClusterView, store: Store, storage: StorageSteps,
                 freeze_timeout: float, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.store = store
        self.storage = storage
        self.freeze_timeout = freeze_timeout
        self.clock = clock
        self.monotonic = monotonic

    # the task kinds
    def kinds(self) -> list[TaskKind]:
        return [TaskKind(CREATE, self._create, self.undo),
                TaskKind(REMOVE, self._remove, self.undo),
                TaskKind(ROLLBACK, self._rollback, self.undo)]

    def _create(self, ctx: TaskContext) -> TaskOutcome:
        record = self.take(ctx, ctx.args["vm"], ctx.args["snapshot_name"],
                           ctx.args.get("consistency", "auto"))
        return TaskOutcome(f"Took snapshot '{record.name}' of VM '{ctx.args.get('name')}' "
                           f"({record.consistency}): {', '.join(record.rbd_snapshots)}",
                           {"name": record.name, "consistency": record.consistency,
                            "rbd_snapshots": record.rbd_snapshots})

    def _remove(self, ctx: TaskContext) -> TaskOutcome:
        name = ctx.args["snapshot_name"]
        removed = self.remove(ctx, ctx.args["vm"], name)
        return TaskOutcome(f"Removed snapshot '{name}' of VM '{ctx.args.get('name')}'",
                           {"name": name, "rbd_snapshots": removed})

    def _rollback(self, ctx: TaskContext) -> TaskOutcome:
        name = ctx.args["snapshot_name"]
        disks = self.rollback(ctx, ctx.args["vm"], name)
        return TaskOutcome(f"Rolled VM '{ctx.args.get('name')}' back to snapshot '{name}': "
                           f"{', '.join(disks)} and its XML",
                           {"name": name, "rolled_back": disks})

    def undo(self, artifact: Artifact) -> None:
        if artifact.kind == HOLD_ARTIFACT:
            uuid, _, task_id = artifact.ref.partition("/")
            self._drop_hold(uuid, task_id)
        elif artifact.kind == RBD_ARTIFACT:
            pool, volume, snapshot = split_rbd_snapshot(artifact.ref)
            if self.view.cache.exists(self.view.paths.storage_snapshot(pool, volume, snapshot)):
                self.storage.run("snapshot-remove", {"pool": pool, "volume": volume,
                                                     "snapshot": snapshot})

    # the steps
    def take(self, ctx: TaskContext, uuid: str, name: str, consistency: str) -> VmSnapshot:
        """Snapshot every writable RBD disk of VM `uuid` as `name` and record it."""
        spec = self._spec(uuid)
        volumes = snapshot_volumes(spec)
        if self.view.cache.exists(self.view.paths.vm_snapshot(uuid, name)):
            raise Conflict(f"VM '{spec.name}' already has a snapshot '{name}'")
        total = len(volumes) + 2
        recorded = NOT_CONSISTENT
        held = False
        try:
            if consistency != "none":
                ctx.progress(0, total, "holding the guest still")
                recorded = self._hold(ctx, uuid, consistency)
                held = recorded != STOPPED
            began = self.monotonic()
            taken = []
            for done, (pool, volume) in enumerate(volumes, start=1):
                ctx.progress(done, total, f"snapshot of {pool}/{volume}")
                self.storage.run("snapshot-add", {"pool": pool, "volume": volume,
                                                  "snapshot": name}, ctx.check,
                                 # frozen: no longer than the guest may stay frozen
                                 timeout=self.freeze_timeout if recorded == FROZEN
                                 else STORAGE_WAIT)
                taken.append(rbd_snapshot_spec(pool, volume, name))
                ctx.artifact(RBD_ARTIFACT, taken[-1])
            if recorded == FROZEN and (self.monotonic() - began > self.freeze_timeout or
                                       self._held(uuid, ctx.task_id).state == EXPIRED):
                raise BackendError(f"the snapshots took longer than the guest may stay frozen "
                                   f"(snapshot.freeze_timeout {self.freeze_timeout:g} s)")
        finally:
            if held or self.view.cache.exists(self.view.paths.vm_hold(uuid)):
                self._release(ctx, uuid)
        ctx.progress(total - 1, total, "recording the snapshot")
        spec = self._spec(uuid)  # the XML, metadata and tags as they are now
        record = VmSnapshot(name=name, timestamp=self.clock(), consistency=recorded,
                            xml=spec.xml, meta=_meta(spec), tags=[_tag(t) for t in spec.tags],
                            rbd_snapshots=taken)
        ops = []
        if not self.view.cache.exists(self.view.paths.vm_snapshots(uuid)):
            ops.append(Op.create(self.view.paths.vm_snapshots(uuid), {}))
        ops.append(Op.create(self.view.paths.vm_snapshot(uuid, name), record.to_doc()))
        check_request_size(ops, f"the record of snapshot '{name}'")
        self.store.commit(ops)
        ctx.progress(total, total, "done")
        return record

    def remove(self, ctx: TaskContext, uuid: str, name: str) -> list[str]:
        """Remove the snapshot's RBD snapshots, then its record; the RBD snapshots removed."""
        record = read_snapshot(self.view, uuid, name)
        remaining = list(record.rbd_snapshots)
        removed: list[str] = []
        for spec in record.rbd_snapshots:
            ctx.progress(len(removed), len(record.rbd_snapshots) + 1, f"removing {spec}")
            pool, volume, snapshot = split_rbd_snapshot(spec)
            try:
                if self.view.cache.exists(self.view.paths.storage_snapshot(pool, volume,
                                                                           snapshot)):
                    self.storage.run("snapshot-remove", {"pool": pool, "volume": volume,
                                                         "snapshot": snapshot}, ctx.check)
            except PvcError as exc:
                self._keep_record(uuid, name, remaining)
                raise type(exc)(f"could not remove {spec}: {exc}; the record of snapshot "
                                f"'{name}' keeps {', '.join(remaining)}") from exc
            remaining.remove(spec)
            removed.append(spec)
        path = self.view.paths.vm_snapshot(uuid, name)
        entry = self.view.cache.entry(path)
        if entry is not None:
            self.store.commit([Op.delete(path, entry.version)])
        return removed

    def rollback(self, ctx: TaskContext, uuid: str, name: str) -> list[str]:
        """Roll every disk back to the snapshot, then write its XML; the disks rolled back."""
        record = read_snapshot(self.view, uuid, name)
        spec = self._spec(uuid)
        check_rollback(self.view, spec, record)
        done: list[str] = []
        total = len(record.rbd_snapshots) + 1
        for spec_text in record.rbd_snapshots:
            pool, volume, snapshot = split_rbd_snapshot(spec_text)
            ctx.progress(len(done), total, f"rolling {pool}/{volume} back")
            try:
                self.storage.run("snapshot-rollback", {"pool": pool, "volume": volume,
                                                       "snapshot": snapshot}, ctx.check)
            except PvcError as exc:
                raise type(exc)(f"rolling {pool}/{volume} back failed: {exc}; the VM stays "
                                "stopped; disks rolled back already: "
                                f"{', '.join(done) or 'none'}") from exc
            done.append(f"{pool}/{volume}")
        ctx.progress(len(done), total, "writing the snapshot's XML")
        self._write_xml(uuid, record, done)
        return done

    # holding the guest
    def _hold(self, ctx: TaskContext, uuid: str, consistency: str) -> str:
        """Ask the VM's node to hold the guest; the consistency it reached."""
        status = self.view.vm_status(uuid)
        if status is None or status.state not in RUNNING_STATES:
            return STOPPED
        ctx.artifact(HOLD_ARTIFACT, f"{uuid}/{ctx.task_id}")
        hold = GuestHold(task=ctx.task_id, mode=consistency, created=self.clock())
        self.store.commit([Op.create(self.view.paths.vm_hold(uuid), hold.to_doc())])
        held = self._wait(ctx, uuid, lambda h: h is not None and h.task == ctx.task_id
                          and h.state != HOLDING, self.freeze_timeout + 10.0,
                          f"node {status.node} did not report the guest held")
        assert held is not None
        if held.state == FAILED:
            raise BackendError(f"node {status.node} could not hold the guest ({consistency}): "
                               f"{held.message}")
        if held.state not in (FROZEN, CRASH_CONSISTENT, STOPPED):
            raise BackendError(f"node {status.node} reported the guest {held.state}: "
                               f"{held.message}")
        ctx.log(f"guest held on {status.node}: {held.state}")
        return held.state

    def _release(self, ctx: TaskContext, uuid: str) -> None:
        self._drop_hold(uuid, ctx.task_id)
        try:
            self._wait(ctx, uuid, lambda h: h is None or h.task != ctx.task_id, RELEASE_WAIT,
                       "the VM's node did not report the guest let go")
        except BackendError as exc:
            ctx.log(f"{exc} (it keeps trying)")

    def _drop_hold(self, uuid: str, task_id: str) -> None:
        path = self.view.paths.vm_hold(uuid)
        entry = self.view.cache.entry(path)
        if entry is None or not isinstance(entry.doc, dict) or entry.doc.get("task") != task_id:
            return
        try:
            self.store.commit([Op.delete(path, entry.version)])
        except NotFound:
            pass

    def _held(self, uuid: str, task_id: str) -> HeldGuest:
        status = self.view.vm_status(uuid)
        held = HeldGuest.from_doc(status.hold) if status is not None else None
        return held if held is not None else HeldGuest(task_id, "", "")

    def _wait(self, ctx: TaskContext, uuid: str,
              done: Callable[[HeldGuest | None], bool], timeout: float,
              why: str) -> HeldGuest | None:
        """Wait on the cache until the VM's hold report satisfies `done`."""
        path = self.view.paths.vm_status(uuid)
        wake = threading.Event()

        def changed(changed_path: str) -> None:
            if changed_path == path:
                wake.set()

        self.view.cache.subscribe(changed)
        try:
            deadline = self.monotonic() + timeout
            while True:
                status = self.view.vm_status(uuid)
                held = HeldGuest.from_doc(status.hold) if status is not None else None
                if done(held):
                    return held
                ctx.check()
                left = deadline - self.monotonic()
                if left <= 0:
                    raise BackendError(f"{why} within {timeout:g} s")
                wake.wait(min(left, WAKE_EVERY))
                wake.clear()
        finally:
            self.view.cache.unsubscribe(changed)

    # records
    def _spec(self, uuid: str) -> VmSpec:
        spec = self.view.vm_spec(uuid)
        if spec is None:
            raise NotFound(f"VM {uuid} not found")
        return spec

    def _keep_record(self, uuid: str, name: str, remaining: list[str]) -> None:
        path = self.view.paths.vm_snapshot(uuid, name)
        entry = self.view.cache.entry(path)
        if entry is None:
            return
        record = VmSnapshot.from_doc(entry.doc)
        record.rbd_snapshots = list(remaining)
        self.store.commit([Op.set(path, record.to_doc(), entry.version)])

    def _write_xml(self, uuid: str, record: VmSnapshot, done: list[str]) -> None:
        entry = self.view.cache.entry(self.view.paths.vm(uuid))
        if entry is None:
            raise NotFound(f"VM {uuid} was removed during the rollback")
        spec = from_dict(VmSpec, entry.doc)
        try:
            definition = parse_domain_xml(renamed_domain_xml(record.xml, spec.name, {}),
                                          default_uuid=uuid)
        except PvcError as exc:
            raise InvalidValue(f"the snapshot's XML cannot be used ({exc}); disks rolled back: "
                               f"{', '.join(done)}; the VM keeps its current XML") from exc
        spec.xml, spec.memory, spec.vcpu = definition.xml, definition.memory, definition.vcpu
        spec.info = definition.to_api_fields()
        self.store.commit([Op.set(self.view.paths.vm(uuid), spec.to_doc(), entry.version)])


def _meta(spec: VmSpec) -> dict[str, Any]:
    return {"node_limit": list(spec.node_limit), "node_selector": spec.node_selector,
            "node_autostart": spec.node_autostart, "migration_method": spec.migration_method,
            "migration_max_downtime": spec.migration_max_downtime, "profile": spec.profile}


def _tag(tag: Any) -> dict[str, Any]:
    return dataclasses.asdict(tag) if dataclasses.is_dataclass(tag) and \
        not isinstance(tag, type) else dict(tag)
