"""The `vm.device_attach` and `vm.device_detach` tasks (extensions.md §11.2): a device hot-plugged
into (or out of) a running guest, and the change kept in the VM's stored XML.

A task runs on the node the API saw running the VM. It judges the change again against the VM's
document as it is now (`pvcd.state.vm_devices`), checks that the guest still runs here, writes
the new document (compare-and-set), then changes the **live** guest only. The persistent
definition is not touched here: it is the stored XML, which the VM controller defines on every
XML change (a redefinition of a running domain changes its next boot, never the guest; no
restart). So the stored XML is the one source of the definition, and a crash at any step leaves
the next boot and the stored XML agreeing; only the live guest may then lack the change until
it restarts. If libvirt refuses, the stored XML is restored (unless someone changed it since)
and the task fails with libvirt's message.

Races named. The VM stops or moves between the API and the task: the task finds no running
guest here and fails before writing anything. It stops after the write: the hot-plug fails,
the XML is restored. A live migration that starts in between takes the guest as libvirt has
it: libvirt runs one job at a time per domain, so the hot-plug happens before it or fails.
Another write to the VM's document between the read and the write: the compare-and-set fails
and the task fails with nothing changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from pvcd.controllers.tasks import TaskContext, TaskKind, TaskOutcome
from pvcd.domain.errors import BackendError, Conflict, NotFound, PvcError
from pvcd.domain.records import VmSpec, from_dict
from pvcd.domain.states import domain_active
from pvcd.domain.tasks import Artifact
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.state.vm_devices import (
    ATTACH,
    DETACH,
    TASK_NAMES,
    DeviceChange,
    new_device_mac,
    plan_attach,
    plan_detach,
)
from pvcd.vmdevices import find_device

log = logging.getLogger(__name__)

RESTORE_TRIES = 5


class DeviceDriver(Protocol):
    """What the tasks need of `pvcd.drivers.libvirt.LibvirtDriver`."""

    def domain_state(self, uuid: str) -> Any: ...
    def xml(self, uuid: str) -> str: ...
    def attach_device(self, uuid: str, xml: str, live: bool = True,
                      persistent: bool = False) -> None: ...
    def detach_device(self, uuid: str, xml: str, live: bool = True,
                      persistent: bool = False) -> None: ...


class DeviceTasks:
    """The two task kinds of node `node`, acting through its libvirt `driver`."""

    def __init__(self, node: str, view: ClusterView, store: Store, driver: DeviceDriver,
                 new_mac: Callable[[], str] = new_device_mac) -> None:
        self.node = node
        self.view = view
        self.store = store
        self.driver = driver
        self.new_mac = new_mac

    def kinds(self) -> list[TaskKind]:
        return [TaskKind(TASK_NAMES[ATTACH], self.attach, _no_artifacts),
                TaskKind(TASK_NAMES[DETACH], self.detach, _no_artifacts)]

    def attach(self, ctx: TaskContext) -> TaskOutcome:
        return self._run(ctx, ATTACH)

    def detach(self, ctx: TaskContext) -> TaskOutcome:
        return self._run(ctx, DETACH)

    def _run(self, ctx: TaskContext, action: str) -> TaskOutcome:
        uuid, text = str(ctx.args.get("uuid", "")), str(ctx.args.get("xml", ""))
        ctx.progress(0, 2, "checking the VM and the device")
        spec, version = self._read(uuid)
        change = plan_attach(self.view, spec, text, self.new_mac) if action == ATTACH \
            else plan_detach(self.view, spec, text)
        self._check_runs_here(spec)
        ctx.progress(1, 2, f"{action}ing {change.device.label} and writing the VM's XML")
        # from here on no report until the end: a stop between the write and libvirt's
        # answer would leave the XML changed and the guest not
        try:
            self.store.commit(change.ops(self.view, version))
        except Conflict as exc:
            raise Conflict(f"VM '{spec.name}' changed while the task checked it ({exc}); "
                           "nothing was changed: send the request again") from exc
        try:
            if action == ATTACH:
                self.driver.attach_device(uuid, change.device.xml, live=True)
            else:
                self.driver.detach_device(uuid, change.device.xml, live=True)
        except (BackendError, NotFound) as exc:
            restored = self._restore(change)
            log.warning("event=vm-device-failed vm=%s node=%s action=%s device=%r reason=%s",
                        uuid, self.node, action, change.device.label, exc)
            raise BackendError(f"{exc}; {restored}") from exc
        log.info("event=vm-device-%sed vm=%s name=%s node=%s device=%r", action, uuid,
                 spec.name, self.node, change.device.label)
        return self._outcome(change)

    def _read(self, uuid: str) -> tuple[VmSpec, int]:
        found = self.store.read_optional(self.view.paths.vm(uuid))
        if found is None:
            raise NotFound(f"VM {uuid} no longer exists; nothing was changed")
        return from_dict(VmSpec, found[0]), found[1].version

    def _check_runs_here(self, spec: VmSpec) -> None:
        domain = self.driver.domain_state(spec.uuid)
        if spec.node != self.node or domain is None or not domain_active(domain):
            where = f"it is assigned to {spec.node}" if spec.node != self.node else \
                "it stopped"
            raise Conflict(f"VM '{spec.name}' no longer runs on node {self.node} ({where}) "
                           "since the request; nothing was changed: send it again (a stopped "
                           "VM only gets the change in its XML)")

    def _restore(self, change: DeviceChange) -> str:
        """Undo the write of `change`; what happened, for the task's message."""
        path = self.view.paths.vm(change.new.uuid)
        for _ in range(RESTORE_TRIES):
            try:
                current, version = self._read(change.new.uuid)
            except PvcError as exc:
                return f"the VM's stored XML could not be restored: {exc}"
            restored = change.restore(current)
            if restored is None:
                return ("the VM's stored XML was changed by another request meanwhile and was "
                        "left as that request made it")
            try:
                self.store.commit([Op.set(path, restored.to_doc(), version)])
                return "the VM's stored XML was restored; nothing was changed"
            except Conflict:
                continue  # written meanwhile (e.g. its state): judged again on a new read
            except PvcError as exc:
                return f"the VM's stored XML could not be restored: {exc}"
        return "the VM's stored XML could not be restored: it kept changing meanwhile"

    def _outcome(self, change: DeviceChange) -> TaskOutcome:
        spec, device = change.new, change.device
        result: dict[str, Any] = {"vm": spec.name, "uuid": spec.uuid, "node": self.node,
                                  "device": device.label, "xml": device.xml}
        if change.action == ATTACH:
            return TaskOutcome(f"Attached {device.label} to VM '{spec.name}' on node "
                               f"{self.node}, live and in its stored XML", result)
        note = ""
        try:
            if find_device(self.driver.xml(spec.uuid), device) is not None:
                note = ("; the guest has not released it yet: it leaves the running guest when "
                        "the guest lets it go, and is gone at the next restart in any case")
        except PvcError:
            pass  # the VM stopped meanwhile: gone with it
        result["released"] = not note
        return TaskOutcome(f"Detached {device.label} from VM '{spec.name}' on node "
                           f"{self.node}, live and from its stored XML{note}", result)


def _no_artifacts(artifact: Artifact) -> None:
    """The device tasks record no artifacts: a failure restores the XML itself."""
    raise BackendError(f"a vm.device_* task has no artifact to undo: {artifact.kind} "
                       f"{artifact.ref}")
