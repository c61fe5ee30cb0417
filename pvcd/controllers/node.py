"""The node controller: this node's own record in the cluster.

It owns three things:
- `NodeStatusWriter`: the one writer of this node's status document in this process (the
  keepalive, the domain-state reconcile and the coordinator all go through it), so in-process
  writers never race each other and a concurrent outside write (a later fencing decision) is
  caught by the version check and re-applied on top.
- the keepalive: every interval, live statistics and a timestamp, so a hung daemon (session
  alive, process frozen) can be told from a live one.
- the domain-state reconcile: a `flush` / `ready` request recorded in the node's spec is carried
  out here and reported as `flush` → `flushed` / `unflush` → `ready`. Moving VMs is done by the
  VM controller's `evacuate` / `restore` hooks once VMs exist; with none, the change completes
  at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pvcd.controllers.base import DONE, Result
from pvcd.domain.errors import Conflict
from pvcd.domain.records import NodeSpec, NodeStats, NodeStatus, from_dict
from pvcd.drivers.host import HostDriver
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)


class NodeStatusWriter:
    """Serialises every write of one node's status document (compare-and-set)."""

    def __init__(self, store: Store, path: str, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self.status = NodeStatus()
        self._version: int | None = None  # None: not written by this process yet

    def reset(self, status: NodeStatus) -> None:
        with self._lock:
            self.status = status
            self._version = None

    def create_ops(self) -> list[Op]:
        """Ops that (re)create the status document from the in-memory status."""
        return [Op.create(self._path, self.status.to_doc())]

    def mark_written(self, version: int) -> None:
        with self._lock:
            self._version = version

    def update(self, change: Callable[[NodeStatus], None]) -> NodeStatus:
        with self._lock:
            for _ in range(10):
                change(self.status)
                if self._version is None:
                    current = self._store.read_optional(self._path)
                    if current is None:
                        self._store.commit([Op.create(self._path, self.status.to_doc())])
                        self._version = 0
                        return self.status
                    self._version = current[1].version
                try:
                    result = self._store.commit([Op.set(self._path, self.status.to_doc(),
                                                        self._version)])
                    self._version = result[0].version
                    return self.status
                except Conflict:
                    self._version = None  # someone else wrote; re-read the version and retry
            raise Conflict(f"{self._path}: could not write node status")


class NodeController:
    """Reconciles this node's domain state and writes its keepalive."""

    def __init__(self, name: str, view: ClusterView, store: Store, writer: NodeStatusWriter,
                 host: HostDriver, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.view = view
        self.store = store
        self.writer = writer
        self.host = host
        self.clock = clock
        # hooks for the VM controller: move every VM off / back; True when done, False when
        # cancelled (a newer request) or not possible yet
        self.evacuate: Callable[[Callable[[], bool]], bool] = lambda cancelled: True
        self.restore: Callable[[Callable[[], bool]], bool] = lambda cancelled: True
        self.allocation: Callable[[], dict[str, Any]] = lambda: {}

    def key(self) -> str:
        return f"node/{self.name}"

    def keys(self) -> list[str]:
        return [self.key()]

    def reconcile(self, key: str) -> Result:
        if key != self.key():
            return DONE
        spec = self.view.node_spec(self.name)
        if spec is None:
            return DONE
        status = self.writer.status
        if spec.domain_request <= status.domain_request_done and \
                _settled(status.domain_state, spec.domain_state):
            return DONE
        return self._change_domain_state(spec)

    def _change_domain_state(self, spec: NodeSpec) -> Result:
        moving, settled = ("flush", "flushed") if spec.domain_state == "flush" else \
            ("unflush", "ready")
        log.info("event=domain-state node=%s state=%s request=%d", self.name, moving,
                 spec.domain_request)
        self.writer.update(lambda s: setattr(s, "domain_state", moving))

        def cancelled() -> bool:
            current = self.view.node_spec(self.name)
            return current is None or current.domain_request != spec.domain_request

        done = self.evacuate(cancelled) if spec.domain_state == "flush" else \
            self.restore(cancelled)
        if not done:
            if cancelled():
                log.info("event=domain-state-cancelled node=%s request=%d", self.name,
                         spec.domain_request)
                return DONE  # the newer request is queued already
            return Result(requeue_after=1.0)  # e.g. no target node yet: try again

        def finish(status: NodeStatus) -> None:
            status.domain_state = settled
            status.domain_request_done = spec.domain_request

        self.writer.update(finish)
        log.info("event=domain-state node=%s state=%s request=%d", self.name, settled,
                 spec.domain_request)
        return DONE

    def keepalive(self) -> None:
        stats = self.host.stats()
        alloc = self.allocation()
        now = self.clock()

        def change(status: NodeStatus) -> None:
            status.keepalive = now
            status.stats = NodeStats(
                cpu_count=stats.cpu_count, kernel=stats.kernel, os=stats.os, arch=stats.arch,
                load=stats.load, memory_total=stats.memory_total,
                memory_used=stats.memory_used, memory_free=stats.memory_free,
                memory_allocated=int(alloc.get("memory_allocated", 0)),
                vcpu_total=stats.cpu_count,
                vcpu_allocated=int(alloc.get("vcpu_allocated", 0)),
                domains_count=int(alloc.get("domains_count", 0)),
                running_domains=list(alloc.get("running_domains", [])),
            )

        self.writer.update(change)


def _settled(observed: str, requested: str) -> bool:
    return (requested, observed) in (("flush", "flushed"), ("ready", "ready"))


def status_from_doc(doc: Any) -> NodeStatus:
    return from_dict(NodeStatus, doc)
