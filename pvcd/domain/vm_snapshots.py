"""VM snapshots (extensions.md §5.1): the record, its names, and what the VM object shows.

A VM snapshot is the record `vms/<uuid>/snapshots/<name>`: every writable RBD disk of the VM
under one RBD snapshot name, with the domain XML, the metadata and the tags of that moment.
The snapshot tasks write it (`pvcd.controllers.vm_snapshots`); the API, the VM object and the
tasks read it through `VmSnapshot.from_doc`, which re-validates it (anything that can reach
ZooKeeper may have written it), so a malformed record is refused with `InvalidValue`.

The consistency words: a client asks for one of `CONSISTENCY_REQUESTS`; the record says what
was done (`CONSISTENCY_RECORDED`): the VM was `stopped`, its filesystems `fs-frozen` by the
guest agent, `crash-consistent` (paused: every disk from one instant, as after a power cut), or
`none` (disk after disk while it ran, PVC 1.0's way).
"""

from __future__ import annotations

import dataclasses
import difflib
import time
from typing import Any

from pvcd.domain.errors import InvalidValue

CONSISTENCY_REQUESTS = ("auto", "freeze", "pause", "none")
STOPPED, FROZEN, CRASH_CONSISTENT, NOT_CONSISTENT = "stopped", "fs-frozen", "crash-consistent", \
    "none"
CONSISTENCY_RECORDED = (STOPPED, FROZEN, CRASH_CONSISTENT, NOT_CONSISTENT)
# what a snapshot task asks the VM's node to do with a running guest (`vms/<uuid>/hold`)
HOLD_MODES = ("auto", "freeze", "pause")
AGENT_PROBE_SECONDS = 2.0  # `auto` freezes only if the guest agent answers within this


def default_snapshot_name(clock: float) -> str:
    """`YYYYMMDDHHMMSS` in this host's local time (the primary's, spec §5.2)."""
    return time.strftime("%Y%m%d%H%M%S", time.localtime(clock))


def rbd_snapshot_spec(pool: str, volume: str, name: str) -> str:
    return f"{pool}/{volume}@{name}"


def split_rbd_snapshot(spec: str) -> tuple[str, str, str]:
    """(pool, volume, snapshot) of `pool/volume@snapshot`; InvalidValue for anything else."""
    image, at, snapshot = spec.partition("@")
    pool, slash, volume = image.partition("/")
    if not (at and slash and pool and volume and snapshot) or "/" in volume:
        raise InvalidValue(f"{spec!r} is not an RBD snapshot 'pool/volume@snapshot'")
    return pool, volume, snapshot


def xml_diff_lines(current: str, snapshot: str) -> list[str]:
    """A unified diff with one line of context from the VM's current XML to the snapshot's;
    empty when they are the same."""
    return list(difflib.unified_diff(current.splitlines(), snapshot.splitlines(),
                                     "current", "snapshot", n=1, lineterm=""))


@dataclasses.dataclass
class VmSnapshot:
    """`vms/<uuid>/snapshots/<name>`."""

    name: str
    timestamp: float
    consistency: str
    xml: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    tags: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rbd_snapshots: list[str] = dataclasses.field(default_factory=list)

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: Any) -> VmSnapshot:
        if not isinstance(doc, dict):
            raise InvalidValue("a VM snapshot record must be an object")
        name, xml, consistency = doc.get("name"), doc.get("xml"), doc.get("consistency")
        if not isinstance(name, str) or not name:
            raise InvalidValue("a VM snapshot record needs its 'name'")
        if not isinstance(xml, str):
            raise InvalidValue(f"VM snapshot {name}: 'xml' must be a string")
        if consistency not in CONSISTENCY_RECORDED:
            raise InvalidValue(f"VM snapshot {name}: 'consistency' must be one of "
                               f"{', '.join(CONSISTENCY_RECORDED)}, not {consistency!r}")
        timestamp = doc.get("timestamp")
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float) or \
                timestamp < 0:
            raise InvalidValue(f"VM snapshot {name}: 'timestamp' must be a Unix time")
        meta, tags, rbd = doc.get("meta", {}), doc.get("tags", []), doc.get("rbd_snapshots", [])
        if not isinstance(meta, dict):
            raise InvalidValue(f"VM snapshot {name}: 'meta' must be an object")
        if not isinstance(tags, list) or not all(isinstance(t, dict) for t in tags):
            raise InvalidValue(f"VM snapshot {name}: 'tags' must be a list of objects")
        if not isinstance(rbd, list) or not all(isinstance(s, str) for s in rbd):
            raise InvalidValue(f"VM snapshot {name}: 'rbd_snapshots' must be a list of "
                               "strings")
        for spec in rbd:
            if split_rbd_snapshot(spec)[2] != name:
                raise InvalidValue(f"VM snapshot {name}: RBD snapshot {spec!r} has another "
                                   "name")
        return cls(name=name, timestamp=float(timestamp), consistency=str(consistency),
                   xml=xml, meta=dict(meta), tags=list(tags), rbd_snapshots=list(rbd))

    def volumes(self) -> list[tuple[str, str]]:
        """(pool, volume) of each RBD snapshot, in the record's order."""
        return [split_rbd_snapshot(spec)[:2] for spec in self.rbd_snapshots]

    def summary(self, current_xml: str, now: float) -> dict[str, Any]:
        """What the VM object's `snapshots` list shows of it."""
        return {"name": self.name, "timestamp": self.timestamp,
                "age": max(0, int(now - self.timestamp)), "consistency": self.consistency,
                "rbd_snapshots": list(self.rbd_snapshots),
                "xml_diff_lines": xml_diff_lines(current_xml, self.xml)}


@dataclasses.dataclass
class GuestHold:
    """`vms/<uuid>/hold`: snapshot task `task` asks the VM's node to hold the running guest
    still (`mode`: freeze its filesystems, pause it, or `auto`: freeze if the guest agent
    answers, else pause) until the record is deleted. The node reports in the VM's status
    (`VmStatus.hold`, a `HeldGuest`)."""

    task: str
    mode: str
    created: float = 0.0

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: Any) -> GuestHold:
        if not isinstance(doc, dict) or not isinstance(doc.get("task"), str) or \
                doc.get("mode") not in HOLD_MODES:
            raise InvalidValue(f"a guest hold needs 'task' and 'mode' ({', '.join(HOLD_MODES)})")
        created = doc.get("created", 0.0)
        if isinstance(created, bool) or not isinstance(created, int | float):
            raise InvalidValue("a guest hold's 'created' must be a Unix time")
        return cls(task=str(doc["task"]), mode=str(doc["mode"]), created=float(created))


@dataclasses.dataclass
class HeldGuest:
    """What the VM's node did for a hold (`VmStatus.hold`): `state` is `holding` (written
    before it acts, so a node that dies part-way knows to undo it after a restart), then the
    consistency it reached (`fs-frozen`, `crash-consistent`, `stopped`), `failed` (with
    `message`), or `expired` (a freeze thawed after `snapshot.freeze_timeout`)."""

    task: str
    mode: str
    state: str
    since: float = 0.0
    message: str = ""

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: Any) -> HeldGuest | None:
        """None for an empty (or unreadable) report: nothing is held."""
        if not isinstance(doc, dict) or not isinstance(doc.get("task"), str) or \
                not isinstance(doc.get("state"), str):
            return None
        since = doc.get("since", 0.0)
        return cls(task=str(doc["task"]), mode=str(doc.get("mode", "")),
                   state=str(doc["state"]),
                   since=float(since) if isinstance(since, int | float) else 0.0,
                   message=str(doc.get("message", ""))[:1024])
