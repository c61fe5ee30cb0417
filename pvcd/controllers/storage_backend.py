"""What the storage controller needs from Ceph beyond `CephDriver`, and where OSDs come from.

`StorageCeph` adds the few reads and writes the controller needs and the driver does not offer:
the CRUSH host of every OSD (`ceph osd tree`: which pvcd node owns it), placing an OSD under its
node with a weight (`ceph osd crush set`), and one listing per pool with every volume and
snapshot (`rbd ls -l`, instead of one `rbd snap ls` per volume).

OSD ownership: an OSD belongs to the pvcd node whose name is its CRUSH host bucket. An OSD added
through pvcd is placed under `host=<node>` by that node; an OSD pvcd finds in Ceph is adopted with
the owner its CRUSH host names (or none, when that is not a pvcd node). The owner carries out the
OSD's removal, because only it can stop the OSD's daemon.

An `OsdProvisioner` creates, starts and stops the OSD daemons of this node. `NodeOsdProvisioner`
is the one a node uses: device `memstore` goes to a `LabOsdProvisioner` (lab nodes only), a block
device to `pvcd.drivers.ceph_volume.DeviceOsdProvisioner` (bluestore through `ceph-volume raw`).
`LabOsdProvisioner` works with a throwaway Ceph (`pvcd.lab.ceph`) whose folder all lab nodes
share: device `memstore` starts one more memstore OSD of it. The throwaway cluster's state file is
shared by every lab node and the lab itself, so each change holds an exclusive `flock` on
`ceph-lab.lock` in that folder. OSDs started there are our children: we keep their `Popen`
objects to reap them when they stop.
"""

from __future__ import annotations

import fcntl
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pvcd.domain.errors import BackendError, InvalidValue, NotFound
from pvcd.drivers.ceph import CephDriver, check_osd_id
from pvcd.lab.ceph import CephLabError, ThrowawayCeph

log = logging.getLogger(__name__)

MAX_WEIGHT = 1000.0
_WEIGHT_RE = re.compile(r"\d{1,4}(\.\d{1,6})?|\.\d{1,6}")
LAB_DEVICE = "memstore"
_DEVICE_RE = re.compile(r"/dev/[A-Za-z0-9._/-]{1,200}")


def check_weight(value: str | float) -> float:
    """A CRUSH weight: a number above 0 and at most 1000 (usually the disk's size in TiB, or
    1.0 when all disks are the same)."""
    text = str(value).strip()
    if not _WEIGHT_RE.fullmatch(text) or not 0 < float(text) <= MAX_WEIGHT:
        raise InvalidValue(f"weight {value!r} is invalid: a number above 0 and at most "
                           f"{MAX_WEIGHT:g}, e.g. 1.0")
    return float(text)


def check_device(value: str) -> str:
    """`memstore` (lab) or a block device path like /dev/sdb."""
    if value == LAB_DEVICE or (_DEVICE_RE.fullmatch(value) and ".." not in value.split("/")):
        return value
    raise InvalidValue(f"device {value!r} is invalid: a block device path like /dev/sdb, or "
                       f"'{LAB_DEVICE}' in a lab")


@dataclass(frozen=True)
class PoolListing:
    """One pool's volumes and snapshots, from `rbd ls -l`."""

    volumes: list[str]
    snapshots: dict[str, list[dict[str, Any]]]  # volume -> [{name, id, size, ...}]
    sizes: dict[str, int] = field(default_factory=dict)  # volume -> bytes


