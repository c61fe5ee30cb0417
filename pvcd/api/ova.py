"""OVA endpoints (spec extensions.md §3.7): list, show, upload (task `ova.upload`), remove.

An upload's body is the `.ova` file, streamed: everything is checked from the query string and
the headers before a byte of the body is read (`prepare`: the client is authenticated by its
headers, the name, pool, `ova_size` and the pool's free space are checked, the task is
created), so a refusal answers 510 at once and `Expect: 100-continue` clients send nothing.
Then each chunk goes into the task's `UploadPipe` as Tornado reads it (the file part of a
multipart body is decoded on the way, `pvcd.api.multipart`); a full pipe makes
`data_received` return a future, and Tornado stops reading the socket until the task has taken
bytes out. The task runs on this node (`run_on`), where the body is: it takes the pipe by its
id. A client that goes away mid-body aborts the pipe, which fails the task; the task's runner
removes the volumes it made. Once the body is in, the answer is the task's end if it has ended
(200 or 510), else 202, or with `wait` its end within `api.task_wait`.

Removal deletes the OVA record with its own system template and profile in one transaction
(so no new VM creation can find it), then its volumes through storage requests; it is refused
while another profile names the OVA or its system template, or a task works on it (`objects`
`ova:<name>`, the key the `provisioner.create` task names too).
"""

from __future__ import annotations

import asyncio
from typing import Any

from tornado.http1connection import HTTP1Connection

from pvcd.api.base import UNLIMITED, BaseHandler, Unauthorized
from pvcd.api.multipart import OVERHEAD, SinglePartDecoder, multipart_boundary
from pvcd.api.routing import route
from pvcd.api.storage import run_request, storage_timeout
from pvcd.api.tasks import TASK_VALUES, answer_task, create_task, task_location
from pvcd.api.values import accepts, integer, limit, text
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound, PvcError
from pvcd.domain.provisioner import Ova
from pvcd.domain.states import TASK_FINISHED_STATES
from pvcd.domain.tasks import TaskRecord, busy_task
from pvcd.specs.provisioner import check_object_name
from pvcd.state.provisioner import read_objects
from pvcd.state.store import Op
from pvcd.state.tasks import read_tasks
from pvcd.state.view import ClusterView
from pvcd.upload_pipe import UploadPipe

OVA_UPLOAD = "ova.upload"  # the task kind (pvcd.controllers.ova_upload)
UPLOAD_MIN_RATE = 1 << 20  # bytes/s: the slowest upload body the API waits for

OVA_LIMIT = limit("OVA names")
OVA_NAME = text("name", "The OVA's name: 1-63 letters, digits, '_', '.', '+', '-' (not "
                "starting with '.', '+' or '-'); also the name of the system template and "
                "profile it creates.", required=True)
OVA_POOL = text("pool", "The pool that gets the OVA's disk images (volumes "
                "ova_<name>_sd<x>).", required=True)
OVA_SIZE = integer("ova_size", "The size of the .ova file in bytes; the body may not be "
                   "longer, and the pool needs this much free space.", required=True, minimum=1)


def ova_key(name: str) -> str:
    """A task's object key for an OVA (`objects`): uploads and VM creations that use it."""
    return f"ova:{name}"


def check_ova_name(name: str) -> str:
    return check_object_name(name, "OVA")


def read_ovas(view: ClusterView) -> list[Ova]:
    return list(read_objects(view, "ova"))


def ova_object(ova: Ova) -> dict[str, Any]:
    return ova.to_doc()


