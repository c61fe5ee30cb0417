"""The node controller: this node's own record in the cluster.

It owns three things:
- `NodeStatusWriter`: the one writer of this node's status document in this process (the
  keepalive, the domain-state reconcile and the coordinator all go through it), so in-process
  writers never race each other and a concurrent outside write (a later fencing decision) is
  caught by the version check and re-applied on top.
- the keepalive: every interval, live statistics and a timestamp, so a hung daemon (session
  alive, process frozen) can be told from a live one.
- the domain-state reconcile: a `flush` / `ready` request recorded in the node's spec is carried
  out here, one level-based step per reconcile (`pvcd.controllers.flush`), and reported as
  `flush` → `flushed` / `unflush` → `ready`; `flushed` is written together with domain counts
  that show nothing running.
- the domain counts (`running_domains`, allocation) in the node's record, refreshed on every
  libvirt lifecycle event and VM change, so the record follows a VM start, stop or migration
  within a second rather than at the next keepalive; a stop at once, starts at most one write
  per `DOMAINS_INTERVAL` (the starts in between are folded into the next): the record lists every
  running VM of the node, and one write per VM start made a mass start cost O(VMs²) in every
  daemon's cache (3,333 writes of up to 130 KB per node at 10,000 VMs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from pvcd.controllers.base import DONE, Result
from pvcd.controllers.flush import flush_step, ready_step
from pvcd.controllers.running_domains import RunningDomains
from pvcd.controllers.self_fence import DeclaredDead
from pvcd.domain.errors import Conflict
from pvcd.domain.records import NodeSpec, NodeStats, NodeStatus
from pvcd.drivers.host import HostDriver
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

STEP_INTERVAL = 0.25  # between the steps of a flush or ready while VMs are on their way
DOMAINS_INTERVAL = 0.5  # seconds at least between two event-driven writes of the domain counts


class NodeStatusWriter:
    """Serialises every write of one node's status document (compare-and-set)."""

    def __init__(self, store: Store, path: str, clock: Callable[[], float] = time.time,
                 yield_to_fence: bool = False) -> None:
        """`yield_to_fence`: never write over a `dead` or `fenced` state the primary wrote
        (raise DeclaredDead instead): a self-fencing node (`pvcd.controllers.self_fence`)."""
        self._store = store
        self._path = path
        self._clock = clock
        self._yield_to_fence = yield_to_fence
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

    def note(self, change: Callable[[NodeStatus], None]) -> None:
        """Change the status in memory only, for the next `update` to write (no ZooKeeper:
        for a caller that may not reach it)."""
        with self._lock:
            change(self.status)

    def update(self, change: Callable[[NodeStatus], None]) -> NodeStatus:
        with self._lock:
            for _ in range(10):
                change(self.status)
                if self._version is None:
                    current = self._store.read_optional(self._path)
                    if current is not None and self._yield_to_fence and \
                            isinstance(current[0], dict) and \
                            current[0].get("daemon_state") in ("dead", "fenced"):
                        raise DeclaredDead(f"the primary marked this node "
                                           f"{current[0]['daemon_state']}")
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


class DomainLister(Protocol):
    """What the node controller needs of the hypervisor driver: the domains it has now."""

    def list_domains(self) -> list[Any]: ...
    def domain_state(self, uuid: str) -> Any: ...


