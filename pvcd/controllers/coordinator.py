"""Coordinator election and orderly handover of the primary role.

The lock is an ephemeral znode `<root>/coordinator/primary`: creating it is atomic and fails if it
exists, and it disappears with its holder's session, so at most one coordinator holds it and a
dead holder frees it after the session timeout. No last-writer-wins anywhere.

A handover is a request object `<root>/coordinator/handover` {from_node, to_node, requested}
written by the API. The holder named `from_node` relinquishes: it stops everything that follows
the primary (the API, later floating IPs, gateways, DHCP) *before* it deletes the lock, so the new
primary never overlaps with the old one. Contenders respect the request: only `to_node` (or, when
it is empty, anyone but `from_node`) may take the lock, until the request is older than the
handover timeout or its target is gone. The winner deletes the request in the same transaction
that creates the lock.

Races named: (1) two contenders create at once: ZooKeeper lets one win. (2) the primary loses its
session: it stops its services when it sees LOST, and a `reconcile` also drops the role as soon as
the lock is not owned by its current session. (3) a handover target that died: the request goes
stale and the others contend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pvcd.controllers.base import DONE, Result
from pvcd.controllers.node import NodeStatusWriter
from pvcd.domain.errors import BackendError, Conflict
from pvcd.domain.records import Handover, PrimaryLock
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

KEY = "coordinator"


class PrimaryServices:
    """What runs only on the primary. `start` may raise to be retried; `stop` must not fail."""

    def __init__(self) -> None:
        self._starts: list[tuple[str, Callable[[], None]]] = []
        self._stops: list[tuple[str, Callable[[], None]]] = []

    def add(self, name: str, start: Callable[[], None], stop: Callable[[], None]) -> None:
        self._starts.append((name, start))
        self._stops.insert(0, (name, stop))

    def start(self) -> None:
        for name, start in self._starts:
            log.info("event=primary-service-start service=%s", name)
            start()

    def stop(self) -> None:
        for name, stop in self._stops:
            try:
                stop()
                log.info("event=primary-service-stop service=%s", name)
            except Exception:
                log.exception("event=primary-service-stop-failed service=%s", name)


class Coordinator:
    """The election state machine of one coordinator node, run as a reconcile of one key."""

    def __init__(self, name: str, view: ClusterView, store: Store, writer: NodeStatusWriter,
                 services: PrimaryServices, session_id: Callable[[], int | None],
                 handover_timeout: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.view = view
        self.store = store
        self.writer = writer
        self.services = services
        self.session_id = session_id  # our ZooKeeper session while registered, else None
        self.handover_timeout = handover_timeout
        self.clock = clock
        self.is_primary = False
        self.services_up = False
        self.stopping = False
        self._lock = threading.RLock()

    # reconcile
    def reconcile(self, key: str) -> Result:
        with self._lock:
            return self._reconcile()

    def _reconcile(self) -> Result:
        session = self.session_id()
        if session is None:
            if self.is_primary:
                self._drop("session lost")
            return Result(requeue_after=0.5)
        lock = self.view.primary_entry()
        handover = self.view.handover()
        if self.is_primary:
            if lock is None or lock.ephemeral_owner not in (0, session):
                self._drop("lock no longer ours")
                return Result(requeue_after=0.05)
            if self.stopping or (handover is not None and handover.from_node == self.name):
                self._relinquish()
                return DONE
            if not self.services_up:
                return self._start_services()
            if handover is not None:
                self._delete_stale_handover(handover)
            return DONE
        if lock is not None and lock.ephemeral_owner == session and not self.stopping \
                and (lock.doc or {}).get("node") == self.name:
            # still ours (e.g. dropped while the connection was in doubt): take it back up
            self.is_primary = True
            return self._start_services()
        if self.stopping or lock is not None:
            return DONE
        eligible, wait = self._eligible(handover)
        if not eligible:
            return Result(requeue_after=wait)
        return self._take(handover)

    def _eligible(self, handover: Handover | None) -> tuple[bool, float]:
        if handover is None:
            return True, 0.0
        left = self.handover_timeout - (self.clock() - handover.requested)
        if left <= 0 or handover.to_node == self.name:
            return True, 0.0
        if handover.to_node is None:
            return (handover.from_node != self.name), max(0.05, left)
        if not self.view.node_alive(handover.to_node):
            return True, 0.0
        return False, max(0.05, left)

    def _take(self, handover: Handover | None) -> Result:
        ops = [Op.create(self.view.paths.primary,
                         PrimaryLock(self.name, self.clock()).to_doc(), ephemeral=True)]
        entry = self.view.cache.entry(self.view.paths.handover)
        if handover is not None and entry is not None:
            ops.append(Op.delete(self.view.paths.handover, entry.version))
        try:
            self.store.commit(ops)
        except Conflict as exc:
            log.info("event=election-lost node=%s reason=%s", self.name, exc)
            return Result(requeue_after=0.05)
        self.is_primary = True
        log.info("event=primary-acquired node=%s", self.name)
        self._set_state("takeover")
        return self._start_services()

    def _start_services(self) -> Result:
        try:
            self.services.start()
        except Exception as exc:
            log.warning("event=primary-services-not-ready node=%s error=%s", self.name, exc)
            self.services.stop()
            return Result(requeue_after=0.1)
        self.services_up = True
        self._set_state("primary")
        return DONE

    def _relinquish(self) -> None:
        log.info("event=relinquish node=%s", self.name)
        self._set_state("relinquish")
        self.services.stop()
        self.services_up = False
        lock = self.view.primary_entry()
        try:
            self.store.commit([Op.delete(self.view.paths.primary,
                                         lock.version if lock is not None else -1)])
        except (Conflict, BackendError) as exc:
            log.warning("event=relinquish-delete-failed node=%s error=%s", self.name, exc)
        self.is_primary = False
        self._set_state("secondary")
        log.info("event=primary-released node=%s", self.name)

    def _drop(self, reason: str) -> None:
        """Stop acting as primary at once, without touching ZooKeeper (we may not reach it)."""
        log.warning("event=primary-dropped node=%s reason=%s", self.name, reason)
        self.services.stop()
        self.services_up = False
        self.is_primary = False
        # written by the next keepalive or re-registration: a write now would wait on the
        # connection while holding the coordinator's lock (and the daemon's shutdown with it)
        self.writer.note(lambda s: setattr(s, "coordinator_state", "secondary"))

    def _delete_stale_handover(self, handover: Handover) -> None:
        if handover.from_node != self.name:  # made for an earlier primary: done or moot
            entry = self.view.cache.entry(self.view.paths.handover)
            if entry is not None:
                try:
                    self.store.commit([Op.delete(self.view.paths.handover, entry.version)])
                except (Conflict, BackendError):
                    pass

    def _set_state(self, state: str) -> None:
        self.writer.update(lambda s: setattr(s, "coordinator_state", state))

    # shutdown
    def shutdown(self) -> None:
        """Release the role (if held) and stop contending: used on SIGTERM."""
        with self._lock:
            self.stopping = True
            if self.is_primary:
                try:
                    self._relinquish()
                except Exception:
                    self._drop("shutdown")
