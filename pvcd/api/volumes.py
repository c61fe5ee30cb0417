"""Volume clone, resize and rename, snapshot rename and rollback (extensions.md §2.2-§2.4).

Everything the cache knows is checked before a storage request is written, so a refusal (510)
changes nothing: the named objects, the new names, whether a VM uses the volume (its XML names
`pool/volume`, also as `pool/volume@snapshot`), and whether the volume is busy with a task or an
unfinished storage request (a client never queues behind work it cannot see, spec §1.2). What
only Ceph knows is checked by the primary right before it acts, and fails the request, again
with nothing changed: the pool's room (`ceph df`, `pvcd.domain.pool_space`) and who has a volume
open (`rbd status`) before a rollback.

A clone and a rollback move data, so they may outlast the request timeout: they answer 200 when
done within it (`drivers.ceph.request_timeout`, or `api.task_wait` with `wait`), else 202 with
the request's id, which `/tasks/<id>` shows as the task `storage.<op>`.

Race named: a VM started between the check and the copy or rollback is not seen; the rollback's
watcher check on the primary still refuses it if the guest has opened the volume by then.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pvcd.api.routing import route
from pvcd.api.storage import (
    SnapshotHandler,
    SnapshotListHandler,
    StorageHandler,
    VolumeHandler,
    refuse_busy,
    request_failure,
    request_state,
    run_request,
    submit_request,
)
from pvcd.api.tasks import WAIT_FOR_TASK, task_location
from pvcd.api.values import accepts, flag, text, value
from pvcd.api.vm_rename import STOPPED_STATES, running_on
from pvcd.domain.errors import Conflict, InvalidValue, PvcError
from pvcd.domain.tasks import busy_task
from pvcd.drivers.ceph.values import check_snapshot_name, check_volume_name, parse_size
from pvcd.state.tasks import read_storage_tasks, read_tasks
from pvcd.state.view import ClusterView
from pvcd.vmxml import Disk, parse_domain_xml

FORCE = flag("force", "Pass the soft cap: allow the pool past 80 % of its capacity.")


@dataclass(frozen=True)
class VolumeUser:
    """A VM whose XML names a volume: its name, desired state, and where it runs (if it does)."""

    name: str
    state: str
    running_on: str | None
    uuid: str = ""

    @property
    def active(self) -> bool:
        """Not stopped or disabled, or a guest still runs."""
        return self.state not in STOPPED_STATES or self.running_on is not None

    def __str__(self) -> str:
        return f"{self.name} ({self.state}" + \
            (f", running on {self.running_on})" if self.running_on else ")")


def volume_users(view: ClusterView, pool: str, volume: str) -> list[VolumeUser]:
    """Every VM whose XML has an RBD disk on `pool/volume` (or on one of its snapshots)."""
    wanted = f"{pool}/{volume}"
    users = []
    for uuid in view.vm_uuids():
        try:
            spec = view.vm_spec(uuid)
            disks = parse_domain_xml(spec.xml, default_uuid=uuid).disks if spec else ()
        except (PvcError, TypeError, ValueError):  # written past the API: no node runs it
            continue
        if spec is None:
            continue
        if any(d.protocol == "rbd" and (d.name or "").split("@", 1)[0] == wanted
               for d in disks):
            users.append(VolumeUser(spec.name, spec.state, running_on(view, uuid), uuid))
    return sorted(users, key=lambda user: user.name)


def refuse_active_users(view: ClusterView, pool: str, volume: str, doing: str,
                        advice: str) -> None:
    """Conflict naming the VMs that use the volume and are not stopped (or still run)."""
    active = [str(user) for user in volume_users(view, pool, volume) if user.active]
    if active:
        raise Conflict(f"RBD volume {pool}/{volume} is used by VM {', '.join(active)}; "
                       f"{doing} {advice}; nothing was changed")


def refuse_busy_disks(view: ClusterView, vm_name: str, disks: Iterable[Disk]) -> None:
    """Conflict when an RBD volume among a VM's disks is busy with a task (an upload writes
    it): starting the VM now would give the guest a disk that is being written."""
    volumes = [f"volume:{(d.name or '').split('@', 1)[0]}" for d in disks
               if d.protocol == "rbd" and d.name]
    task = busy_task(volumes, [*read_tasks(view), *read_storage_tasks(view)])
    if task is not None:
        shared = ", ".join(sorted(set(volumes) & set(task.objects)))
        raise Conflict(f"VM '{vm_name}' cannot start now: its disk {shared} is busy with task "
                       f"{task.id} ({task.name}, {task.state}); try again when it has finished "
                       f"(GET {task_location(task.id)}); nothing was changed")


async def run_long_request(handler: StorageHandler, op: str, args: dict[str, Any]) -> None:
    """Write a storage request that moves data; answer 200 `{message, task_id, result}` when it
    is done within the timeout (`api.task_wait` with `wait`), 510 `{message, task_id}` when it
    failed, else 202 naming it."""
    request, timeout = await submit_request(handler, op, args)
    if handler.values[WAIT_FOR_TASK]:
        timeout = handler.ctx.task_wait
    result = await request_state(handler.ctx, request, timeout)
    if result.state == "done":
        handler.reply({"message": result.message, "task_id": result.id,
                       "result": result.result})
        return
    if result.state == "failed":  # as a failed task answers (spec §0.2), with its id
        handler.reply({"message": str(request_failure(result)), "task_id": result.id}, 510)
        return
    name = f"storage.{op}"
    handler.set_header("Location", task_location(request.id))
    handler.reply({"task_id": request.id, "task_name": name, "run_on": handler.ctx.node_name,
                   "message": f"Task {request.id} ({name}) is still running after {timeout:g} "
                              f"s; follow it at {task_location(request.id)}"}, 202)


CLONE_NEW_VOLUME = value("new_volume", "The copy's name: a free volume name in the same pool.",
                         check_volume_name, required=True)
CLONE_SNAPSHOT = value("snapshot", "Copy the volume as it was at this snapshot.",
                       check_snapshot_name)


class VolumeCloneHandler(StorageHandler):
    @accepts(CLONE_NEW_VOLUME, CLONE_SNAPSHOT, FORCE, WAIT_FOR_TASK)
    async def post(self, pool: str, volume: str) -> None:
        self.volume(pool, volume)
        new, snapshot = self.values[CLONE_NEW_VOLUME], self.values[CLONE_SNAPSHOT]
        if snapshot is not None:
            self.snapshot(pool, volume, snapshot)
        if self.view.cache.exists(self.view.paths.storage_volume(pool, new)):
            raise Conflict(f"RBD volume {pool}/{new} already exists; choose another new_volume")
        if snapshot is None:
            refuse_active_users(self.view, pool, volume, "a copy of it now would not be "
                                "consistent:", "take a snapshot and clone that (snapshot=...)")
        refuse_busy(self.view, pool, volume)
        args: dict[str, Any] = {"pool": pool, "volume": volume, "new_volume": new,
                                "force": self.values[FORCE]}
        if snapshot is not None:
            args["snapshot"] = snapshot
        await run_long_request(self, "volume-clone", args)


NAME = text("name", "A new name.")
NEW_NAME = text("new_name", "A new name (PVC 1.0's spelling of name).")
SIZE = value("size", "A new size: bytes, or with a K/M/G/T suffix (binary); shrinking needs "
             "allow_shrink.", parse_size)
NEW_SIZE = value("new_size", "A new size (PVC 1.0's spelling of size).", parse_size)
ALLOW_SHRINK = flag("allow_shrink", "Allow a size below the current one (destroys data).")


class VolumeChangeHandler(VolumeHandler):
    """`PUT`: resize and/or rename (resize first), with PVC 1.0's `new_size`/`new_name`."""

    def aliased(self, one: Any, other: Any, what: str) -> Any:
        a, b = self.values[one], self.values[other]
        if a is not None and b is not None and a != b:
            raise InvalidValue(f"'{one.name}' and '{other.name}' are two spellings of the "
                               f"{what} and were given different values; give one of them")
        return a if a is not None else b

    @accepts(NAME, NEW_NAME, SIZE, NEW_SIZE, ALLOW_SHRINK, FORCE)
    async def put(self, pool: str, volume: str) -> None:
        doc = self.volume(pool, volume)
        name = self.aliased(NAME, NEW_NAME, "new name")
        size = self.aliased(SIZE, NEW_SIZE, "new size")
        if name is None and size is None:
            raise InvalidValue("give 'name' or 'new_name' (to rename the volume) and/or 'size' "
                               "or 'new_size' (to resize it)")
        args: dict[str, Any] = {"pool": pool, "volume": volume}
        if name is not None and name != volume:
            args["name"] = check_volume_name(name)
            if self.view.cache.exists(self.view.paths.storage_volume(pool, name)):
                raise Conflict(f"RBD volume {pool}/{name} already exists")
            users = volume_users(self.view, pool, volume)
            if users:
                raise Conflict(f"RBD volume {pool}/{volume} is named in the XML of VM "
                               f"{', '.join(u.name for u in users)}; rename the VM "
                               "(POST /vm/<vm>/rename) or edit its XML instead; nothing was "
                               "changed")
        if size is not None:
            current = (doc.get("stats") or {}).get("size")
            allow_shrink = self.values[ALLOW_SHRINK]
            if isinstance(current, int) and size < current:
                if not allow_shrink:
                    raise InvalidValue(f"RBD volume {pool}/{volume} is {current} bytes; "
                                       f"shrinking it to {size} bytes would destroy the data "
                                       "beyond that size (add 'allow_shrink' to do it anyway)")
                refuse_active_users(self.view, pool, volume, "shrinking it under a running "
                                    "guest would cut off its disk:", "stop the VM first")
            args.update(size=size, allow_shrink=allow_shrink, force=self.values[FORCE])
        refuse_busy(self.view, pool, volume)
        grown = size is not None and size > ((doc.get("stats") or {}).get("size") or 0)
        running = [u for u in volume_users(self.view, pool, volume) if u.running_on] \
            if grown else []
        request = await run_request(self, "volume-modify", args)
        told = [await self.tell_guest(user, args.get("name", volume), pool, int(size or 0))
                for user in running]
        self.message(request.message + "".join(f"; {line}" for line in told))

    async def tell_guest(self, user: VolumeUser, volume: str, pool: str, size: int) -> str:
        """Have the node running `user` tell its guest the disk grew (spec §2.3): what
        happened, for the answer's message (the resize itself is done either way)."""
        if user.running_on not in self.view.node_names():
            return (f"VM {user.name} runs with it, but on which node is not known, so its "
                    "guest was NOT told: restart the VM, or rescan the disk in the guest")
        assert user.running_on is not None
        try:
            await run_request(self, "vm-disk-resize", {
                "vm": user.uuid, "pool": pool, "volume": volume, "size": size},
                target=user.running_on)
        except PvcError as exc:
            return (f"VM {user.name} runs with it on {user.running_on} and its guest was NOT "
                    f"told ({exc}): restart the VM, or rescan the disk in the guest")
        return f"VM {user.name} runs with it on {user.running_on} and its guest was told"


