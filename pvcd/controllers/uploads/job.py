"""The work of one `volume.upload` task (extensions.md §2.1), from the undo snapshot to the
removal of what it made, in the thread that `UploadService` started for it.

1. Take the undo snapshot `<volume>@upload_<n>` (an artifact): a failure rolls the volume back
   to it. A non-raw image gets a temporary volume `<volume>_upload_<n>` of `file_size` bytes
   (an artifact too). Both through storage requests (`run_storage_request`), like any Ceph change.
2. Receive: every chunk of the body is written (`RbdStreamWriter`) into the target (raw) or the
   temporary volume, counted against the announced size; a non-raw image's first bytes are
   judged before qemu-img ever opens it (`check_header`).
3. Non-raw: once the body is in, the handler may answer (202); `qemu-img info` must confirm the
   image (`check_image_info`), then `qemu-img convert` writes it as raw data into the target,
   at most `tasks.workers` conversions at once in this process.
4. The temporary volume and the undo snapshot are removed; the task succeeds. A failure at any
   step removes the artifacts in reverse order (the temporary volume, then the rollback to the
   snapshot and its removal) and the task fails with the reason. If the process dies, the
   primary's janitor does that (`upload_task_kind`'s `undo`).

The body's source is anything with `read(size, stopped)`/`close_reader(reason)` (`BodySource`):
the HTTP request's `UploadPipe`, or `FileChunks` over a file-like object, for other code that
streams an image
into a volume within a task of its own (`run_upload`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from pvcd.controllers.tasks.cleanup import failure_message, undo_artifacts
from pvcd.controllers.tasks.context import TaskContext, TaskStopped
from pvcd.controllers.tasks.registry import TaskKind, TaskOutcome
from pvcd.controllers.uploads.session import UploadSession
from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound, PvcError
from pvcd.domain.records import StorageRequest
from pvcd.domain.tasks import Artifact
from pvcd.domain.uploads import (
    HEADER_BYTES,
    TASK_NAME,
    TEMPORARY_VOLUME,
    UNDO_SNAPSHOT,
    UploadPlan,
    check_header,
    check_image_info,
    interrupted_message,
    progress_total,
)
from pvcd.drivers.ceph.rbd_stream import RbdConnection
from pvcd.drivers.host import trim_heap
from pvcd.drivers.qemu_img import QemuImg, RbdAccess
from pvcd.upload_pipe import UploadBroken

log = logging.getLogger(__name__)

READ_SIZE = 4 << 20  # bytes read from the body at once (at most)
PROGRESS_BYTES = 4 << 20  # the progress is updated every 4 MiB received
ROLLBACK_WAIT = 3600.0  # seconds a rollback is waited for at least
WATCH_EXPIRY = 45.0  # seconds a stale watch of a dead process may hold a rollback back
WATCH_RETRY = 2.0  # seconds between two rollbacks refused by a watch


class BodySource(Protocol):
    def read(self, size: int = -1, stopped: Callable[[], bool] = lambda: False) -> bytes:
        """Up to `size` bytes; b"" at the end (UploadBroken if it will not come whole)."""

    def close_reader(self, reason: str) -> None:
        """No more will be read."""


class FileChunks:
    """A `BodySource` over a file-like object (read to its end)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def read(self, size: int = -1, stopped: Callable[[], bool] = lambda: False) -> bytes:
        return self.file.read(size)

    def close_reader(self, reason: str) -> None:
        pass


# `run_storage_request` bound to the view and store: (op, args, timeout) -> the done request
StorageStep = Callable[[str, dict[str, Any], float], StorageRequest]


@dataclass(frozen=True)
class UploadTools:
    """What an upload needs: storage requests, the process's librados connection, Ceph access
    for qemu-img, and the limit on conversions at once."""

    calls: StorageStep
    rbd: RbdConnection
    access: RbdAccess
    qemu_img: QemuImg
    request_timeout: float
    conversions: threading.Semaphore


def run_upload(plan: UploadPlan, ctx: TaskContext, source: BodySource, tools: UploadTools,
               on_received: Callable[[], None] = lambda: None) -> TaskOutcome:
    """Write the image `source` delivers into `plan`'s volume within the running task `ctx`
    (its artifacts recorded there, removed by the caller's failure path): the task's outcome,
    or a PvcError / UploadBroken / TaskStopped. `on_received`: the body is in and a conversion
    follows."""
    return _Upload(plan, ctx, source, tools).run(on_received)


