"""VM exports and backups (extensions.md §5.2-5.4): the directory layout, the manifest, and the
chain of an incremental one. Pure rules, no I/O.

A snapshot export lives in `<export_path>/<vm>/<snapshot_name>/` with `snapshot.json` and
`images/`; a backup in `<backup_path>/<vm>/<datestring>/` with `pvcbackup.json` and
`pvcdisks/` (PVC's two layouts, `Layout`). Both carry the same manifest (`Manifest`): PVC's
fields plus a SHA-256 for every file (`ManifestFile`). A manifest is read back from a file an
operator (or anyone with access to the backup folder) could have edited, so `Manifest.from_doc`
validates everything, and every file path it names must be exactly the one the layout derives
from the pool and volume: no path from a manifest is ever used as given.

An incremental export is an `rbd export-diff` from its parent snapshot; restoring it means
importing the chain from its full root, then each diff in order (`restore_chain`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

from pvcd.domain.errors import InvalidValue

FORMAT = "pvcd-vm-export"
FORMAT_VERSION = 1
FULL, INCREMENTAL = "full", "incremental"
MAX_CHAIN = 64  # parents followed at most: a longer chain (or a loop) is refused
BACKUP_SNAPSHOT_PREFIX = "backup_"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DATESTRING = re.compile(r"[0-9]{14}")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the manifest and the disk files of one kind of directory are."""

    kind: str  # "export" or "backup"
    manifest: str
    disks: str

    def disk_file(self, pool: str, volume: str, kind: str) -> str:
        """The relative path of a volume's file: `<disks>/<pool>.<volume>.rbdimg|.rbddiff`."""
        return f"{self.disks}/{pool}.{volume}.{'rbdimg' if kind == FULL else 'rbddiff'}"


EXPORT = Layout("export", "snapshot.json", "images")
BACKUP = Layout("backup", "pvcbackup.json", "pvcdisks")


def backup_datestring(clock: float) -> str:
    """PVC's backup datestring, `YYYYMMDDHHMMSS` in the primary's local time."""
    return time.strftime("%Y%m%d%H%M%S", time.localtime(clock))


def check_datestring(value: str) -> str:
    if not _DATESTRING.fullmatch(value):
        raise InvalidValue(f"invalid backup datestring {value!r}: 14 digits YYYYMMDDHHMMSS")
    return value


def backup_snapshot_name(datestring: str) -> str:
    """The VM snapshot a backup takes: `backup_<datestring>` (§5.4)."""
    return BACKUP_SNAPSHOT_PREFIX + check_datestring(datestring)


@dataclasses.dataclass
class ManifestFile:
    path: str
    pool: str
    volume: str
    volume_size: int
    bytes: int
    sha256: str


@dataclasses.dataclass
class Manifest:
    """`snapshot.json` / `pvcbackup.json` (§5.3)."""

    type: str
    snapshot_name: str
    incremental_parent: str | None
    created: float
    consistency: str
    vm_detail: dict[str, Any]
    files: list[ManifestFile]
    datestring: str | None = None
    runtime_secs: float = 0.0
    result: bool = True
    result_message: str = ""
    retained_snapshot: bool = False

    @property
    def vm_name(self) -> str:
        return str(self.vm_detail.get("name", ""))

    @property
    def vm_uuid(self) -> str:
        return str(self.vm_detail.get("uuid", ""))

    @property
    def export_size_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_doc(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "type": self.type,
                "snapshot_name": self.snapshot_name,
                "incremental_parent": self.incremental_parent, "datestring": self.datestring,
                "created": self.created, "runtime_secs": self.runtime_secs,
                "result": self.result, "result_message": self.result_message,
                "consistency": self.consistency, "retained_snapshot": self.retained_snapshot,
                "vm_detail": self.vm_detail,
                "export_files": [[f.path, f.volume_size] for f in self.files],
                "export_size_bytes": self.export_size_bytes,
                "files": [dataclasses.asdict(f) for f in self.files]}

    @classmethod
    def from_doc(cls, doc: Any, layout: Layout) -> Manifest:
        """The manifest, or InvalidValue naming what is wrong."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InvalidValue(f"not a pvcd VM export manifest (format {FORMAT!r} expected)")
        if doc.get("format_version") != FORMAT_VERSION:
            raise InvalidValue(f"manifest format_version {doc.get('format_version')!r} is not "
                               f"supported (only {FORMAT_VERSION})")
        kind = doc.get("type")
        if kind not in (FULL, INCREMENTAL):
            raise InvalidValue(f"manifest type must be {FULL} or {INCREMENTAL}, not {kind!r}")
        name, parent = doc.get("snapshot_name"), doc.get("incremental_parent")
        if not isinstance(name, str) or not name:
            raise InvalidValue("the manifest has no snapshot_name")
        if kind == INCREMENTAL and (not isinstance(parent, str) or not parent):
            raise InvalidValue("an incremental manifest must name its incremental_parent")
        if kind == FULL:
            parent = None
        detail = doc.get("vm_detail")
        if not isinstance(detail, dict) or not isinstance(detail.get("xml"), str) or \
                not isinstance(detail.get("name"), str) or not isinstance(detail.get("uuid"),
                                                                          str):
            raise InvalidValue("the manifest's vm_detail must hold the VM's name, uuid and xml")
        datestring = doc.get("datestring")
        if datestring is not None and not isinstance(datestring, str):
            raise InvalidValue("the manifest's datestring must be text")
        files = doc.get("files")
        if not isinstance(files, list) or not files:
            raise InvalidValue("the manifest lists no files")
        entries = [_file(entry, layout, str(kind)) for entry in files]
        if len({(f.pool, f.volume) for f in entries}) != len(entries):
            raise InvalidValue("the manifest lists a volume twice")
        return cls(type=str(kind), snapshot_name=name, incremental_parent=parent,
                   created=_number(doc.get("created", 0), "created"),
                   consistency=str(doc.get("consistency", "")), vm_detail=dict(detail),
                   files=entries, datestring=datestring,
                   runtime_secs=_number(doc.get("runtime_secs", 0), "runtime_secs"),
                   result=bool(doc.get("result", True)),
                   result_message=str(doc.get("result_message", "")),
                   retained_snapshot=bool(doc.get("retained_snapshot", False)))

    def summary(self) -> dict[str, Any]:
        """`GET /vm/<vm>/backup`'s element (§5.4)."""
        return {"datestring": self.datestring, "type": self.type,
                "incremental_parent": self.incremental_parent, "result": self.result,
                "export_size_bytes": self.export_size_bytes,
                "retained_snapshot": self.retained_snapshot,
                "snapshot_name": self.snapshot_name, "created": self.created}