class OvaUploadHandler(BaseHandler):
    """The streamed POST of both OVA routes (module docstring); GET and DELETE read small
    bodies as every endpoint does."""

    _pipe: UploadPipe | None = None
    _task: TaskRecord | None = None
    _decoder: SinglePartDecoder | None = None  # of a multipart body
    _size = 0  # the file's size at most (ova_size)

    async def prepare(self) -> None:  # type: ignore[override]
        if self.request.method == "POST":
            # only an upload is exempt from the API's small body limit; it sets its own below
            self.max_body_size = UNLIMITED
        super().prepare()
        if self.request.method != "POST":
            return
        if self.identity is None and self.ctx.auth_enabled:
            raise Unauthorized()  # an upload carries its token in a header or the query
        name = self.path_args[0] if self.path_args else self.values[OVA_NAME]
        await self._start_upload(check_ova_name(name))

    async def _start_upload(self, name: str) -> None:
        ctx, view = self.ctx, self.ctx.view
        storage_timeout(ctx)  # Ceph must be configured
        pool, size = self.values[OVA_POOL], self.values[OVA_SIZE]
        paths = view.paths
        for kind, what in (("ova", "an OVA"), ("system", "a system template"),
                           ("profile", "a profile")):
            if view.cache.exists(paths.provisioner_object(kind, name)):
                raise Conflict(f"{what} named {name} exists already; an OVA needs its name "
                               "free as an OVA, a system template and a profile")
        if not view.cache.exists(paths.storage_pool(pool)):
            pools = sorted(view.cache.children(paths.storage_pools))
            raise NotFound(f"pool {pool} not found; valid pools are: "
                           f"{', '.join(pools) or 'none'}")
        boundary = multipart_boundary(self.request.headers.get("Content-Type", ""))
        limit = size + OVERHEAD if boundary is not None else size
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise InvalidValue(f"the body is {int(length)} bytes, more than ova_size {size}"
                               + (" and a multipart body's headers" if boundary else ""))
        if ctx.pool_space is None:
            raise InvalidValue(f"the primary {ctx.node_name} cannot read Ceph's pool usage "
                               "(drivers.ceph.enabled)")
        space = await asyncio.to_thread(ctx.pool_space, pool)
        if space.free < size:
            raise InvalidValue(f"pool {pool} has {space.free} bytes free, less than ova_size "
                               f"{size}; nothing was changed")
        self._limit_body(limit)
        self._allow_time_for(limit)
        pipe = UploadPipe(int(length) if length.isdigit() else None)
        self._size = size
        self._decoder = SinglePartDecoder(boundary) if boundary is not None else None

        def open_pipe(record: TaskRecord) -> None:
            ctx.uploads.open(record.id, pipe)

        args = {"name": name, "pool": pool, "ova_size": size}
        try:
            self._task = await create_task(self, OVA_UPLOAD, args, [ova_key(name)],
                                           run_on=ctx.node_name, before_commit=open_pipe)
        except BaseException:
            self._discard_pipe()
            raise
        self._pipe = pipe

    def _allow_time_for(self, size: int) -> None:
        """`api.body_timeout` is for small bodies: an upload of `size` bytes gets it plus the
        time the body takes at UPLOAD_MIN_RATE (a client slower than that is cut off)."""
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            base = connection.params.body_timeout or 0.0
            connection.set_body_timeout(base + size / UPLOAD_MIN_RATE)

    def data_received(self, chunk: bytes) -> Any:
        pipe, decoder = self._pipe, self._decoder
        if pipe is None:
            return super().data_received(chunk)
        if decoder is None:
            return pipe.write(chunk)
        try:
            data = decoder.feed(chunk)
        except InvalidValue as exc:
            pipe.abort(str(exc))  # the rest of the body is dropped
            return None
        if decoder.file_bytes > self._size:
            pipe.abort(f"the file is longer than ova_size {self._size}")
            return None
        return pipe.write(data) if data else None

    async def _finish_upload(self) -> None:
        pipe, record = self._pipe, self._task
        assert pipe is not None and record is not None
        try:
            if self._decoder is not None:
                self._decoder.finish()
        except InvalidValue as exc:
            pipe.abort(str(exc))
        else:
            pipe.finish()
        doc = self.ctx.view.cache.get(self.ctx.view.paths.task(record.id))
        done = TaskRecord.from_doc(doc) if isinstance(doc, dict) else record
        if done.is_finished:
            body: dict[str, Any] = {"message": done.message, "task_id": done.id}
            if done.state == "success":
                body["result"] = done.result
            self.reply(body, 200 if done.state == "success" else 510)
            return
        await answer_task(self, record)

    def on_connection_close(self) -> None:
        pipe = self._pipe
        if pipe is not None and not pipe.complete:
            expected = f" of {pipe.expected}" if pipe.expected is not None else ""
            pipe.abort(f"the client went away after {pipe.received}{expected} bytes")
        super().on_connection_close()

    def on_finish(self) -> None:
        if self._pipe is not None and not self._pipe.complete:
            self._pipe.abort("the request ended before its body was in")
            self._discard_pipe()  # else the task (perhaps still pending) takes it and drops it
        super().on_finish()

    def _discard_pipe(self) -> None:
        if self._task is not None:
            self.ctx.uploads.discard(self._task.id)