class _Upload:
    def __init__(self, plan: UploadPlan, ctx: TaskContext, source: BodySource,
                 tools: UploadTools) -> None:
        self.plan = plan
        self.ctx = ctx
        self.source = source
        self.tools = tools
        self.received = 0

    def run(self, on_received: Callable[[], None]) -> TaskOutcome:
        plan, ctx, calls, timeout = self.plan, self.ctx, self.tools.calls, \
            self.tools.request_timeout
        where = f"{plan.pool}/{plan.volume}"
        ctx.progress(0, progress_total(plan), f"taking the undo snapshot {plan.snapshot}")
        calls("snapshot-add", {"pool": plan.pool, "volume": plan.volume,
                               "snapshot": plan.snapshot}, timeout)
        ctx.artifact(UNDO_SNAPSHOT, f"{where}@{plan.snapshot}")
        if plan.temporary is not None:
            calls("volume-add", {"pool": plan.pool, "volume": plan.temporary,
                                 "size": plan.file_size}, timeout)
            ctx.artifact(TEMPORARY_VOLUME, f"{plan.pool}/{plan.temporary}")
        self.receive(plan.temporary or plan.volume)
        if plan.file_size and self.received != plan.file_size:
            raise InvalidValue(f"the body held {self.received} bytes, but {plan.file_size} "
                               "were announced (file_size or Content-Length)")
        virtual = self.received
        if plan.temporary is not None:
            on_received()
            virtual = self.convert(plan.temporary)
        left = self.remove_artifacts()
        message = (f"Wrote the {plan.image_format} image ({self.received} bytes received, "
                   f"{virtual} bytes of disk) into RBD volume {where}")
        if left:
            message += f"; could not remove: {'; '.join(left)}"
        return TaskOutcome(message, plan.result(self.received, virtual))

    def receive(self, volume: str) -> None:
        plan, ctx = self.plan, self.ctx
        total, limit = progress_total(plan), plan.receive_limit
        head, judged, reported = b"", plan.image_format == "raw", 0
        ctx.progress(0, total, "receiving")
        with self.tools.rbd.writer(plan.pool, volume) as writer:
            while True:
                chunk = self.source.read(READ_SIZE, ctx.stopped.is_set)
                if not chunk:
                    break
                if self.received + len(chunk) > limit:
                    raise InvalidValue(self.too_long(limit))
                if not judged:
                    head += chunk[:HEADER_BYTES - len(head)]
                    if len(head) >= HEADER_BYTES:
                        check_header(plan.image_format, head)
                        judged = True
                writer.write(chunk)
                self.received += len(chunk)
                if self.received - reported >= PROGRESS_BYTES:
                    ctx.progress(self.received, total, "receiving")
                    reported = self.received
            if not judged:
                check_header(plan.image_format, head)
            writer.finish()
        ctx.progress(self.received, total, "received")
        ctx.log(f"received {self.received} bytes into {plan.pool}/{volume}")

    def too_long(self, limit: int) -> str:
        plan = self.plan
        if plan.temporary is None:
            return (f"the body is longer than RBD volume {plan.pool}/{plan.volume} "
                    f"({limit} bytes)")
        return f"the body is longer than the announced {limit} bytes (file_size)"

    def convert(self, temporary: str) -> int:
        plan, ctx, tools = self.plan, self.ctx, self.tools
        source = tools.access.filename(plan.pool, temporary)
        ctx.progress(0, plan.volume_size, "waiting for a conversion slot (tasks.workers)")
        while not tools.conversions.acquire(timeout=1.0):
            ctx.check()
        try:
            info = tools.qemu_img.info(source, plan.image_format)
            virtual = check_image_info(plan.image_format, info, plan.volume_size,
                                       plan.pool, temporary)
            ctx.log(f"qemu-img info: {plan.image_format}, virtual size {virtual} bytes")
            ctx.progress(0, virtual, "converting")
            tools.qemu_img.convert(
                source, plan.image_format, tools.access.filename(plan.pool, plan.volume),
                virtual, lambda percent: ctx.progress(int(virtual * percent / 100), virtual,
                                                      "converting"),
                ctx.stopped.is_set)
        finally:
            tools.conversions.release()
        ctx.check()
        return virtual

    def remove_artifacts(self) -> list[str]:
        """After success: the temporary volume and the undo snapshot go (newest first); a line
        per one that could not be removed."""
        record, left = self.ctx.record, []
        for artifact in list(reversed(record.artifacts)):
            try:
                remove_artifact(self.tools.calls, artifact, False,
                                self.tools.request_timeout)
            except PvcError as exc:
                left.append(f"{artifact.kind} {artifact.ref} ({exc})")
                continue
            record.artifacts.remove(artifact)
            self.ctx.commit()
        return left


