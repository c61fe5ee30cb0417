"""The lab's memstore OSDs, plugged into a lab node's storage as an `OsdProvisioner`.

A lab node creates its OSDs in the lab's throwaway Ceph (`pvcd.lab.ceph`), whose folder all lab
nodes share: device `memstore` starts one more memstore OSD of it (no disk). Production code
never imports this module: `pvcd.controllers.storage` knows only the `OsdProvisioner` protocol,
and whoever builds a lab node passes `lab_osd_provisioner(config)` in as its `extra_osds`.

The throwaway cluster's state file is shared by every lab node and the lab itself, so each
change holds an exclusive `flock` on `ceph-lab.lock` in that folder. OSDs started there are our
children: we keep their `Popen` objects to reap them when they stop.
"""

from __future__ import annotations

import fcntl
import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pvcd.domain.errors import BackendError, InvalidValue
from pvcd.drivers.ceph.values import LAB_DEVICE
from pvcd.lab.ceph import ThrowawayCeph
from pvcd.lab.ceph_daemons import CephLabError

log = logging.getLogger(__name__)



class LabOsdProvisioner:
    """Memstore OSDs of the lab's throwaway Ceph in `workdir`, started by this node."""

    def __init__(self, workdir: str | Path, node: str) -> None:
        self.workdir = Path(workdir)
        self.node = node
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def takes(self, device: str) -> bool:
        return device == LAB_DEVICE

    def create(self, device: str, weight: float = 1.0) -> int:
        if device != LAB_DEVICE:
            raise InvalidValue(f"device {device!r} is invalid on lab node {self.node}: lab "
                               f"nodes create memstore OSDs, use device '{LAB_DEVICE}'")
        with self._cluster() as lab:
            osd_id = lab.add_memstore_osd(wait=False)
            process = lab.osds[osd_id].process
        if process is not None:
            self._children[osd_id] = process
        log.info("event=lab-osd-started node=%s osd=%d", self.node, osd_id)
        return osd_id

    def owns(self, osd_id: int) -> bool:
        with self._cluster() as lab:
            return osd_id in lab.osds

    def ensure(self, osd_id: int) -> bool:
        return False  # memstore OSDs lose their data when they stop: never restarted

    def release(self, osd_id: int) -> None:
        pass  # nothing outside the lab's folder

    def stop(self, osd_id: int) -> None:
        with self._cluster() as lab:
            child = self._children.pop(osd_id, None)
            daemon = lab.osds.get(osd_id)
            if daemon is not None and child is not None:
                daemon.process = child  # ours: reap it
            lab.stop_osd(osd_id)
        log.info("event=lab-osd-stopped node=%s osd=%d", self.node, osd_id)

    @contextmanager
    def _cluster(self) -> Iterator[ThrowawayCeph]:
        with open(self.workdir / "ceph-lab.lock", "a+") as lock:
            started = time.monotonic()
            fcntl.flock(lock, fcntl.LOCK_EX)
            if time.monotonic() - started > 1:
                log.info("event=lab-lock-waited node=%s seconds=%.1f", self.node,
                         time.monotonic() - started)
            try:
                lab = ThrowawayCeph.load(self.workdir)
                lab.die_with_parent = False  # the OSD outlives a restart of this daemon
                yield lab
            except CephLabError as exc:
                raise BackendError(f"lab Ceph in {self.workdir}: {exc}") from exc
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
