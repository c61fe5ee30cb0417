"""A task's Ceph steps: storage requests written from a task's thread and waited for there.

Tasks change Ceph only through storage requests (extensions.md §0.2 "Ceph steps"), so the
primary's executor serialises them per object and keeps the mirror exact, as for the API's own
requests. `StorageSteps.run` writes one request and blocks the calling task worker until the
request has finished, woken by the cache's change notification for its znode (no polling of
ZooKeeper); it looks at the task's `check` every `CHECK_INTERVAL` seconds, so a stopped task
stops waiting (the request itself goes on; the undo queues behind it on the same volume).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound, PvcError
from pvcd.domain.records import StorageRequest, from_dict
from pvcd.domain.states import PRIMARY_TARGET
from pvcd.domain.tasks import new_id
from pvcd.specs.storage import check_storage_request
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

CHECK_INTERVAL = 0.5  # seconds between two looks at the task's stop flag
_ERRORS: dict[str, type[PvcError]] = {"InvalidValue": InvalidValue, "NotFound": NotFound,
                                      "Conflict": Conflict}


class StorageSteps:
    def __init__(self, view: ClusterView, store: Store,
                 clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.store = store
        self.clock = clock

    def run(self, op: str, args: dict[str, Any], check: Callable[[], None] = lambda: None,
            timeout: float = 3600.0) -> StorageRequest:
        """Carry out one primary storage request; its result when done, else the error its
        executor raised (of the same class)."""
        check_storage_request(op, args)
        request = StorageRequest(id=new_id(self.clock()), op=op, args=args,
                                 target=PRIMARY_TARGET, created=self.clock())
        path = self.view.paths.storage_request(request.id)
        changed = threading.Event()

        def listener(changed_path: str) -> None:
            if changed_path == path:
                changed.set()

        cache = self.view.cache
        cache.subscribe(listener)
        try:
            self.store.commit([Op.create(path, request.to_doc())])
            deadline = time.monotonic() + timeout
            while True:
                doc = cache.get(path)
                if isinstance(doc, dict) and doc.get("state") in ("done", "failed"):
                    result = from_dict(StorageRequest, doc)
                    if result.state == "done":
                        return result
                    raise _ERRORS.get(result.error or "", BackendError)(result.message)
                check()
                if time.monotonic() >= deadline:
                    raise BackendError(f"storage request {request.id} ({op}) has not finished "
                                       f"after {timeout:g} s; it keeps going on the primary")
                changed.wait(CHECK_INTERVAL)
                changed.clear()
        finally:
            cache.unsubscribe(listener)
