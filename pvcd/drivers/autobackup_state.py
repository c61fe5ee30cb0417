"""A VM's autobackup state file, `<root>/<vm>/.autobackup.json` (extensions.md §5.5, PVC's
`autobackup.py:153`): `{"tracked_backups": [...]}`, newest first, one entry per backup of that
VM that autobackup made and still keeps.

It is read back from a folder operators (or anyone with access to it) can edit, so a file that
is not what autobackup writes is refused (InvalidValue: the VM's backup fails and says why,
nothing is deleted on its word), and the paths are checked against `backup.allowed_paths` once
symlinks are resolved. It is written under a temporary name and renamed, mode 0600.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvcd.domain.autobackup import STATE_FILE
from pvcd.domain.errors import InvalidValue
from pvcd.drivers.backup_files import FILE_MODE, is_inside

MAX_STATE_BYTES = 4 << 20
_ENTRY_KEYS = {"snapshot_name": str, "type": str}


def _checked(vm_dir: Path, allowed_paths: Sequence[str]) -> Path:
    path = vm_dir / STATE_FILE
    if not is_inside(str(path), allowed_paths):
        raise InvalidValue(f"{path} leads outside backup.allowed_paths (a symlink?)")
    return path


def read_state(vm_dir: Path, allowed_paths: Sequence[str]) -> list[dict[str, Any]]:
    """The tracked backups, newest first (none without a file)."""
    path = _checked(vm_dir, allowed_paths)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as source:
        raw = source.read(MAX_STATE_BYTES + 1)
    try:
        doc = json.loads(raw) if len(raw) <= MAX_STATE_BYTES else None
    except ValueError:
        doc = None
    entries = doc.get("tracked_backups") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and all(isinstance(e.get(k), t) for k, t in _ENTRY_KEYS.items())
            for e in entries):
        raise InvalidValue(f"{path} is not an autobackup state file (a JSON object with "
                           "tracked_backups, each with snapshot_name and type): fix or remove "
                           "it")
    return entries


def write_state(vm_dir: Path, entries: list[dict[str, Any]],
                allowed_paths: Sequence[str]) -> None:
    path = _checked(vm_dir, allowed_paths)
    part = path.parent / f".{path.name}.part"
    part.unlink(missing_ok=True)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(json.dumps({"tracked_backups": entries}, indent=2, sort_keys=True).encode())
        out.flush()
        os.fsync(out.fileno())
    os.rename(part, path)
