"""Holding a running guest still while a snapshot is taken (extensions.md §5.1), done by the
VM controller of the node that runs it.

A snapshot task (on the primary) writes the desired hold `vms/<uuid>/hold`
(`GuestHold {task, mode}`); the VM's node acts in its reconcile: it records `holding` in the
VM's status (`VmStatus.hold`, a `HeldGuest`) **before** it touches the guest, then freezes the
guest's filesystems through the QEMU guest agent (`freeze`; `auto` when the agent answers
within 2 s) or pauses it (`pause`; `auto` otherwise), and reports what it reached. The task
waits for that report, takes the RBD snapshots, and deletes the hold; the node then thaws or
resumes the guest and clears the report. A freeze that outlives `snapshot.freeze_timeout` is
thawed by the node (`expired`), and the task fails.

Convergence after a cut-off (level-based, like everything else in the VM controller):
- the task's daemon dies: the primary declares the task interrupted and its undo deletes the
  hold (artifact `guest-hold`), so the node thaws/resumes;
- the VM's daemon dies while the guest is held: the report survives in ZooKeeper (it was
  written before acting), so the restarted daemon's first reconcile of the VM (the start-up
  resync) finds a report without a hold, or with a `holding` one, and thaws/resumes;
- a hold names a task that is not running (a stale record): the node treats it as absent
  (never holds for it, lets the guest go); the primary's cleanup deletes it with the task's
  artifacts.
Thawing a guest that is not frozen and resuming one that is not paused are harmless, so every
undo may be repeated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from pvcd.controllers.base import DONE, Result, TemporaryError
from pvcd.domain.errors import BackendError, InvalidValue, NotFound
from pvcd.domain.records import VmSpec, VmStatus
from pvcd.domain.vm_snapshots import (
    AGENT_PROBE_SECONDS,
    CRASH_CONSISTENT,
    FROZEN,
    STOPPED,
    GuestHold,
    HeldGuest,
)
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

HOLDING, FAILED, EXPIRED = "holding", "failed", "expired"


class GuestDriver(Protocol):
    """What holding a guest needs of `pvcd.drivers.libvirt.LibvirtDriver`."""

    def suspend(self, uuid: str) -> None: ...
    def resume(self, uuid: str) -> None: ...
    def fs_freeze(self, uuid: str, agent_timeout: float) -> int: ...
    def fs_thaw(self, uuid: str) -> int: ...


StatusWriter = Callable[[VmSpec, Callable[[VmStatus], None]], None]


class GuestHolds:
    """The VM controller's hold step (see the module docstring)."""

    def __init__(self, node: str, view: ClusterView, driver: GuestDriver,
                 write_status: StatusWriter, freeze_timeout: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.view = view
        self.driver = driver
        self.write_status = write_status
        self.freeze_timeout = freeze_timeout
        self.clock = clock

    def converge(self, spec: VmSpec, active: bool) -> Result:
        """Make the guest's hold match `vms/<uuid>/hold`; `active`: the guest runs here."""
        uuid = spec.uuid
        hold = self._hold(uuid)
        if hold is not None and not self._task_running(hold.task):
            hold = None  # a stale hold: its task ended or was cut off; cleanup removes it
        status = self.view.vm_status(uuid) or VmStatus()
        held = HeldGuest.from_doc(status.hold)
        if held is not None and (hold is None or hold.task != held.task
                                 or held.state == HOLDING):
            self._release(spec, held, active)  # (a `holding` one: cut off part-way, redone)
            held = None
        if hold is None:
            return DONE
        if held is None:
            return self._take(spec, hold, active)
        if held.state == FROZEN:
            left = held.since + self.freeze_timeout - self.clock()
            if left > 0:
                return Result(requeue_after=left)
            self._thaw(uuid)
            self._report(spec, HeldGuest(hold.task, hold.mode, EXPIRED, self.clock(),
                                         f"the freeze was thawed after {self.freeze_timeout:g}"
                                         " s (snapshot.freeze_timeout)"))
        return DONE

    def _hold(self, uuid: str) -> GuestHold | None:
        doc = self.view.cache.get(self.view.paths.vm_hold(uuid))
        if doc is None:
            return None
        try:
            return GuestHold.from_doc(doc)
        except InvalidValue as exc:
            log.warning("event=guest-hold-unreadable vm=%s node=%s error=%s", uuid, self.node,
                        exc)
            return None

    def _task_running(self, task_id: str) -> bool:
        doc = self.view.cache.get(self.view.paths.task(task_id))
        return isinstance(doc, dict) and doc.get("state") == "running"

    def _take(self, spec: VmSpec, hold: GuestHold, active: bool) -> Result:
        uuid = spec.uuid
        if not active:
            self._report(spec, HeldGuest(hold.task, hold.mode, STOPPED, self.clock()))
            return DONE
        self._report(spec, HeldGuest(hold.task, hold.mode, HOLDING, self.clock()))
        try:
            reached = self._hold_still(uuid, hold.mode)
        except (BackendError, NotFound) as exc:
            log.warning("event=guest-hold-failed vm=%s node=%s task=%s mode=%s error=%s", uuid,
                        self.node, hold.task, hold.mode, exc)
            self._undo(uuid)
            self._report(spec, HeldGuest(hold.task, hold.mode, FAILED, self.clock(), str(exc)))
            return DONE
        log.info("event=guest-held vm=%s node=%s task=%s mode=%s state=%s", uuid, self.node,
                 hold.task, hold.mode, reached)
        self._report(spec, HeldGuest(hold.task, hold.mode, reached, self.clock()))
        return Result(requeue_after=self.freeze_timeout) if reached == FROZEN else DONE

    def _hold_still(self, uuid: str, mode: str) -> str:
        if mode == "pause":
            self.driver.suspend(uuid)
            return CRASH_CONSISTENT
        if mode == "freeze":
            self.driver.fs_freeze(uuid, self.freeze_timeout)
            return FROZEN
        try:  # auto: freeze if the agent answers within the probe, else pause
            self.driver.fs_freeze(uuid, AGENT_PROBE_SECONDS)
            return FROZEN
        except BackendError as exc:
            log.info("event=guest-agent-silent vm=%s node=%s error=%s; pausing instead", uuid,
                     self.node, exc)
            self._thaw(uuid)  # a freeze that went through after the probe gave up
            self.driver.suspend(uuid)
            return CRASH_CONSISTENT

    def _release(self, spec: VmSpec, held: HeldGuest, active: bool) -> None:
        if active:
            try:
                self._undo(spec.uuid, thaw=held.mode in ("freeze", "auto"))
            except (BackendError, NotFound) as exc:  # the report stays: tried again
                raise TemporaryError(f"VM {spec.uuid}: could not let the guest go after "
                                     f"snapshot task {held.task}: {exc}") from exc
            log.info("event=guest-released vm=%s node=%s task=%s state=%s", spec.uuid,
                     self.node, held.task, held.state)
        self._report(spec, None)

    def _undo(self, uuid: str, thaw: bool = True) -> None:
        """Thaw (if it may be frozen) and resume; both are harmless when not needed."""
        if thaw:
            self._thaw(uuid)
        self.driver.resume(uuid)

    def _thaw(self, uuid: str) -> None:
        try:
            self.driver.fs_thaw(uuid)
        except (BackendError, NotFound) as exc:  # no agent: nothing can be frozen
            log.debug("event=guest-thaw-skipped vm=%s node=%s error=%s", uuid, self.node, exc)

    def _report(self, spec: VmSpec, held: HeldGuest | None) -> None:
        doc: dict[str, Any] = {} if held is None else held.to_doc()

        def change(status: VmStatus) -> None:
            status.hold = doc

        self.write_status(spec, change)