class StorageCeph(CephDriver):
    """`CephDriver` plus the CRUSH and listing calls of the storage controller."""

    def osd_hosts(self) -> dict[int, str]:
        """The CRUSH host bucket of every OSD placed under one."""
        tree = self._json("ceph", ["osd", "tree"])
        hosts: dict[int, str] = {}
        for node in tree.get("nodes", []):
            if node.get("type") == "host":
                for child in node.get("children", []):
                    if child >= 0:
                        hosts[int(child)] = str(node["name"])
        return hosts

    def osd_place(self, osd_id: int, weight: float, host: str) -> None:
        """Put `osd.<id>` under `host=<host>` (created if missing) with CRUSH weight `weight`."""
        number = check_osd_id(osd_id)
        placement = [f"osd.{number}", f"{check_weight(weight):g}", "root=default", f"host={host}"]
        try:
            self._run("ceph", ["osd", "crush", "set", *placement])
        except NotFound:  # not in the CRUSH map yet (it has not booted, or does not add itself)
            self._run("ceph", ["osd", "crush", "add", *placement])
        log.info("ceph osd placed osd=%d host=%s weight=%g", number, host, weight)

    def osd_configure(self, osd_id: int, options: dict[str, str]) -> None:
        """Set options of `osd.<id>` in the cluster's configuration database (before it
        starts: its CRUSH location and initial weight)."""
        number = check_osd_id(osd_id)
        for option, value in options.items():
            self._run("ceph", ["config", "set", f"osd.{number}", option, value])

    def osd_unconfigure(self, osd_id: int) -> None:
        """Forget every option set for `osd.<id>` (its id is reused by the next OSD)."""
        number = check_osd_id(osd_id)
        dump = self._json("ceph", ["config", "dump"])
        for entry in dump:
            if entry.get("section") == f"osd.{number}":
                self._run("ceph", ["config", "rm", f"osd.{number}", str(entry["name"])])

    def osd_purge(self, osd_id: int) -> None:
        """Remove an OSD that never held data from the map, its key and CRUSH entry."""
        number = check_osd_id(osd_id)
        self._run("ceph", ["osd", "purge", str(number), "--yes-i-really-mean-it"])

    def pool_listing(self, pool: str) -> PoolListing:
        volumes: list[str] = []
        snapshots: dict[str, list[dict[str, Any]]] = {}
        sizes: dict[str, int] = {}
        for entry in self._json("rbd", ["ls", "-l", "--pool", pool]):
            image = str(entry.get("image", ""))
            if "snapshot" in entry:
                snapshots.setdefault(image, []).append({
                    "name": entry["snapshot"], "id": entry.get("snapshot_id"),
                    "size": entry.get("size")})
            elif image not in volumes:
                volumes.append(image)
                if isinstance(entry.get("size"), int):
                    sizes[image] = entry["size"]
        return PoolListing(volumes, snapshots, sizes)


class OsdProvisioner(Protocol):
    """Creates and stops the OSD daemons of this node."""

    def create(self, device: str, weight: float) -> int: ...

    def ensure(self, osd_id: int) -> bool: ...

    def stop(self, osd_id: int) -> None: ...

    def release(self, osd_id: int) -> None: ...


class NodeOsdProvisioner:
    """Memstore OSDs through the lab (when this node is a lab node), the rest on devices."""

    def __init__(self, node: str, device: OsdProvisioner,
                 lab: LabOsdProvisioner | None = None) -> None:
        self.node = node
        self.device = device
        self.lab = lab
        self._stopped_by: dict[int, OsdProvisioner] = {}

    def create(self, device: str, weight: float) -> int:
        if device == LAB_DEVICE:
            if self.lab is None:
                raise InvalidValue(f"device '{LAB_DEVICE}' is only for lab nodes; node "
                                   f"{self.node} creates OSDs on block devices like /dev/sdb")
            return self.lab.create(device, weight)
        return self.device.create(device, weight)

    def ensure(self, osd_id: int) -> bool:
        return self._owner(osd_id).ensure(osd_id)

    def stop(self, osd_id: int) -> None:
        owner = self._owner(osd_id)
        self._stopped_by[osd_id] = owner  # the lab forgets its OSD once stopped
        owner.stop(osd_id)

    def release(self, osd_id: int) -> None:
        owner = self._stopped_by.pop(osd_id, None) or self._owner(osd_id)
        owner.release(osd_id)

    def _owner(self, osd_id: int) -> OsdProvisioner:
        return self.lab if self.lab is not None and self.lab.owns(osd_id) else self.device


class LabOsdProvisioner:
    """Memstore OSDs of the lab's throwaway Ceph in `workdir`, started by this node."""

    def __init__(self, workdir: str | Path, node: str) -> None:
        self.workdir = Path(workdir)
        self.node = node
        self._children: dict[int, subprocess.Popen[bytes]] = {}

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
