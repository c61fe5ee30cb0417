"""This node's OSDs: OSD add and removal carried out here, and their daemons kept running.

OSD ownership: an OSD belongs to the pvcd node whose name is its CRUSH host bucket. An OSD added
through pvcd is placed under `host=<node>` by that node; an OSD pvcd finds in Ceph is adopted with
the owner its CRUSH host names (or none, when that is not a pvcd node). The owner carries out the
OSD's removal, because only it can stop the OSD's daemon. Requests with this node's name as
target (`osd-add`, `osd-remove`) run here through a `RequestExecutor` of their own.

Where OSDs come from: `NodeOsdProvisioner` hands a block device (/dev/...) to
`pvcd.drivers.ceph.bluestore.DeviceOsdProvisioner` (bluestore through `ceph-volume raw`), and
the devices an extra `OsdProvisioner` takes to that one: whoever builds the node plugs it in
(the lab's memstore OSDs: `pvcd.lab.osds`). Production code knows only the protocol.

The OSD controller (`reconcile_osd`, keyed by OSD id) keeps the daemons of this node's device
OSDs running: after a reboot a raw OSD must be activated again. It leaves an OSD alone while its
removal runs, so it never starts what the removal just stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from pvcd.config import CephDriverSection
from pvcd.controllers.base import DONE, Result, TemporaryError
from pvcd.controllers.storage.mirror import Mirror
from pvcd.controllers.storage.requests import Outcome, RequestExecutor
from pvcd.domain.errors import BackendError, InvalidValue
from pvcd.domain.records import OsdRecord, StorageRequest
from pvcd.drivers.ceph.driver import CephDriver
from pvcd.drivers.ceph.values import LAB_DEVICE
from pvcd.state.store import Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)


class OsdDaemons(Protocol):
    """Creates, keeps running, stops and releases OSD daemons of this node."""

    def create(self, device: str, weight: float) -> int:
        """A new OSD on `device`, started; its id."""
        ...

    def ensure(self, osd_id: int) -> bool:
        """Start the OSD's daemon if it is not running; True if it had to be started."""
        ...

    def stop(self, osd_id: int) -> None:
        """Stop the OSD's daemon (its removal: drained already)."""
        ...

    def release(self, osd_id: int) -> None:
        """After the purge: free what the OSD used (its folder, options, device)."""
        ...


class OsdProvisioner(OsdDaemons, Protocol):
    """OSDs on the devices that are not block devices of this node: a plug-in (the lab's
    memstore OSDs) that says which devices it takes and which OSDs are its own."""

    def takes(self, device: str) -> bool:
        """Whether an OSD add on `device` is for this provisioner."""
        ...

    def owns(self, osd_id: int) -> bool:
        """Whether `osd_id` was created by this provisioner."""
        ...


class NodeOsdProvisioner:
    """Block devices through `devices`; the devices `extra` takes (if any) through it."""

    def __init__(self, node: str, devices: OsdDaemons,
                 extra: OsdProvisioner | None = None) -> None:
        self.node = node
        self.devices = devices
        self.extra = extra
        self._stopped_by: dict[int, OsdDaemons] = {}

    def create(self, device: str, weight: float) -> int:
        if self.extra is not None and self.extra.takes(device):
            return self.extra.create(device, weight)
        if device == LAB_DEVICE:
            raise InvalidValue(f"device '{LAB_DEVICE}' is only for lab nodes; node "
                               f"{self.node} creates OSDs on block devices like /dev/sdb")
        return self.devices.create(device, weight)

    def ensure(self, osd_id: int) -> bool:
        return self._owner(osd_id).ensure(osd_id)

    def stop(self, osd_id: int) -> None:
        owner = self._owner(osd_id)
        self._stopped_by[osd_id] = owner  # the lab forgets its OSD once stopped
        owner.stop(osd_id)

    def release(self, osd_id: int) -> None:
        owner = self._stopped_by.pop(osd_id, None) or self._owner(osd_id)
        owner.release(osd_id)

    def _owner(self, osd_id: int) -> OsdDaemons:
        return self.extra if self.extra is not None and self.extra.owns(osd_id) \
            else self.devices


class GuestDisks(Protocol):
    """The hypervisor of this node, as far as a grown volume concerns it."""

    def resize_rbd_disks(self, uuid: str, volume: str, size: int) -> list[str]: ...