def _file(entry: Any, layout: Layout, kind: str) -> ManifestFile:
    if not isinstance(entry, dict):
        raise InvalidValue("each of the manifest's files must be an object")
    pool, volume, path = entry.get("pool"), entry.get("volume"), entry.get("path")
    if not isinstance(pool, str) or not isinstance(volume, str) or not isinstance(path, str):
        raise InvalidValue("each of the manifest's files needs pool, volume and path")
    # the pool and volume name rules (no '/', no '..' as a whole name): the path follows
    for what, name in (("pool", pool), ("volume", volume)):
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}", name):
            raise InvalidValue(f"the manifest names an invalid {what} {name[:40]!r}")
    if path != layout.disk_file(pool, volume, kind):
        raise InvalidValue(f"the manifest's file {path[:80]!r} is not where the {kind} export "
                           f"of {pool}/{volume} belongs ({layout.disk_file(pool, volume, kind)})")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise InvalidValue(f"the manifest's file {path} has no valid sha256")
    size, length = entry.get("volume_size"), entry.get("bytes")
    for what, value in (("volume_size", size), ("bytes", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidValue(f"the manifest's file {path}: {what} must be a whole number")
    assert isinstance(size, int) and isinstance(length, int)
    return ManifestFile(path=path, pool=pool, volume=volume, volume_size=size, bytes=length,
                        sha256=sha)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidValue(f"the manifest's {what} must be a non-negative number")
    return float(value)


def restore_chain(target_name: str, target: Manifest, read_parent: Callable[[str], Manifest]
                  ) -> list[tuple[str, Manifest]]:
    """(directory name, manifest) to import for `target` (in directory `target_name`), its full
    root first. `read_parent(name)` reads the manifest of the sibling directory `name` (raising
    NotFound or InvalidValue). InvalidValue for a loop, a chain longer than MAX_CHAIN, or a
    parent of another VM or without the volumes its child changes."""
    chain = [(target_name, target)]
    seen = {target_name}
    while chain[-1][1].type == INCREMENTAL:
        child_name, child = chain[-1]
        parent_name = child.incremental_parent
        assert parent_name is not None
        if parent_name in seen or len(chain) >= MAX_CHAIN:
            raise InvalidValue(f"the chain of incremental exports from '{target_name}' loops "
                               f"or is longer than {MAX_CHAIN}")
        parent = read_parent(parent_name)
        if parent.vm_uuid != target.vm_uuid:
            raise InvalidValue(f"the parent export '{parent_name}' is of another VM "
                               f"({parent.vm_name})")
        if {(f.pool, f.volume) for f in child.files} - \
                {(f.pool, f.volume) for f in parent.files}:
            raise InvalidValue(f"the parent export '{parent_name}' lacks volumes that "
                               f"'{child_name}' changes")
        seen.add(parent_name)
        chain.append((parent_name, parent))
    return list(reversed(chain))


def renamed_volume(volume: str, old_name: str, new_name: str | None) -> str:
    """A volume's name after an import as `new_name` (§11.1: `<vm>` and `<vm>_<suffix>`)."""
    if new_name is None or not (volume == old_name or volume.startswith(old_name + "_")):
        return volume
    return new_name + volume[len(old_name):]