class NodeController:
    """Reconciles this node's domain state and writes its keepalive and domain counts."""

    def __init__(self, name: str, view: ClusterView, store: Store, writer: NodeStatusWriter,
                 host: HostDriver, domains: DomainLister,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.view = view
        self.store = store
        self.writer = writer
        self.host = host
        self.running = RunningDomains(domains)
        self.clock = clock
        self._domains_written = float("-inf")  # when refresh_domains last wrote (self.clock)

    def key(self) -> str:
        return f"node/{self.name}"

    def domains_key(self) -> str:
        """Enqueued on every libvirt lifecycle event and VM change: refresh the domain counts
        in this node's record at once, not only at the next keepalive."""
        return f"node/{self.name}/domains"

    def relist_key(self) -> str:
        """The resync's: list every domain in libvirt again (a missed event's safety net)."""
        return f"node/{self.name}/domains-listed"

    def keys(self) -> list[str]:
        return [self.key(), self.relist_key()]

    def note_domain(self, uuid: str) -> None:
        """A libvirt lifecycle event of domain `uuid` (on libvirt's event thread; the caller
        enqueues `domains_key()` too)."""
        self.running.note(uuid)

    def reconcile(self, key: str) -> Result:
        if key in (self.domains_key(), self.relist_key()):
            if key == self.relist_key():
                self.running.relist()
            else:
                wait = self._domains_written + DOMAINS_INTERVAL - self.clock()
                if wait > 0 and not self._stopped_since_written():
                    return Result(requeue_after=wait)  # fold what else starts until then in
            self.refresh_domains()
            return DONE
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
        flush = spec.domain_state == "flush"
        moving, settled = ("flush", "flushed") if flush else ("unflush", "ready")
        if self.writer.status.domain_state != moving:
            log.info("event=domain-state node=%s state=%s request=%d", self.name, moving,
                     spec.domain_request)
            self.writer.update(lambda s: setattr(s, "domain_state", moving))
        self.running.relist()  # a flush ends on what libvirt runs, not on what it said
        running = self._running()
        done = flush_step(self.view, self.store, self.name, running) if flush else \
            ready_step(self.view, self.store, self.name)
        if not done:
            return Result(requeue_after=STEP_INTERVAL)
        alloc = self._allocation(running)

        def finish(status: NodeStatus) -> None:
            status.domain_state = settled
            status.domain_request_done = spec.domain_request
            _apply_allocation(status, alloc)  # `flushed` and the domain counts agree

        self.writer.update(finish)
        log.info("event=domain-state node=%s state=%s request=%d", self.name, settled,
                 spec.domain_request)
        return DONE

    def refresh_domains(self) -> None:
        alloc = self._allocation(self._running())
        status = self.writer.status
        if (status.stats.memory_allocated, status.stats.vcpu_allocated,
                status.stats.domains_count, status.stats.running_domains) == alloc:
            return
        self.writer.update(lambda s: _apply_allocation(s, alloc))
        self._domains_written = self.clock()

    def _stopped_since_written(self) -> bool:
        """Whether a domain the record lists as running has stopped since: a stop is written
        at once (the API's "runs on" checks read the list; only starts are folded)."""
        return not set(self.writer.status.stats.running_domains) <= self.running.current()

    def keepalive(self) -> None:
        stats = self.host.stats()
        alloc = self._allocation(self._running())
        now = self.clock()

        def change(status: NodeStatus) -> None:
            status.keepalive = now
            status.stats = NodeStats(
                cpu_count=stats.cpu_count, kernel=stats.kernel, os=stats.os, arch=stats.arch,
                load=stats.load, memory_total=stats.memory_total,
                memory_used=stats.memory_used, memory_free=stats.memory_free,
                vcpu_total=stats.cpu_count)
            _apply_allocation(status, alloc)

        self.writer.update(change)

    def _running(self) -> list[str]:
        return sorted(self.running.current())

    def _allocation(self, running: list[str]) -> tuple[int, int, int, list[str]]:
        """Memory and vCPUs of the VMs assigned here that should run, their number, and the
        UUIDs libvirt runs here."""
        memory, vcpus, count = self.view.assigned(self.name)
        return memory, vcpus, count, running


def _apply_allocation(status: NodeStatus, alloc: tuple[int, int, int, list[str]]) -> None:
    stats = status.stats
    stats.memory_allocated, stats.vcpu_allocated, stats.domains_count, running = alloc
    stats.running_domains = list(running)


def _settled(observed: str, requested: str) -> bool:
    return (requested, observed) in (("flush", "flushed"), ("ready", "ready"))


