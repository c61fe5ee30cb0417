"""Storage (Ceph) endpoints: status, df, cluster flags, OSDs, pools, volumes, snapshots.

Reads come from the cache: ZooKeeper's mirror of what Ceph confirmed, refreshed by the primary
(`pvcd.controllers.storage`). A write is validated completely first (names, sizes, PG counts,
flags, weights, the objects it names, `yes_i_really_mean_it`): a bad value answers 510 and
nothing reaches Ceph. Then the handler writes a storage request and waits for its result, as the
manual requires, without blocking the event loop (`pvcd.api.waiting` wakes it from the cache's
change notifications). If the request does not finish within `drivers.ceph.request_timeout` the
answer is 510 saying so and naming the request, which keeps going and stays visible at
`/storage/ceph/request/<id>` (a pvcd addition).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from pvcd.api.base import ApiContext, BaseHandler
from pvcd.api.routing import route
from pvcd.api.tasks import task_location
from pvcd.api.values import accepts, choice, flag, limit, text, value
from pvcd.api.waiting import wait_for_mirror, wait_for_request
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound, PvcError
from pvcd.domain.records import StorageRequest, VmRemoval, from_dict
from pvcd.domain.states import PRIMARY_TARGET
from pvcd.domain.tasks import busy_task, new_id
from pvcd.drivers.ceph.values import (
    check_device,
    check_osd_flag,
    check_osd_id,
    check_pgs,
    check_pool_name,
    check_snapshot_name,
    check_volume_name,
    check_weight,
    parse_size,
)
from pvcd.specs.storage import check_storage_request
from pvcd.state.store import Op
from pvcd.state.tasks import read_storage_tasks, read_tasks
from pvcd.state.view import ClusterView

DANGER_FLAG = "yes_i_really_mean_it"
DANGER = flag(DANGER_FLAG, "Confirms a dangerous removal; without it the request is refused.")
_ERRORS: dict[str, type[PvcError]] = {"InvalidValue": InvalidValue, "NotFound": NotFound,
                                      "Conflict": Conflict}


def new_request_id(clock: Callable[[], float]) -> str:
    """Sortable by creation time, unique without coordination (the form task ids have)."""
    return new_id(clock())


def storage_timeout(ctx: ApiContext) -> float:
    """The request timeout, or InvalidValue when this primary does not manage Ceph."""
    timeout = ctx.storage_request_timeout
    if timeout is None:
        raise InvalidValue(f"Ceph storage is not configured on the primary node {ctx.node_name} "
                           "(drivers.ceph.enabled)")
    return float(timeout)


async def submit_request(handler: BaseHandler, op: str, args: dict[str, Any],
                         target: str = PRIMARY_TARGET) -> tuple[StorageRequest, float]:
    """Write a storage request (checked with the rules the executing node checks again); the
    request and how long to wait for it."""
    ctx = handler.ctx
    timeout = storage_timeout(ctx)
    check_storage_request(op, args)
    request = StorageRequest(id=new_request_id(ctx.clock), op=op, args=args, target=target,
                             created=ctx.clock())
    path = ctx.view.paths.storage_request(request.id)
    await handler.commit([Op.create(path, request.to_doc())])
    return request, timeout


async def run_request(handler: BaseHandler, op: str, args: dict[str, Any],
                      target: str = PRIMARY_TARGET) -> StorageRequest:
    """Write a storage request, wait for its result; return it when done, raise when failed or
    still running at the timeout."""
    request, timeout = await submit_request(handler, op, args, target)
    return await request_outcome(handler.ctx, request, timeout)


async def request_state(ctx: ApiContext, request: StorageRequest,
                        timeout: float) -> StorageRequest:
    """A written storage request once it has finished (done or failed), or as it is at the
    timeout."""
    doc = await wait_for_request(ctx.view.cache, ctx.view.paths.storage_request(request.id),
                                 timeout)
    if not isinstance(doc, dict):
        return request
    finished = from_dict(StorageRequest, doc)
    if finished.state == "done":  # answer once this API's reads show what it did
        await wait_for_mirror(ctx.view.cache, finished.mirrored)
    return finished


def request_failure(result: StorageRequest) -> PvcError:
    """The error a failed request reports, of the class its executor raised."""
    return _ERRORS.get(result.error or "", BackendError)(result.message)


async def request_outcome(ctx: ApiContext, request: StorageRequest,
                          timeout: float) -> StorageRequest:
    """Wait for a written storage request; return it when done, raise when failed or still
    running at the timeout."""
    op, target = request.op, request.target
    result = await request_state(ctx, request, timeout)
    if result.state == "done":
        return result
    if result.state == "failed":
        raise request_failure(result)
    where = "the primary" if target == PRIMARY_TARGET else f"node {target}"
    raise BackendError(
        f"storage request {request.id} ({op}) has not finished after {timeout:g} s; it keeps "
        f"going on {where} (state {result.state}"
        + (f", {result.progress}" if result.progress else "")
        + f"): GET /api/v1/tasks/{request.id} shows it")


def request_object(doc: dict[str, Any]) -> dict[str, Any]:
    request = from_dict(StorageRequest, doc)
    return {"id": request.id, "op": request.op, "args": request.args, "target": request.target,
            "state": request.state, "message": request.message, "progress": request.progress,
            "result": request.result, "executor": request.executor, "created": request.created,
            "started": request.started, "finished": request.finished}


# -- reads from the mirror -----------------------------------------------------------------------

def _docs(view: ClusterView, path: str) -> Iterable[tuple[str, dict[str, Any]]]:
    cache = view.cache
    for name in cache.children(path):
        doc = cache.get(f"{path}/{name}")
        if isinstance(doc, dict):
            yield name, doc


def osd_object(doc: dict[str, Any]) -> dict[str, Any]:
    stats = dict(doc.get("stats") or {})
    if doc.get("node"):
        stats["node"] = doc["node"]  # the owner node (the CRUSH host), not Ceph's host name
    return {"id": doc.get("id"), "node": doc.get("node"), "device": doc.get("device"),
            "stats": stats}


def pool_object(doc: dict[str, Any]) -> dict[str, Any]:
    return {"name": doc.get("name"), "pgs": doc.get("pgs"), "stats": doc.get("stats") or {}}


def volume_object(doc: dict[str, Any]) -> dict[str, Any]:
    return {"name": doc.get("name"), "pool": doc.get("pool"), "stats": doc.get("stats") or {}}


def snapshot_object(doc: dict[str, Any]) -> dict[str, Any]:
    return {"pool": doc.get("pool"), "volume": doc.get("volume"),
            "snapshot": doc.get("snapshot")}


def refuse_busy(view: ClusterView, pool: str, volume: str,
                alongside: frozenset[str] = frozenset()) -> None:
    """Conflict when a task or an unfinished storage request works on the volume, other than
    those named in `alongside` (work that may go on next to this request's)."""
    tasks = [task for task in (*read_tasks(view), *read_storage_tasks(view))
             if task.name not in alongside]
    task = busy_task([f"volume:{pool}/{volume}"], tasks)
    if task is not None:
        raise Conflict(f"RBD volume {pool}/{volume} is busy with task {task.id} ({task.name}, "
                       f"{task.state}); try again when it has finished "
                       f"(GET {task_location(task.id)}); nothing was changed")


class StorageHandler(BaseHandler):
    def authenticated(self) -> None:
        storage_timeout(self.ctx)  # "storage is not configured": for known clients only

    @property
    def view(self) -> ClusterView:
        return self.ctx.view

    def require_danger_flag(self, what: str) -> None:
        if not self.values[DANGER]:
            raise InvalidValue(f"{what} is dangerous and was refused: add the value "
                               f"'{DANGER_FLAG}' to confirm it; nothing was changed")

    # lookups in the mirror
    def osd(self, osd: str) -> dict[str, Any]:
        number = check_osd_id(osd)
        doc = self.view.cache.get(self.view.paths.storage_osd(number))
        if not isinstance(doc, dict):
            raise NotFound(f"OSD {osd} not found")
        return doc

    def pool(self, pool: str) -> dict[str, Any]:
        check_pool_name(pool)
        doc = self.view.cache.get(self.view.paths.storage_pool(pool))
        if not isinstance(doc, dict):
            raise NotFound(f"RBD pool {pool} not found")
        return doc

    def volume(self, pool: str, volume: str) -> dict[str, Any]:
        self.pool(pool)
        check_volume_name(volume)
        doc = self.view.cache.get(self.view.paths.storage_volume(pool, volume))
        if not isinstance(doc, dict):
            raise NotFound(f"RBD volume {pool}/{volume} not found")
        return doc

    async def take_snapshot(self, pool: str, volume: str, snapshot: str) -> None:
        """Take a snapshot of an existing volume, and answer."""
        self.volume(pool, volume)
        check_snapshot_name(snapshot)
        if self.view.cache.exists(self.view.paths.storage_snapshot(pool, volume, snapshot)):
            raise Conflict(f"RBD snapshot {pool}/{volume}@{snapshot} already exists")
        # other snapshots of the volume being taken are no reason to refuse: the primary takes
        # them one after the other (an upload writing it is)
        refuse_busy(self.view, pool, volume, alongside=frozenset({"storage.snapshot-add"}))
        request = await run_request(self, "snapshot-add",
                                    {"pool": pool, "volume": volume, "snapshot": snapshot})
        self.message(request.message)

    def snapshot(self, pool: str, volume: str, snapshot: str) -> dict[str, Any]:
        self.volume(pool, volume)
        check_snapshot_name(snapshot)
        doc = self.view.cache.get(self.view.paths.storage_snapshot(pool, volume, snapshot))
        if not isinstance(doc, dict):
            raise NotFound(f"RBD snapshot {pool}/{volume}@{snapshot} not found")
        return doc


class CephStatusHandler(StorageHandler):
    path_name = "storage_status"

    def get(self) -> None:
        doc = self.view.cache.get(getattr(self.view.paths, self.path_name))
        if not isinstance(doc, dict):
            raise BackendError("no Ceph status read yet: the primary reads it every "
                               "drivers.ceph.stats_interval seconds")
        self.reply(doc)


class CephDfHandler(CephStatusHandler):
    path_name = "storage_df"


OPTION_ACTION = choice("action", ("set", "unset"), "set or unset.", required=True)
OPTION = value("option", "The OSD flag, e.g. noout.", check_osd_flag, required=True)


class ClusterOptionHandler(StorageHandler):
    @accepts(OPTION_ACTION, OPTION)
    async def post(self) -> None:
        action = self.values[OPTION_ACTION]
        option = self.values[OPTION]
        request = await run_request(self, "cluster-option", {"action": action, "option": option})
        self.message(request.message)


OSD_LIMIT = limit("OSD ids")
OSD_NODE = text("node", "The node with the disk.", required=True)
DEVICE = value("device", "A block device, e.g. /dev/sdb (memstore in a lab).", check_device,
               required=True)
WEIGHT = value("weight", "The CRUSH weight, e.g. 1.0.", check_weight, required=True,
               schema={"type": "number", "exclusiveMinimum": True, "minimum": 0,
                       "maximum": 1000})


class OsdListHandler(StorageHandler):
    @accepts(OSD_LIMIT)
    def get(self) -> None:
        limit = self.values[OSD_LIMIT]
        objects = [osd_object(doc) for name, doc in _docs(self.view, self.view.paths.storage_osds)
                   if limit is None or limit.search(name)]
        self.reply(sorted(objects, key=lambda o: int(o["id"])))

    @accepts(OSD_NODE, DEVICE, WEIGHT)
    async def post(self) -> None:
        node = self.values[OSD_NODE]
        device = self.values[DEVICE]
        weight = self.values[WEIGHT]
        if self.view.node_spec_entry(node) is None:
            raise NotFound(f"Node '{node}' not found")
        if not self.view.node_alive(node):
            raise Conflict(f"Node '{node}' is not running; an OSD is added by its node")
        request = await run_request(self, "osd-add", {"device": device, "weight": weight},
                                    target=node)
        self.message(request.message)


class OsdHandler(StorageHandler):
    def get(self, osd: str) -> None:
        self.reply([osd_object(self.osd(osd))])

    @accepts(DANGER)
    async def delete(self, osd: str) -> None:
        doc = self.osd(osd)
        self.require_danger_flag(f"removing OSD {osd}")
        owner = doc.get("node")
        if not owner:
            raise Conflict(f"OSD {osd} has no owner node in pvcd (its CRUSH host is not a pvcd "
                           "node), so no node can stop its daemon; remove it by hand")
        if not self.view.node_alive(owner):
            raise Conflict(f"OSD {osd} belongs to node {owner}, which is not running; an OSD "
                           "is removed by its node")
        request = await run_request(self, "osd-remove", {"osd": int(doc["id"])}, target=owner)
        self.message(request.message)


OSD_STATE = choice("state", ("in", "out"), "in or out.", required=True)


class OsdStateHandler(StorageHandler):
    def get(self, osd: str) -> None:
        doc = self.osd(osd)
        stats = doc.get("stats") or {}
        self.reply({"id": doc.get("id"), "in": stats.get("in"), "up": stats.get("up")})

    @accepts(OSD_STATE)
    async def post(self, osd: str) -> None:
        doc = self.osd(osd)
        state = self.values[OSD_STATE]
        request = await run_request(self, "osd-state", {"osd": int(doc["id"]), "state": state})
        self.message(request.message)


POOL_LIMIT = limit("pool names")
NEW_POOL = value("pool", "The pool name.", check_pool_name, required=True)
PGS = value("pgs", "Placement groups: a power of two, 1 to 32768.", check_pgs, required=True,
            schema={"type": "integer", "minimum": 1, "maximum": 32768})


class PoolListHandler(StorageHandler):
    @accepts(POOL_LIMIT)
    def get(self) -> None:
        limit = self.values[POOL_LIMIT]
        self.reply([pool_object(doc) for name, doc in _docs(self.view,
                                                              self.view.paths.storage_pools)
                    if limit is None or limit.search(name)])

    @accepts(NEW_POOL, PGS)
    async def post(self) -> None:
        pool = self.values[NEW_POOL]
        pgs = self.values[PGS]
        if self.view.cache.exists(self.view.paths.storage_pool(pool)):
            raise Conflict(f"RBD pool {pool} already exists")
        request = await run_request(self, "pool-add", {"pool": pool, "pgs": pgs})
        self.message(request.message)


class PoolHandler(StorageHandler):
    def get(self, pool: str) -> None:
        self.reply([pool_object(self.pool(pool))])

    @accepts(DANGER)
    async def delete(self, pool: str) -> None:
        self.pool(pool)
        self.require_danger_flag(f"removing RBD pool {pool} (and every volume in it)")
        request = await run_request(self, "pool-remove", {"pool": pool})
        self.message(request.message)


POOL_FILTER = text("pool", "Only volumes of this pool.")
VOLUME_LIMIT = limit("volume names")
NEW_VOLUME = value("volume", "The volume name.", check_volume_name, required=True)
VOLUME_POOL = text("pool", "The pool.", required=True)
SIZE = value("size", "Bytes, or with a K/M/G/T suffix (binary), e.g. 4096M or 20G.", parse_size,
             required=True)


class VolumeListHandler(StorageHandler):
    @accepts(POOL_FILTER, VOLUME_LIMIT)
    def get(self) -> None:
        pool, limit = self.values[POOL_FILTER], self.values[VOLUME_LIMIT]
        root = self.view.paths.storage_volumes
        pools = [pool] if pool else self.view.cache.children(root)
        objects = []
        for name in pools:
            for volume, doc in _docs(self.view, f"{root}/{name}"):
                if limit is None or limit.search(volume):
                    objects.append(volume_object(doc))
        self.reply(objects)

    @accepts(NEW_VOLUME, VOLUME_POOL, SIZE)
    async def post(self) -> None:
        volume = self.values[NEW_VOLUME]
        pool = self.values[VOLUME_POOL]
        size = self.values[SIZE]
        self.pool(pool)
        if self.view.cache.exists(self.view.paths.storage_volume(pool, volume)):
            raise Conflict(f"RBD volume {pool}/{volume} already exists")
        request = await run_request(self, "volume-add",
                                    {"pool": pool, "volume": volume, "size": size})
        self.message(request.message)


class VolumeHandler(StorageHandler):
    """GET and DELETE; `PUT` (resize, rename) is `pvcd.api.volumes.VolumeChangeHandler`'s."""

    def get(self, pool: str, volume: str) -> None:
        self.reply([volume_object(self.volume(pool, volume))])

    async def delete(self, pool: str, volume: str) -> None:
        self.volume(pool, volume)
        refuse_busy(self.view, pool, volume)  # an upload's undo snapshot is no reason to give
        snapshots = self.view.cache.children(self.view.paths.storage_volume_snapshots(pool,
                                                                                      volume))
        if snapshots:
            raise Conflict(f"RBD volume {pool}/{volume} has snapshots ({', '.join(snapshots)}); "
                           "remove them first")
        request = await run_request(self, "volume-remove", {"pool": pool, "volume": volume})
        self.message(request.message)


SNAPSHOT_POOL_FILTER = text("pool", "Only snapshots in this pool.")
SNAPSHOT_VOLUME_FILTER = text("volume", "Only snapshots of volumes with this name.")
SNAPSHOT_LIMIT = limit("snapshot names")
NEW_SNAPSHOT = value("snapshot", "The snapshot name.", check_snapshot_name, required=True)
SNAPSHOT_VOLUME = text("volume", "The volume.", required=True)
SNAPSHOT_POOL = text("pool", "The volume's pool.", required=True)


class SnapshotListHandler(StorageHandler):
    @accepts(SNAPSHOT_POOL_FILTER, SNAPSHOT_VOLUME_FILTER, SNAPSHOT_LIMIT)
    def get(self) -> None:
        pool, volume, limit = self.values[SNAPSHOT_POOL_FILTER], \
            self.values[SNAPSHOT_VOLUME_FILTER], self.values[SNAPSHOT_LIMIT]
        root = self.view.paths.storage_snapshots
        cache = self.view.cache
        objects = []
        for pool_name in [pool] if pool else cache.children(root):
            volumes = cache.children(f"{root}/{pool_name}")
            for volume_name in [v for v in volumes if volume is None or v == volume]:
                for snap, doc in _docs(self.view, f"{root}/{pool_name}/{volume_name}"):
                    if limit is None or limit.search(snap):
                        objects.append(snapshot_object(doc))
        self.reply(objects)

    @accepts(NEW_SNAPSHOT, SNAPSHOT_VOLUME, SNAPSHOT_POOL)
    async def post(self) -> None:
        snapshot = self.values[NEW_SNAPSHOT]
        volume, pool = self.values[SNAPSHOT_VOLUME], self.values[SNAPSHOT_POOL]
        await self.take_snapshot(pool, volume, snapshot)


class SnapshotHandler(StorageHandler):
    """GET and DELETE; `PUT` (rename) is `pvcd.api.volumes.SnapshotChangeHandler`'s."""

    def get(self, pool: str, volume: str, snapshot: str) -> None:
        self.reply([snapshot_object(self.snapshot(pool, volume, snapshot))])

    async def delete(self, pool: str, volume: str, snapshot: str) -> None:
        self.snapshot(pool, volume, snapshot)
        request = await run_request(self, "snapshot-remove",
                                    {"pool": pool, "volume": volume, "snapshot": snapshot})
        self.message(request.message)


class RequestHandler(StorageHandler):
    """pvcd addition: a storage request's state (e.g. after the API stopped waiting for it)."""

    def get(self, request_id: str) -> None:
        doc = self.view.cache.get(self.view.paths.storage_request(request_id)) \
            if "/" not in request_id else None
        if not isinstance(doc, dict):
            raise NotFound(f"storage request {request_id} not found (finished requests are "
                           "kept for drivers.ceph.request_retention seconds)")
        self.reply(request_object(doc))


async def vm_volume_failures(ctx: ApiContext, removal: VmRemoval, timeout: float) -> list[str]:
    """Wait (all at once) for the storage requests that remove a removed VM's disks; return a
    line per volume that could not be removed."""
    requests = removal.volume_requests(ctx.clock())
    results = await asyncio.gather(*(request_outcome(ctx, request, timeout)
                                     for request in requests), return_exceptions=True)
    return [f"{pool}/{volume}: {result}"
            for (pool, volume, _), result in zip(removal.disks, results, strict=True)
            if isinstance(result, BaseException)]


def vm_removal(ctx: ApiContext, volumes: list[tuple[str, str]]) -> VmRemoval:
    """The removal of a VM with these disks, each with the id of the request to remove it."""
    return VmRemoval(disks=[[pool, volume, new_request_id(ctx.clock)]
                            for pool, volume in volumes])


def check_vm_volumes(ctx: ApiContext, volumes: list[tuple[str, str]]) -> None:
    """InvalidValue/NotFound unless every volume can be removed through storage requests."""
    storage_timeout(ctx)
    view = ctx.view
    missing = [f"{pool}/{volume}" for pool, volume in volumes
               if not view.cache.exists(view.paths.storage_volume(pool, volume))]
    if missing:
        raise NotFound(f"RBD volume(s) {', '.join(missing)} not found; nothing was changed "
                       "(delete the VM without delete_disks to keep its disk references)")


ROUTES = [
    route("/storage/ceph", CephStatusHandler),
    route("/storage/ceph/status", CephStatusHandler),
    route("/storage/ceph/df", CephDfHandler),
    route("/storage/ceph/cluster-option", ClusterOptionHandler),
    route("/storage/ceph/osd", OsdListHandler),
    route("/storage/ceph/osd/<osd>", OsdHandler),
    route("/storage/ceph/osd/<osd>/state", OsdStateHandler),
    route("/storage/ceph/pool", PoolListHandler),
    route("/storage/ceph/pool/<pool>", PoolHandler),
    route("/storage/ceph/volume", VolumeListHandler),
    route("/storage/ceph/volume/snapshot", SnapshotListHandler),
    route("/storage/ceph/request/<request_id>", RequestHandler),
]