def remove_artifact(calls: StorageStep, artifact: Artifact, roll_back: bool,
                    timeout: float) -> None:
    """Remove one artifact of an upload, idempotently: the temporary volume; the undo snapshot
    (after rolling the volume back to it when `roll_back`: that copies the volume's changed
    data back, so it is waited for at least `ROLLBACK_WAIT` s)."""
    if artifact.kind == TEMPORARY_VOLUME:
        pool, _, volume = artifact.ref.partition("/")
        try:
            calls("volume-remove", {"pool": pool, "volume": volume}, timeout)
        except NotFound:
            pass
        return
    if artifact.kind == UNDO_SNAPSHOT:
        spec, _, snapshot = artifact.ref.partition("@")
        pool, _, volume = spec.partition("/")
        args = {"pool": pool, "volume": volume, "snapshot": snapshot}
        try:
            if roll_back:
                _roll_back(calls, args, timeout)
            calls("snapshot-remove", args, timeout)
        except NotFound:
            pass
        return
    raise BackendError(f"an upload has no artifact of kind {artifact.kind!r}")


def _roll_back(calls: StorageStep, args: dict[str, str], timeout: float,
               clock: Callable[[], float] = time.monotonic) -> None:
    """Roll the volume back to the undo snapshot. The primary refuses while anyone has the
    volume open: after a crash the dead process's librbd watch stays until Ceph expires it
    (`osd_client_watch_timeout`, 30 s), so such a refusal is retried for `WATCH_EXPIRY` s."""
    deadline = clock() + WATCH_EXPIRY
    while True:
        try:
            calls("snapshot-rollback", args, max(timeout, ROLLBACK_WAIT))
            return
        except Conflict as exc:
            if "is open" not in str(exc) or clock() >= deadline:
                raise
            log.info("event=upload-rollback-waits volume=%s/%s reason=%s", args["pool"],
                     args["volume"], exc)
            time.sleep(WATCH_RETRY)


def upload_task_kind(calls: StorageStep, timeout: float) -> TaskKind:
    """`volume.upload` for the task registry: its body comes with its HTTP request, so no
    runner runs it (`run` refuses); the primary's janitor uses `undo` after an interruption."""

    def run(ctx: TaskContext) -> TaskOutcome:
        raise InvalidValue("a volume.upload task runs only in the API request that carries "
                           "its body (POST /storage/ceph/volume/<pool>/<volume>/upload)")

    def undo(artifact: Artifact) -> None:
        remove_artifact(calls, artifact, roll_back=True, timeout=timeout)

    return TaskKind(TASK_NAME, run, undo)


class UploadJob:
    """One upload task carried to its end in its own thread (module docstring)."""

    def __init__(self, plan: UploadPlan, ctx: TaskContext, session: UploadSession,
                 tools: UploadTools, kind: TaskKind) -> None:
        self.plan = plan
        self.ctx = ctx
        self.session = session
        self.tools = tools
        self.kind = kind

    def run(self) -> None:
        ctx, record, pipe = self.ctx, self.ctx.record, self.session.pipe
        upload = _Upload(self.plan, ctx, pipe, self.tools)
        try:
            outcome = upload.run(self.session.settle)
            ctx.check()
        except UploadBroken as exc:
            if self.session.refusal is not None:
                self.fail("InvalidValue", self.session.refusal)
            elif ctx.stopped.is_set():
                self.fail("Interrupted", f"interrupted: {ctx.stop_reason or exc}")
            else:
                self.fail("Interrupted", interrupted_message(upload.received,
                                                             self.plan.file_size))
        except TaskStopped as exc:
            if not ctx.taken_over:
                self.fail("Interrupted", f"interrupted: {exc}")
        except PvcError as exc:
            self.fail(type(exc).__name__, str(exc))
        except Exception as exc:  # a bug or an unexpected failure: reported, the node goes on
            log.exception("event=upload-error task=%s", record.id)
            self.fail("BackendError", f"internal error: {exc!r}")
        else:
            record.state, record.message, record.result = "success", outcome.message, \
                dict(outcome.result)
            record.finished = ctx.clock()
            ctx.commit()
            log.info("event=task-success task=%s name=%s bytes=%d", record.id, record.name,
                     upload.received)
        finally:
            pipe.close_reader("the upload's task has ended")
            self.session.settle()
            trim_heap()

    def fail(self, error: str, reason: str) -> None:
        ctx, record = self.ctx, self.ctx.record
        # the handler reads the rest of the body while this cleans up
        self.session.pipe.close_reader(reason)
        log.info("event=task-failure task=%s name=%s error=%s message=%s", record.id,
                 record.name, error, reason)
        ctx.flush()
        left = undo_artifacts(record, self.kind, ctx.commit)
        record.state, record.error = "failure", error
        record.message = failure_message(reason, left)
        record.finished = ctx.clock()
        ctx.commit()
