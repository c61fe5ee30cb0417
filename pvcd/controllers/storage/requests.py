"""Storage requests: claimed, carried out and finished by the node they are addressed to.

The API writes `storage/requests/<id>` (`StorageRequest`: op, args, target) and waits for its
result; there is no shared command slot, so any number of requests can be in flight. The target
is `primary` for pools, volumes, snapshots, cluster flags and OSD in/out (cluster-map changes,
done by whichever node is primary: `primary`), or a node's name for OSD add and removal (the
node that owns the device: `osds`). A `RequestExecutor` claims a pending request with a
compare-and-set (`running`, `executor`), checks it with the API's rules (`pvcd.specs.storage`:
a request written past the API that breaks them fails with the reason, and nothing reaches Ceph
or the node's devices), runs its handler, and then writes the result *and* the ZooKeeper objects
Ceph confirmed in one transaction, so an object never appears before Ceph has it and a `done`
request always has its objects. Requests on the same object are serialised
(`KeyedLocks`); requests on different objects run in parallel (the controller's workers).

Races named. (1) The primary changes while a request runs: the old primary's `stop()` waits for
its running requests (`wait_idle`); a request left `running` by a process that is gone (crash)
is marked `failed` ("interrupted") by the next executor, and the sync re-reads Ceph, so the
mirror shows what really happened. (2) The mirror write loses a race (its pool was deleted
meanwhile): the result is retried with mirror ops built afresh from the cache, and after
`COMMIT_TRIES` the request fails saying so; the next sync makes the mirror match Ceph.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pvcd.controllers.base import DONE, Result
from pvcd.domain.errors import Conflict, InvalidValue, PvcError
from pvcd.domain.records import MIRRORED_MAX, StorageRequest, from_dict
from pvcd.specs.storage import check_storage_request
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

OSD_OPS = ("osd-add", "osd-remove")  # carried out by the node that owns the OSD
COMMIT_TRIES = 5

Handler = Callable[[StorageRequest, Callable[[str], None]], "Outcome"]


def request_key(request_id: str) -> str:
    return f"req/{request_id}"


def category(op: str) -> str:
    return "osd" if op in OSD_OPS or op == "osd-state" else "rbd"


@dataclass
class Outcome:
    """What an executed request reports, and the mirror changes Ceph confirmed (built from the
    cache at commit time, so a retry after a lost race builds them afresh)."""

    message: str
    result: dict[str, Any] = field(default_factory=dict)
    ops: Callable[[], list[Op]] = lambda: []


class KeyedLocks:
    """One lock per object name; `hold(names)` takes several in a fixed order (no deadlock)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, names: Iterable[str]) -> Iterator[None]:
        ordered = sorted(set(names))
        taken: list[str] = []
        try:
            for name in ordered:
                with self._guard:
                    lock, users = self._locks.get(name, (threading.Lock(), 0))
                    self._locks[name] = (lock, users + 1)
                taken.append(name)
                lock.acquire()
            yield
        finally:
            for name in reversed(taken):
                with self._guard:
                    lock, users = self._locks[name]
                    lock.release()
                    if users == 1:
                        del self._locks[name]
                    else:
                        self._locks[name] = (lock, users - 1)


