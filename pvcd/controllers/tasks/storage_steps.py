"""A task's Ceph steps: storage requests written and awaited from the task's thread.

Tasks change Ceph only through storage requests (spec extensions.md §0.2), so per-object
locking and the mirror stay as they are: a volume a task creates is in the mirror the moment
the request is done, and a volume it removes leaves it the same way. `run_storage_request`
writes the request (checked with the rules its executor checks again) and waits for it on the
cache's change notifications, without polling ZooKeeper; `undo` functions call it too, on
whichever node cleans up.

Race named: the notification of the request's end may come before the listener is in place
(a fast request): the state is read from the cache after subscribing, and again after every
wake-up or `WAKE_EVERY` seconds.
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

WAKE_EVERY = 1.0  # seconds: a look at the request (and `stopped`) even without a notification
_ERRORS: dict[str, type[PvcError]] = {"InvalidValue": InvalidValue, "NotFound": NotFound,
                                      "Conflict": Conflict}


def run_storage_request(view: ClusterView, store: Store, op: str, args: dict[str, Any],
                        timeout: float, clock: Callable[[], float] = time.time,
                        monotonic: Callable[[], float] = time.monotonic) -> StorageRequest:
    """Write storage request `op` for the primary and wait up to `timeout` s for its end: the
    request when done; the executor's error (its class) when failed; BackendError at the
    timeout (the request keeps going)."""
    check_storage_request(op, args)
    request = StorageRequest(id=new_id(clock()), op=op, args=args, target=PRIMARY_TARGET,
                             created=clock())
    path = view.paths.storage_request(request.id)
    wake = threading.Event()

    def changed(changed_path: str) -> None:
        if changed_path == path:
            wake.set()

    view.cache.subscribe(changed)
    try:
        store.commit([Op.create(path, request.to_doc())])
        deadline = monotonic() + timeout
        while True:
            doc = view.cache.get(path)
            current = from_dict(StorageRequest, doc) if isinstance(doc, dict) else request
            if current.state == "done":
                return current
            if current.state == "failed":
                raise _ERRORS.get(current.error or "", BackendError)(current.message)
            left = deadline - monotonic()
            if left <= 0:
                raise BackendError(f"storage request {request.id} ({op}) has not finished "
                                   f"after {timeout:g} s; it keeps going on the primary")
            wake.wait(min(left, WAKE_EVERY))
            wake.clear()
    finally:
        view.cache.unsubscribe(changed)