class OvaListHandler(OvaUploadHandler):
    @accepts(OVA_LIMIT)
    def get(self) -> None:
        pattern = self.values[OVA_LIMIT]
        self.reply([ova_object(ova) for ova in read_ovas(self.ctx.view)
                    if pattern is None or pattern.search(ova.name)])

    @accepts(OVA_NAME, OVA_POOL, OVA_SIZE, *TASK_VALUES)
    async def post(self) -> None:
        await self._finish_upload()


class OvaHandler(OvaUploadHandler):
    def get(self, name: str) -> None:
        self.reply([ova_object(self.ova(name))])

    @accepts(OVA_POOL, OVA_SIZE, *TASK_VALUES)
    async def post(self, name: str) -> None:
        await self._finish_upload()

    async def delete(self, name: str) -> None:
        view = self.ctx.view
        ova = self.ova(name)
        refuse_ova_removal(view, ova)
        ops = removal_ops(view, ova)
        await self.commit(ops)
        left: list[str] = []
        for volume in ova.volumes:
            if not view.cache.exists(view.paths.storage_volume(volume.pool, volume.volume_name)):
                continue
            try:
                await run_request(self, "volume-remove", {"pool": volume.pool,
                                                          "volume": volume.volume_name,
                                                          "with_snapshots": True})
            except PvcError as exc:
                left.append(f"{volume.pool}/{volume.volume_name} ({exc})")
        removed = f"Removed OVA {name}, its system template and profile"
        if left:
            raise BackendError(f"{removed}, but could not remove its volumes: {'; '.join(left)}")
        self.message(f"{removed} and its volumes "
                     f"{', '.join(f'{v.pool}/{v.volume_name}' for v in ova.volumes) or '(none)'}")

    def ova(self, name: str) -> Ova:
        doc = self.ctx.view.cache.get(self.ctx.view.paths.provisioner_object("ova", name))
        if not isinstance(doc, dict):
            raise NotFound(f"OVA {name[:80]} not found")
        return Ova.from_doc(doc)


def own_objects(view: ClusterView, ova: Ova) -> list[tuple[str, str]]:
    """The system template and profile the OVA made (those that still name it)."""
    owned = []
    for kind, name in (("system", ova.system_template), ("profile", ova.profile)):
        doc = view.cache.get(view.paths.provisioner_object(kind, name)) if name else None
        if isinstance(doc, dict) and doc.get("ova") == ova.name and name:
            owned.append((kind, name))
    return owned


def refuse_ova_removal(view: ClusterView, ova: Ova) -> None:
    """Conflict while another profile names the OVA or its system template, or a task works on
    it (§3.7); nothing is changed then."""
    owned = own_objects(view, ova)
    own_profile = next((n for k, n in owned if k == "profile"), None)
    own_template = next((n for k, n in owned if k == "system"), None)
    users = [p.name for p in read_objects(view, "profile") if p.name != own_profile
             and (p.ova == ova.name or (own_template is not None
                                        and p.system_template == own_template))]
    if users:
        raise Conflict(f"OVA {ova.name} (or its system template) is used by the profiles "
                       f"{', '.join(users)}; change or remove them first; nothing was changed")
    tasks = read_tasks(view)
    busy = busy_task([ova_key(ova.name)], tasks) or next(
        (task for task in tasks if task.name == "provisioner.create"
         and task.state not in TASK_FINISHED_STATES
         and task.args.get("profile") == own_profile), None)
    if busy is not None:
        raise Conflict(f"OVA {ova.name} is in use by task {busy.id} ({busy.name}, {busy.state}); "
                       f"try again when it has finished (GET {task_location(busy.id)}); "
                       "nothing was changed")


def removal_ops(view: ClusterView, ova: Ova) -> list[Op]:
    """One transaction: the OVA record, its own system template and profile, each at the
    version read (a change meanwhile makes it a 510 and nothing is removed)."""
    ops = []
    for kind, name in [("ova", ova.name), *own_objects(view, ova)]:
        entry = view.cache.entry(view.paths.provisioner_object(kind, name))
        if entry is not None:
            ops.append(Op.delete(view.paths.provisioner_object(kind, name), entry.version))
    return ops


ROUTES = [
    route("/provisioner/ova", OvaListHandler),
    route("/provisioner/ova/<ova>", OvaHandler),
]