class RequestExecutor:
    """Claims, runs and finishes the storage requests addressed to `target` (shared by the
    primary's and the nodes' storage services). `active` False: requests are left alone (the
    primary's executor, while this node is not primary)."""

    def __init__(self, name: str, target: str, view: ClusterView, store: Store,
                 handlers: dict[str, Handler],
                 lock_names: Callable[[StorageRequest], list[str]],
                 clock: Callable[[], float] = time.time,
                 on_finished: Callable[[StorageRequest], None] = lambda request: None,
                 active: bool = True) -> None:
        self.name = name
        self.target = target
        self.view = view
        self.store = store
        self.handlers = handlers
        self.lock_names = lock_names
        self.clock = clock
        self.on_finished = on_finished
        self.executor_id = f"{name}/{os.getpid()}"
        self.locks = KeyedLocks()
        self.active = active
        self._running: set[str] = set()
        self._running_changed = threading.Condition()

    def keys(self) -> list[str]:
        paths = self.view.paths
        keys = []
        for request_id in self.view.cache.children(paths.storage_requests):
            doc = self.view.cache.get(paths.storage_request(request_id))
            if isinstance(doc, dict) and doc.get("target") == self.target and \
                    doc.get("state") in ("pending", "running"):
                keys.append(request_key(request_id))
        return keys

    def key_of_path(self, path: str) -> str | None:
        prefix = self.view.paths.storage_requests + "/"
        if not path.startswith(prefix):
            return None
        request_id = path[len(prefix):]
        doc = self.view.cache.get(path)
        if "/" in request_id or not isinstance(doc, dict) or doc.get("target") != self.target:
            return None
        return request_key(request_id) if doc.get("state") in ("pending", "running") else None

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._running_changed:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._running_changed.wait(left)
        return True

    def running_count(self) -> int:
        return len(self._running)

    # reconcile
    def reconcile(self, key: str) -> Result:
        request_id = key.split("/", 1)[1]
        path = self.view.paths.storage_request(request_id)
        entry = self.view.cache.entry(path)
        if not self.active or entry is None or not isinstance(entry.doc, dict):
            return DONE
        try:
            request = from_dict(StorageRequest, entry.doc)
        except TypeError:  # not a request (written past the API): nothing to carry out
            log.warning("event=storage-request-refused node=%s request=%s reason=not-a-request",
                        self.name, request_id)
            return DONE
        if request.target != self.target or request_id in self._running:
            return DONE
        if request.state == "running":
            # not running here: its executor is gone (crash, restart, lost primary role)
            self._finish(path, request, entry.version, ok=False, error="BackendError",
                         message=f"interrupted: {request.executor or 'its executor'} stopped "
                                 "while carrying it out; Ceph was re-read, the storage objects "
                                 "show what was done")
            return DONE
        if request.state != "pending":
            return DONE
        request.state, request.executor, request.started = "running", self.executor_id, \
            self.clock()
        try:
            version = self.store.commit([Op.set(path, request.to_doc(), entry.version)])[0].version
        except Conflict:
            return DONE  # changed meanwhile (deleted, or claimed): the watch brings it back
        with self._running_changed:
            self._running.add(request_id)
        try:
            self._execute(path, request, version)
        finally:
            with self._running_changed:
                self._running.discard(request_id)
                self._running_changed.notify_all()
        return DONE

    def _execute(self, path: str, request: StorageRequest, version: int) -> None:
        started = time.monotonic()
        handler = self.handlers.get(request.op)
        versions = [version]

        def progress(text: str) -> None:
            request.progress = text
            try:
                versions[0] = self.store.commit(
                    [Op.set(path, request.to_doc(), versions[0])])[0].version
            except PvcError as exc:
                log.info("event=storage-progress-not-written request=%s error=%s", request.id,
                         exc)

        try:
            try:  # with the API's rules: anything that reaches ZooKeeper can write a request
                check_storage_request(request.op, request.args)
            except InvalidValue as exc:
                raise InvalidValue(f"refused by node {self.name}: invalid storage request: "
                                   f"{exc}") from None
            if handler is None:
                raise InvalidValue(f"unknown storage operation {request.op!r}")
            with self.locks.hold(self.lock_names(request)):
                outcome = handler(request, progress)
        except PvcError as exc:
            log.info("event=storage-request-failed node=%s request=%s op=%s error=%s",
                     self.name, request.id, request.op, exc)
            self._finish(path, request, versions[0], ok=False, error=type(exc).__name__,
                         message=str(exc))
            return
        except Exception as exc:  # a bug or an unexpected tool failure: report it, keep going
            log.exception("event=storage-request-error node=%s request=%s", self.name, request.id)
            self._finish(path, request, versions[0], ok=False, error="BackendError",
                         message=f"internal error: {exc!r}")
            return
        log.info("event=storage-request-done node=%s request=%s op=%s seconds=%.3f", self.name,
                 request.id, request.op, time.monotonic() - started)
        self._finish(path, request, versions[0], ok=True, message=outcome.message,
                     result=outcome.result, ops=outcome.ops)

    def _finish(self, path: str, request: StorageRequest, version: int, ok: bool, message: str,
                error: str | None = None, result: dict[str, Any] | None = None,
                ops: Callable[[], list[Op]] | None = None) -> None:
        request.state = "done" if ok else "failed"
        request.message, request.error = message, error
        request.result = result or {}
        request.finished = self.clock()
        problem: PvcError | None = None
        for _ in range(COMMIT_TRIES):
            mirror_ops = ops() if ops is not None else []
            changed = [[op.kind, op.path] for op in mirror_ops if op.kind in ("create", "delete")]
            request.mirrored = changed if len(changed) <= MIRRORED_MAX else []
            try:
                self.store.commit([*mirror_ops, Op.set(path, request.to_doc(), version)])
                self.on_finished(request)
                return
            except PvcError as exc:
                problem = exc
                current = self.store.read_optional(path)
                if current is None:
                    return  # the request was deleted meanwhile: nobody waits for it
                version = current[1].version
        # the mirror could not be written (e.g. its pool was deleted meanwhile): say so; the
        # next sync makes the mirror match Ceph
        request.state, request.error = "failed", "Conflict"
        request.message = (f"{message}; but recording it in ZooKeeper failed ({problem}); the "
                           "next refresh from Ceph shows the real state")
        try:
            self.store.commit([Op.set(path, request.to_doc(), version)])
        except PvcError as exc:
            log.warning("event=storage-request-unrecorded request=%s error=%s", request.id, exc)
        self.on_finished(request)