SNAPSHOT_NEW_NAME = value("new_name", "The snapshot's new name.", check_snapshot_name,
                          required=True)


class SnapshotChangeHandler(SnapshotHandler):
    """`PUT`: rename a snapshot; `POST` (PVC 1.0's element form): take it."""

    @accepts(SNAPSHOT_NEW_NAME)
    async def put(self, pool: str, volume: str, snapshot: str) -> None:
        self.snapshot(pool, volume, snapshot)
        new = self.values[SNAPSHOT_NEW_NAME]
        if new == snapshot:
            raise InvalidValue(f"RBD snapshot {pool}/{volume}@{snapshot} already has that name")
        if self.view.cache.exists(self.view.paths.storage_snapshot(pool, volume, new)):
            raise Conflict(f"RBD snapshot {pool}/{volume}@{new} already exists")
        refuse_busy(self.view, pool, volume)
        request = await run_request(self, "snapshot-rename", {
            "pool": pool, "volume": volume, "snapshot": snapshot, "new_name": new})
        self.message(request.message)

    async def post(self, pool: str, volume: str, snapshot: str) -> None:
        await self.take_snapshot(pool, volume, snapshot)


class SnapshotRollbackHandler(StorageHandler):
    @accepts(WAIT_FOR_TASK)
    async def post(self, pool: str, volume: str, snapshot: str) -> None:
        self.snapshot(pool, volume, snapshot)
        refuse_active_users(self.view, pool, volume, "its disk would change under it:",
                            "stop the VM first")
        refuse_busy(self.view, pool, volume)
        await run_long_request(self, "snapshot-rollback",
                               {"pool": pool, "volume": volume, "snapshot": snapshot})


ROUTES = [
    route("/storage/ceph/volume/snapshot/<pool>/<volume>/<snapshot>", SnapshotChangeHandler),
    route("/storage/ceph/volume/snapshot/<pool>/<volume>/<snapshot>/rollback",
          SnapshotRollbackHandler),
    route("/storage/ceph/volume/<pool>/<volume>", VolumeChangeHandler),
    route("/storage/ceph/volume/<pool>/<volume>/clone", VolumeCloneHandler),
    # PVC 1.0's spelling of the snapshot paths (extensions.md §2.4)
    route("/storage/ceph/snapshot", SnapshotListHandler),
    route("/storage/ceph/snapshot/<pool>/<volume>/<snapshot>", SnapshotChangeHandler),
    route("/storage/ceph/snapshot/<pool>/<volume>/<snapshot>/rollback",
          SnapshotRollbackHandler),
]