class NodeStorage:
    """This node's part: the OSDs whose devices it owns, and telling its running guests that
    a volume they use has grown (`vm-disk-resize`)."""

    def __init__(self, name: str, view: ClusterView, store: Store, ceph: CephDriver,
                 provisioner: OsdDaemons, config: CephDriverSection,
                 clock: Callable[[], float] = time.time,
                 guests: GuestDisks | None = None) -> None:
        self.name = name
        self.view = view
        self.ceph = ceph
        self.provisioner = provisioner
        self.config = config
        self.mirror = Mirror(view)
        self.guests = guests
        self.requests = RequestExecutor(name, name, view, store, {
            "osd-add": self._osd_add, "osd-remove": self._osd_remove,
            "vm-disk-resize": self._vm_disk_resize,
        }, _request_locks, clock)
        self._removing: set[int] = set()
        self._removing_lock = threading.Lock()

    # the OSD daemons of this node's devices run (after a reboot: activated again)
    def osd_keys(self) -> list[str]:
        root = self.view.paths.storage_osds
        return [child for child in self.view.cache.children(root) if self._owns_device_osd(child)]

    def _owns_device_osd(self, key: str) -> bool:
        doc = self.view.cache.get(self.view.paths.storage_osd(key))
        return isinstance(doc, dict) and doc.get("node") == self.name and \
            str(doc.get("device") or "").startswith("/dev/")

    def key_of_osd_path(self, path: str) -> str | None:
        prefix = self.view.paths.storage_osds + "/"
        rest = path.removeprefix(prefix) if path.startswith(prefix) else ""
        return rest if rest.isdigit() else None

    def reconcile_osd(self, key: str) -> Result:
        osd_id = int(key)
        with self._removing_lock:
            if osd_id in self._removing:
                return DONE
        if not self._owns_device_osd(key):
            return DONE
        try:
            if self.provisioner.ensure(osd_id):
                log.info("event=osd-started-again node=%s osd=%d", self.name, osd_id)
        except BackendError as exc:
            raise TemporaryError(f"osd.{osd_id}: {exc}") from exc
        return DONE

    def _osd_add(self, request: StorageRequest, progress: Callable[[str], None]) -> Outcome:
        device, weight = request.args["device"], float(request.args["weight"])
        progress(f"creating an OSD on {device}")
        osd_id = self.provisioner.create(device, weight)
        progress(f"osd.{osd_id} started; placing it under host={self.name}")
        self.ceph.osd_place(osd_id, weight, self.name)
        stats = self._wait_up(osd_id, progress)
        record = OsdRecord(osd_id, self.name, device, stats)
        return Outcome(f"Created OSD {osd_id} on node {self.name} (device {device}, weight "
                       f"{weight:g})", {"osd": osd_id, "node": self.name},
                       lambda: self.mirror.osd(record))

    def _vm_disk_resize(self, request: StorageRequest,
                        progress: Callable[[str], None]) -> Outcome:
        args = request.args
        volume, uuid, size = f"{args['pool']}/{args['volume']}", args["vm"], int(args["size"])
        if self.guests is None:
            raise BackendError(f"node {self.name} has no hypervisor connection to tell VM "
                               f"{uuid} that {volume} grew")
        progress(f"telling VM {uuid} that {volume} now has {size} bytes")
        targets = self.guests.resize_rbd_disks(uuid, volume, size)
        if not targets:
            raise InvalidValue(f"VM {uuid} on node {self.name} has no disk on {volume}")
        return Outcome(f"VM {uuid} was told that disk {', '.join(targets)} ({volume}) has "
                       f"{size} bytes", {"vm": uuid, "targets": targets})

    def _wait_up(self, osd_id: int, progress: Callable[[str], None]) -> dict[str, Any]:
        deadline = time.monotonic() + max(30.0, self.config.command_timeout)
        while time.monotonic() < deadline:
            osd = next((o for o in self.ceph.osd_list() if o.id == osd_id), None)
            # PGs that move to it peer first: until they are active, I/O to them blocks
            if osd is not None and osd.up and osd.in_ and all(
                    pg.state.startswith("active") for pg in self.ceph.pg_stats()):
                return {"uuid": osd.uuid, "up": True, "in": True, "node": self.name,
                        "reweight": osd.reweight, "primary_affinity": osd.primary_affinity,
                        "state": ",".join(osd.state)}
            time.sleep(0.2)
        raise BackendError(f"osd.{osd_id} was created on node {self.name} but is not up and in "
                           "(with every PG active) after "
                           f"{max(30.0, self.config.command_timeout):.0f} s; see its log")

    def _osd_remove(self, request: StorageRequest, progress: Callable[[str], None]) -> Outcome:
        osd_id = int(request.args["osd"])
        with self._removing_lock:
            self._removing.add(osd_id)  # the OSD controller must not start it again
        try:
            removal = self.ceph.remove_osd_safely(
                osd_id, stop_daemon=self.provisioner.stop,
                progress_timeout=self.config.osd_removal_timeout, on_progress=progress)
            progress("purged; releasing its device")
            self.provisioner.release(osd_id)
        finally:
            with self._removing_lock:
                self._removing.discard(osd_id)
        return Outcome(f"Removed OSD {osd_id} from node {self.name} ({removal.pgs_moved} PGs "
                       f"moved off it in {removal.drain_seconds:.1f} s)",
                       {"osd": osd_id, "pgs_moved": removal.pgs_moved,
                        "seconds": round(removal.total_seconds, 3)},
                       lambda: self.mirror.osd_gone(osd_id))


def _request_locks(request: StorageRequest) -> list[str]:
    """What a request of this node works on: one OSD, or one VM's disks."""
    if request.op == "vm-disk-resize":
        return [f"vm/{request.args.get('vm')}"]
    return [f"osd/{request.args.get('osd', 'new')}"]
