"""OSDs on this node's block devices: `ceph-volume raw` (bluestore) and their daemons.

What an OSD add on a node does (docs/storage.md, "OSDs on block devices"):

  1. check the device here, where it is (`devices.device_problems`): Ceph would write over a
     disk that holds data.
  2. `ceph-volume raw prepare --bluestore --data DEV`: registers a new OSD id with the cluster
     (as client.bootstrap-osd, `/var/lib/ceph/bootstrap-osd/ceph.keyring`) and makes the
     bluestore on the device. LVM is not used: device-mapper is not available everywhere (not on
     this project's CI machines), and a raw OSD is what Rook deploys too.
  3. the OSD's CRUSH location (`root=default host=<node>`) and weight go into the cluster's
     configuration database before it starts, so it joins under its node at once, never under
     the machine's host name first.
  4. `ceph-volume raw activate --device DEV --no-systemd` (a tmpfs at
     `/var/lib/ceph/osd/ceph-<id>` primed from the bluestore label), then the launcher starts
     the daemon (`launchers`).

A raw OSD's tmpfs does not survive a reboot and ceph-volume has no boot-time unit for raw OSDs:
`ensure()` (the node's OSD controller, at start and on resync) activates and starts every OSD
this node owns whose daemon is not running. Removal (`stop` then, after the purge, `release`)
stops the daemon, unmounts its folder, clears its configuration and wipes the device's labels
so that it can be used again. The device path was validated by the API (`values.check_device`)
and is checked again here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvcd.domain.errors import BackendError, InvalidValue
from pvcd.drivers.ceph.devices import device_problems, run_tool, wipe
from pvcd.drivers.ceph.launchers import OsdLauncher

log = logging.getLogger(__name__)

OSD_DATA = "/var/lib/ceph/osd/ceph-{id}"
PREPARE_TIMEOUT = 300.0


class DeviceOsdProvisioner:
    """Creates, starts, stops and releases the bluestore OSDs on this node's block devices."""

    def __init__(self, node: str, launcher: OsdLauncher,
                 configure: Callable[[int, dict[str, str]], None],
                 unconfigure: Callable[[int], None],
                 purge: Callable[[int], None]) -> None:
        """`configure(osd, {option: value})` / `unconfigure(osd)` set and clear an OSD's
        options in the cluster's configuration database; `purge(osd)` removes an OSD that
        never became usable from the map (all as client.admin, through the node's driver)."""
        self.node = node
        self.launcher = launcher
        self._configure = configure
        self._unconfigure = unconfigure
        self._purge = purge

    def create(self, device: str, weight: float = 1.0) -> int:
        problems = device_problems(device)
        if problems:
            raise InvalidValue(f"cannot create an OSD on node {self.node}: "
                               + "; ".join(problems))
        started = time.monotonic()
        run_tool(["ceph-volume", "raw", "prepare", "--bluestore", "--data", device],
                 timeout=PREPARE_TIMEOUT)
        osd_id = self._osd_on(device)
        log.info("event=osd-prepared node=%s osd=%d device=%s seconds=%.1f", self.node, osd_id,
                 device, time.monotonic() - started)
        try:
            self._configure(osd_id, {"crush_location": f"root=default host={self.node}",
                                     "osd_crush_initial_weight": f"{weight:g}"})
            self._activate(device)
            self.launcher.start(osd_id)
        except BackendError as exc:  # nothing uses it yet: undo, so the device can be retried
            log.warning("event=osd-create-failed node=%s osd=%d: %s", self.node, osd_id, exc)
            self._undo(osd_id, device)
            raise BackendError(f"osd.{osd_id} on {device} could not be started ({exc}); it "
                               "was removed again and the device wiped") from exc
        return osd_id

    def ensure(self, osd_id: int) -> bool:
        """Make sure the daemon of this node's `osd_id` runs (activating its device first if
        its folder is not there, as after a reboot); True if it had to be started."""
        if self.launcher.running(osd_id):
            return False
        if not (Path(OSD_DATA.format(id=osd_id)) / "whoami").exists():
            device = self.device_of(osd_id)
            if device is None:
                raise BackendError(f"osd.{osd_id} is owned by node {self.node} but no device "
                                   "here holds it (`ceph-volume raw list`)")
            self._activate(device)
        self.launcher.start(osd_id)
        log.info("event=osd-ensured node=%s osd=%d", self.node, osd_id)
        return True

    def stop(self, osd_id: int) -> None:
        self.launcher.stop(osd_id)

    def release(self, osd_id: int) -> None:
        """After the purge: unmount its folder, clear its options, wipe its device."""
        device = self.device_of(osd_id)
        folder = OSD_DATA.format(id=osd_id)
        if os.path.ismount(folder):
            run_tool(["umount", folder])
        if os.path.isdir(folder):
            for entry in os.listdir(folder):
                os.unlink(os.path.join(folder, entry))
            os.rmdir(folder)
        self._unconfigure(osd_id)
        if device is not None:
            wipe(device)
        log.info("event=osd-released node=%s osd=%d device=%s", self.node, osd_id, device)

    def device_of(self, osd_id: int) -> str | None:
        for entry in self._raw_list().values():
            if int(entry.get("osd_id", -1)) == osd_id:
                return str(entry["device"])
        return None

    def _osd_on(self, device: str) -> int:
        for entry in self._raw_list(device).values():
            return int(entry["osd_id"])
        raise BackendError(f"`ceph-volume raw prepare` finished but {device} holds no OSD")

    def _raw_list(self, device: str | None = None) -> dict[str, Any]:
        argv = ["ceph-volume", "raw", "list", "--format", "json"]
        text = run_tool([*argv, device] if device else argv).stdout
        try:
            listing: dict[str, Any] = json.loads(text or "{}")
        except ValueError as exc:
            raise BackendError(f"`ceph-volume raw list` returned no valid JSON: "
                               f"{text[:200]!r}") from exc
        return listing

    def _activate(self, device: str) -> None:
        run_tool(["ceph-volume", "raw", "activate", "--device", device, "--no-systemd"])

    def _undo(self, osd_id: int, device: str) -> None:
        for step in (lambda: self.launcher.stop(osd_id), lambda: self._purge(osd_id),
                     lambda: self.release(osd_id), lambda: wipe(device)):
            try:
                step()
            except (BackendError, OSError) as exc:
                log.warning("event=osd-undo-step-failed osd=%d: %s", osd_id, exc)
