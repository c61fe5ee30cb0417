"""`UploadService`: where the API hands an accepted upload over to its job (extensions.md §2.1).

The API runs in the primary's daemon, and an upload's body arrives in that process, so its job
runs there too, in a thread of its own per upload: the body is received whatever
`tasks.workers` says (spec §1.2); only the conversions after it take one of `tasks.workers`
slots. The task is created already claimed by this process (`running`, `executor` =
`<node>/<pid>`, as the task runner claims), so no runner takes it, and if the process dies the
primary's janitor declares it interrupted and removes its artifacts with the kind's `undo`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable

from pvcd.controllers.tasks.context import TaskContext
from pvcd.controllers.tasks.storage_steps import run_storage_request
from pvcd.controllers.uploads.job import UploadJob, UploadTools, upload_task_kind
from pvcd.controllers.uploads.session import UploadSession
from pvcd.domain.pool_space import check_room
from pvcd.domain.tasks import TaskRecord
from pvcd.domain.uploads import UploadPlan
from pvcd.drivers.ceph.driver import CephDriver
from pvcd.drivers.ceph.rbd_stream import RbdConnection
from pvcd.drivers.qemu_img import QemuImg, RbdAccess
from pvcd.state.store import Store
from pvcd.state.view import ClusterView
from pvcd.upload_pipe import UploadPipe


class UploadService:
    """Starts upload jobs in this process (module docstring)."""

    def __init__(self, node: str, view: ClusterView, store: Store, ceph: CephDriver,
                 request_timeout: float, workers: int,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.store = store
        self.ceph = ceph
        self.clock = clock
        self.monotonic = monotonic
        self.executor = f"{node}/{os.getpid()}"  # as the task runner claims
        calls = functools.partial(run_storage_request, view, store, clock=clock)
        self.kind = upload_task_kind(calls, request_timeout)
        self.tools = UploadTools(calls, RbdConnection(ceph.conf_path, ceph.keyring_path,
                                                      ceph.timeout),
                                 RbdAccess(ceph.conf_path, ceph.keyring_path),
                                 QemuImg(ceph.timeout), request_timeout,
                                 threading.Semaphore(workers))

    def check_room(self, pool: str, size: int) -> None:
        """InvalidValue unless the pool can take a temporary volume of `size` bytes (its free
        space after replication, `ceph df`; the 80 % soft cap is not applied to it)."""
        check_room(self.ceph.pool_space(pool), size,
                   f"the upload's temporary volume ({size} bytes)", force=True)

    def begin(self, record: TaskRecord, version: int, plan: UploadPlan) -> UploadSession:
        """Start the job of the task `record` (created `running` under `self.executor`, at
        `version`); the session its request feeds. Called on the API's event loop."""
        session = UploadSession(asyncio.get_running_loop(),
                                UploadPipe(expected=plan.file_size or None))
        ctx = TaskContext(record, self.view.paths.task(record.id), version, self.store,
                          self.executor, self.clock, self.monotonic)
        job = UploadJob(plan, ctx, session, self.tools, self.kind)
        threading.Thread(target=job.run, name=f"upload-{record.id}", daemon=True).start()
        return session
