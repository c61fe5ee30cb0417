"""Backup and export directories on the primary's disk (extensions.md §0.2 "host paths", §5.3).

The one place that turns an operator's path into a directory pvcd reads or writes. The rule:
an absolute path that exists as a directory and, after every symlink is resolved, lies inside
one of `backup.allowed_paths` (also resolved); otherwise InvalidValue (a 510). Every directory
below it that pvcd opens (`<root>/<vm>`, `<root>/<vm>/<name>`, the disk folder) is resolved and
checked again, so a symlink placed inside an allowed folder cannot lead out of it; files are
opened with `O_NOFOLLOW`, and new ones with `O_EXCL`.

Writing (`BackupDirectory.create`, `incoming`, `write_manifest`): directories are made mode 0700
and files 0600 (they hold whole disks); each file is written under a temporary name
(`.<name>.part`) and renamed when complete and synced; the manifest is written last, so a
directory without one is incomplete and never imported. Reading (`open_existing`,
`read_manifest`, `verify`): a file's SHA-256 is computed in one pass of `READ_BLOCK`s.

Race named: the folders are root's; an operator who swaps a checked directory for a symlink
between the check and the use (same user as pvcd) is not defended against.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pvcd.domain.errors import InvalidValue, NotFound
from pvcd.domain.vm_backups import Layout, Manifest, restore_chain

READ_BLOCK = 1 << 20
DIR_MODE, FILE_MODE = 0o700, 0o600
MAX_MANIFEST_BYTES = 16 << 20


def _allowed(allowed_paths: Sequence[str]) -> list[str]:
    return [os.path.realpath(p) for p in allowed_paths]


def is_inside(path: str, allowed_paths: Sequence[str]) -> bool:
    """Whether `path`, resolved, is one of the allowed folders or below one."""
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, root]) == root for root in _allowed(allowed_paths))


def resolve_host_path(value: str, allowed_paths: Sequence[str], what: str) -> Path:
    """The §0.2 host path rule: the resolved directory, or InvalidValue saying what is allowed."""
    if not allowed_paths:
        raise InvalidValue(f"{what}: backup.allowed_paths is not set on the primary, so no "
                           "backup or export path is allowed; set it in the configuration "
                           "(docs/configuration.md)")
    shown = ", ".join(allowed_paths)
    if not value.startswith("/") or "\0" in value:
        raise InvalidValue(f"{what} must be an absolute path inside backup.allowed_paths "
                           f"({shown}), not {value[:200]!r}")
    if not is_inside(value, allowed_paths):
        raise InvalidValue(f"{what} {value[:200]!r} is not inside backup.allowed_paths "
                           f"({shown}) once symlinks are resolved")
    real = Path(os.path.realpath(value))
    try:
        is_dir = real.is_dir()
    except OSError as exc:  # a name too long, a permission: not a directory pvcd can use
        raise InvalidValue(f"{what} {value[:200]!r} cannot be used ({exc.strerror})") from None
    if not is_dir:
        raise InvalidValue(f"{what} {value[:200]!r} is not an existing directory on the "
                           "primary")
    return real


class BackupDirectory:
    """`<root>/<vm>/<name>/`: one export or backup (see the module docstring)."""

    def __init__(self, root: Path, vm: str, name: str, allowed_paths: Sequence[str]) -> None:
        for part in (vm, name):
            if not part or "/" in part or part in (".", "..") or "\0" in part:
                raise InvalidValue(f"{part[:80]!r} cannot name a backup directory")
        self.allowed_paths = tuple(allowed_paths)
        self.vm_dir = root / vm
        self.path = self.vm_dir / name

    def __str__(self) -> str:
        return str(self.path)

    def _check(self, path: Path) -> None:
        if not is_inside(str(path), self.allowed_paths):
            raise InvalidValue(f"{path} leads outside backup.allowed_paths (a symlink?)")

    def exists(self) -> bool:
        self._check(self.path)
        return self.path.exists()

    def sibling(self, name: str) -> BackupDirectory:
        """Another directory of the same VM (an incremental's parent)."""
        return BackupDirectory(self.vm_dir.parent, self.vm_dir.name, name, self.allowed_paths)

    # writing
    def create(self, disks: str) -> None:
        """Make `<root>/<vm>` (if missing), this directory (Conflict-free: InvalidValue if it
        exists) and its disk folder, mode 0700."""
        self._check(self.vm_dir)
        self.vm_dir.mkdir(mode=DIR_MODE, exist_ok=True)
        self._check(self.vm_dir)
        try:
            self.path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            raise InvalidValue(f"{self.path} exists already; choose another name or remove "
                               "it") from None
        (self.path / disks).mkdir(mode=DIR_MODE)
        for made in (self.path, self.path / disks):
            os.chmod(made, DIR_MODE)  # whatever the umask

    @contextmanager
    def incoming(self, relative: str) -> Iterator[IO[bytes]]:
        """A file opened for writing under its temporary name; renamed to `relative` when the
        block ends without an error (synced first), removed otherwise."""
        final = self.path / relative
        self._check(final.parent)
        part = final.parent / f".{final.name}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.rename(part, final)
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    def write_manifest(self, manifest_name: str, doc: dict[str, Any]) -> None:
        with self.incoming(manifest_name) as out:
            out.write(json.dumps(doc, indent=2, sort_keys=True).encode())
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the renames are on disk before the task says it is done
        finally:
            os.close(fd)

    def remove(self) -> bool:
        """Remove the directory and everything in it (symlinks inside are removed, never
        followed); False when it was not there."""
        if not self.path.exists() and not self.path.is_symlink():
            return False
        self._check(self.path.parent)
        if self.path.is_symlink():
            self.path.unlink()
        else:
            shutil.rmtree(self.path)
        return True

    # reading
    def read_manifest(self, manifest_name: str) -> Any:
        """The manifest's JSON; NotFound without one (an incomplete or absent directory)."""
        self._check(self.path)
        try:
            with self.open_existing(manifest_name) as source:
                data = source.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise NotFound(f"{self.path} has no {manifest_name} (absent or incomplete)"
                           ) from None
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidValue(f"{self.path / manifest_name} is larger than "
                               f"{MAX_MANIFEST_BYTES} bytes")
        try:
            return json.loads(data)
        except ValueError as exc:
            raise InvalidValue(f"{self.path / manifest_name} is not JSON: {exc}") from None

    @contextmanager
    def open_existing(self, relative: str) -> Iterator[IO[bytes]]:
        path = self.path / relative
        self._check(path.parent)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise InvalidValue(f"{path} cannot be read ({exc.strerror}; a symlink?)") from None
        with os.fdopen(fd, "rb") as source:
            yield source

    def file_path(self, relative: str) -> str:
        path = self.path / relative
        self._check(path.parent)
        return str(path)

    def verify(self, relative: str, length: int, sha256: str,
               on_bytes: Callable[[int], None] = lambda n: None) -> None:
        """InvalidValue unless the file has `length` bytes hashing to `sha256`."""
        digest = hashlib.sha256()
        seen = 0
        try:
            with self.open_existing(relative) as source:
                while block := source.read(READ_BLOCK):
                    digest.update(block)
                    seen += len(block)
                    on_bytes(len(block))
        except FileNotFoundError:
            raise InvalidValue(f"{self.path / relative} is missing") from None
        if seen != length or digest.hexdigest() != sha256:
            raise InvalidValue(f"{self.path / relative} is corrupted: {seen} bytes with SHA-256 "
                               f"{digest.hexdigest()}, the manifest says {length} bytes with "
                               f"{sha256}")


def directory_names(root: Path, vm: str, allowed_paths: Sequence[str]) -> list[str]:
    """The names of the directories in `<root>/<vm>` (none when it is absent), sorted."""
    folder = root / vm
    if "/" in vm or vm in (".", "..") or not folder.is_dir() or \
            not is_inside(str(folder), allowed_paths):
        return []
    return sorted(entry.name for entry in folder.iterdir()
                  if entry.is_dir() and not entry.is_symlink())


def read_chain(directory: BackupDirectory, layout: Layout
               ) -> list[tuple[BackupDirectory, Manifest]]:
    """The directories and manifests to import for `directory`, its full root first (a broken
    chain, a missing or malformed manifest: InvalidValue or NotFound naming it)."""

    def read(where: BackupDirectory) -> Manifest:
        try:
            return Manifest.from_doc(where.read_manifest(layout.manifest), layout)
        except InvalidValue as exc:
            raise InvalidValue(f"{where}: {exc}") from None

    def parent(name: str) -> Manifest:
        sibling = directory.sibling(name)
        try:
            return read(sibling)
        except NotFound:
            raise InvalidValue(f"the chain is broken: the parent export {sibling} has no "
                               f"{layout.manifest}; nothing was changed") from None

    chain = restore_chain(directory.path.name, read(directory), parent)
    return [(directory.sibling(name), manifest) for name, manifest in chain]
