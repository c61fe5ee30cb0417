"""How a task changes Ceph: through storage requests (spec §0.2), written and waited for from
the task's thread.

A task that takes a snapshot, makes or removes a volume, or rolls one back writes the same
`storage/requests/<id>` the API writes, so the primary's per-object locks and the ZooKeeper
mirror stay as they are (`pvcd.controllers.storage`). `StorageCalls.run` writes one, then
sleeps until the cache shows it finished (a listener on the cache wakes it; no polling) and
returns it done, or raises the error its executor reported, of the same class.

Race named: the request may finish before the listener is subscribed; the cache is read once
after subscribing, so that finish is not missed.
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

ERRORS: dict[str, type[PvcError]] = {"InvalidValue": InvalidValue, "NotFound": NotFound,
                                     "Conflict": Conflict}


class StorageCalls:
    """Storage requests run to their end from a thread (module docstring)."""

    def __init__(self, view: ClusterView, store: Store,
                 clock: Callable[[], float] = time.time) -> None:
        self.view = view
        self.store = store
        self.clock = clock

    def run(self, op: str, args: dict[str, Any], timeout: float) -> StorageRequest:
        """Write the request `op` (target: the primary) and wait up to `timeout` s for it:
        the finished request, or its error (BackendError when it has not finished)."""
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
                changed.clear()
                doc = cache.get(path)
                if isinstance(doc, dict) and doc.get("state") in ("done", "failed"):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendError(f"storage request {request.id} ({op}) has not finished "
                                       f"after {timeout:g} s (GET /api/v1/tasks/{request.id})")
                changed.wait(min(left, 5.0))  # a missed notification costs 5 s at most
        finally:
            cache.unsubscribe(listener)
        result = from_dict(StorageRequest, doc)
        if result.state == "failed":
            raise ERRORS.get(result.error or "", BackendError)(result.message)
        return result
