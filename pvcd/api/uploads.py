"""`POST /storage/ceph/volume/<pool>/<volume>/upload` (task `volume.upload`, extensions.md
§2.1): a disk image streamed into an existing volume.

Everything is judged from the headers and the query string, before a byte of the body is read
(`prepare`, which Tornado awaits before it answers `Expect: 100-continue` or reads the body):
the client is authenticated by its headers (the body is the image, so no token can come in
it), the values, the volume, whether a VM that is not stopped uses it, whether it is busy, the
pool's room for a temporary volume. A refusal is a 510 with nothing changed. Then the task is
created, already claimed by this process, and the job starts (`ApiContext.upload_service`).
Each chunk of the body goes to the job as it arrives; `data_received` waits while the job is
behind, so Tornado reads no further from the socket (backpressure) and the body is never held
in memory.

Once the body is in, the answer is that of a long job (spec §0.2): 200 with the result if the
task has succeeded (raw), 510 if it failed (e.g. the body was too long), else 202 while the
conversion runs (with `wait`, after waiting for it). A client that leaves before the end of its
body fails the task ("upload interrupted after N of M bytes"); the volume is rolled back.

The body is the image (`application/octet-stream`, or any type but multipart), or a
`multipart/form-data` body with exactly one file part (PVC's CLI sends one named `file`),
whose part is taken out as it streams (`pvcd.api.multipart`); a malformed one fails the
task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from tornado.http1connection import HTTP1Connection

from pvcd.api.base import UNLIMITED
from pvcd.api.multipart import SinglePartDecoder, multipart_boundary
from pvcd.api.routing import route
from pvcd.api.storage import StorageHandler
from pvcd.api.tasks import WAIT_FOR_TASK, task_location
from pvcd.api.upload_port import BodySink, Uploads
from pvcd.api.values import RawValues, accepts, choice, integer
from pvcd.api.volumes import refuse_active_users, refuse_busy
from pvcd.api.waiting import wait_until
from pvcd.domain.errors import BackendError, InvalidValue
from pvcd.domain.states import TASK_FINISHED_STATES
from pvcd.domain.tasks import TaskRecord, new_id
from pvcd.domain.uploads import (
    IMAGE_FORMATS,
    TASK_NAME,
    UploadPlan,
    plan_upload,
    progress_total,
    upload_file_size,
)
from pvcd.state.store import Op

IMAGE_FORMAT = choice("image_format", IMAGE_FORMATS, "The image's format; other formats than "
                      "raw are converted to raw data with qemu-img.", required=True)
FILE_SIZE = integer("file_size", "The image file's size in bytes; defaults to the body's "
                    "Content-Length (needed for other formats than raw without one).",
                    minimum=1)
MIN_BODY_RATE = 1 << 20  # bytes/s: an upload's body may take this long (plus body_timeout)


class VolumeUploadHandler(StorageHandler):
    max_body_size = UNLIMITED  # what the body may hold is the job's to judge (the volume)

    def initialize(self, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.sink: BodySink | None = None
        self.task: TaskRecord | None = None
        self.multipart: SinglePartDecoder | None = None  # a multipart body's file part

    def _small_body(self) -> bool:
        return False  # the body is the image: the token must come in a header

    @property
    def raw_values(self) -> RawValues:
        """The values come from the query string only (the body is the image)."""
        if self._raw_values is None:
            self._raw_values = RawValues.from_request(self.request.query_arguments, {}, "", b"")
        return self._raw_values

    def _after_body(self, token_in_body: bool) -> None:
        self._body_read = True  # nothing to parse: the job has had every chunk

    async def prepare(self) -> None:  # type: ignore[override]
        super().prepare()
        if self.request.method != "POST" or self._finished:
            return
        await self.accept(*self.path_args)

    @accepts(IMAGE_FORMAT, FILE_SIZE, WAIT_FOR_TASK)
    async def post(self, pool: str, volume: str) -> None:
        sink, record = self.sink, self.task
        assert sink is not None and record is not None
        try:
            if self.multipart is not None:
                self.multipart.finish()
            sink.pipe.finish()
        except InvalidValue as exc:
            sink.refuse(str(exc))
        await sink.settled
        await self.answer(record)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:  # type: ignore[override]
        if self.sink is None:
            return None
        if self.multipart is not None:
            try:
                chunk = self.multipart.feed(chunk)
            except InvalidValue as exc:
                self.sink.refuse(str(exc))
                return None
        return self.sink.pipe.write(chunk)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self.sink is not None and not self._body_read:  # a body that is in still counts
            self.sink.pipe.abort("the client closed the connection")

    # before the body
    async def accept(self, pool: str, volume: str) -> None:
        """Judge the request (510, nothing changed), create the task and start its job."""
        uploads = self.uploads()
        doc = self.volume(pool, volume)
        image_format, file_size = self.values[IMAGE_FORMAT], self.values[FILE_SIZE]
        boundary = multipart_boundary(self.request.headers.get("Content-Type", ""))
        length = self.request.headers.get("Content-Length")
        size = upload_file_size(image_format, file_size,  # a multipart body is more than its file
                                int(length) if length and length.isdigit() and
                                boundary is None else None)
        view = self.view
        volume_size = (doc.get("stats") or {}).get("size")
        if not isinstance(volume_size, int):
            raise BackendError(f"the size of RBD volume {pool}/{volume} is not known yet; try "
                               "again in a few seconds")
        plan = plan_upload(pool, volume, volume_size, image_format, size,
                           view.cache.children(view.paths.storage_volume_snapshots(pool,
                                                                                   volume)),
                           view.cache.children(f"{view.paths.storage_volumes}/{pool}"))
        refuse_active_users(view, pool, volume, "writing an image into it under the guest "
                            "would corrupt its disk:", "stop the VM first")
        refuse_busy(view, pool, volume)
        if plan.temporary is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, uploads.check_room, pool, plan.file_size)
            refuse_busy(view, pool, volume)  # the room check let the loop run
        self.multipart = SinglePartDecoder(boundary) if boundary is not None else None
        self.task = await self.create_task(plan, uploads)
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):  # the body may take as long as its size
            connection.set_body_timeout((connection.params.body_timeout or 0.0)
                                        + plan.receive_limit / MIN_BODY_RATE)

    def uploads(self) -> Uploads:
        if self.ctx.upload_service is None:
            raise InvalidValue(f"uploads are not available on the primary node "
                               f"{self.ctx.node_name} (Ceph storage is not configured there)")
        return self.ctx.upload_service

    async def create_task(self, plan: UploadPlan, uploads: Uploads) -> TaskRecord:
        now = self.ctx.clock()
        record = TaskRecord(id=new_id(now), name=TASK_NAME, run_on=self.ctx.node_name,
                            follows_primary=False, state="running", args=plan.args(),
                            objects=plan.objects, executor=uploads.executor, created=now,
                            started=now, updated=now)
        record.progress.total = progress_total(plan)
        record.progress.message = "starting"
        path = self.view.paths.task(record.id)
        await self.commit([Op.create(path, record.to_doc())])
        try:
            self.sink = uploads.begin(record, 0, plan)  # a new znode's version
        except Exception as exc:  # no job runs it: fail it here, or it stays `running`
            record.state, record.error = "failure", "BackendError"
            record.message = f"the upload could not start: {exc}"
            record.finished = record.updated = self.ctx.clock()
            await self.commit([Op.set(path, record.to_doc(), 0)])
            raise BackendError(record.message) from None
        return record

    # after the body
    async def answer(self, record: TaskRecord) -> None:
        view, path = self.view, self.view.paths.task(record.id)
        doc = view.cache.get(path)
        if self.values[WAIT_FOR_TASK] and not _finished(doc):
            doc, _ = await wait_until(view.cache, (path,), lambda: view.cache.get(path),
                                      _finished, self.ctx.task_wait)
        done = TaskRecord.from_doc(doc) if isinstance(doc, dict) else record
        if done.state == "success":
            self.reply({"message": done.message, "task_id": done.id, "result": done.result})
        elif done.state == "failure":
            self.reply({"message": done.message, "task_id": done.id}, 510)
        else:
            self.set_header("Location", task_location(done.id))
            self.reply({"task_id": done.id, "task_name": TASK_NAME, "run_on": done.run_on,
                        "message": f"Task {done.id} ({TASK_NAME}) has the image and converts "
                                   f"it; follow it at {task_location(done.id)}"}, 202)


def _finished(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("state") in TASK_FINISHED_STATES


ROUTES = [
    route("/storage/ceph/volume/<pool>/<volume>/upload", VolumeUploadHandler),
]
