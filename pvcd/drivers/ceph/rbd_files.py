"""RBD snapshots to and from files: `rbd export --export-format 2`, `rbd export-diff
--from-snap`, `rbd import --export-format 2` and `rbd import-diff` (extensions.md §5.2, §5.3).

An export streams `rbd`'s stdout through this process in `READ_BLOCK`s: each block is hashed
(SHA-256) and written to the caller's file as it passes, so memory stays bounded whatever the
volume's size and the file is never read a second time. `rbd` runs with an argument list built
from checked names only (never a shell), stderr goes to a small temporary file (a pipe could
fill and stall it), and a watchdog kills it at its time limit or when the caller's `check`
raises (a stopped task). Imports are plain `CephClient.run` calls (they run in the primary's
storage executor, `volume-import`), from a file path that the caller has checked.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import threading
from collections.abc import Callable
from typing import IO

from pvcd.domain.errors import BackendError
from pvcd.drivers.ceph.parsers import ceph_error
from pvcd.drivers.ceph.values import check_pool_name, check_snapshot_name, check_volume_name

READ_BLOCK = 1 << 20
MIN_SECONDS = 120.0
BYTES_PER_SECOND = 20 << 20  # the slowest rate a data command is given time for


def data_timeout(size_bytes: int) -> float:
    """Seconds for a command that moves `size_bytes`."""
    return MIN_SECONDS + size_bytes / BYTES_PER_SECOND


def export_argv(pool: str, volume: str, snapshot: str, parent: str | None) -> list[str]:
    """`rbd` words (after --conf/--keyring) writing the snapshot to stdout: a full export in
    format 2, or the diff from `parent`."""
    check_pool_name(pool)
    check_volume_name(volume)
    check_snapshot_name(snapshot)
    image = f"{pool}/{volume}@{snapshot}"
    if parent is None:
        return ["export", "--export-format", "2", "--no-progress", image, "-"]
    return ["export-diff", "--from-snap", check_snapshot_name(parent), "--no-progress", image,
            "-"]


def import_argv(pool: str, volume: str, path: str, diff: bool) -> list[str]:
    """`rbd` words importing file `path` (absolute: never taken for an option) into
    `pool/volume`: a new image with its snapshots, or a diff onto the existing one."""
    check_pool_name(pool)
    check_volume_name(volume)
    if not path.startswith("/"):
        raise BackendError(f"an import file must be an absolute path, not {path!r}")
    if diff:
        return ["import-diff", "--no-progress", path, f"{pool}/{volume}"]
    return ["import", "--export-format", "2", "--no-progress", path, f"{pool}/{volume}"]


class RbdExporter:
    """Runs `rbd` exports as client.admin of the cluster in `conf_path`."""

    def __init__(self, conf_path: str, keyring_path: str) -> None:
        self.base = ["rbd", "--conf", conf_path, "--keyring", keyring_path]

    def export(self, pool: str, volume: str, snapshot: str, parent: str | None,
               out: IO[bytes], size_hint: int,
               on_bytes: Callable[[int], None] = lambda n: None,
               check: Callable[[], None] = lambda: None) -> tuple[int, str]:
        """Stream the export into `out`: (bytes written, SHA-256 hex). `size_hint` (the
        volume's size) sets the time limit; `check` is called per block (a raise stops it)."""
        words = export_argv(pool, volume, snapshot, parent)
        shown = "rbd " + " ".join(words)
        digest = hashlib.sha256()
        written = 0
        with tempfile.TemporaryFile() as errors:
            try:
                process = subprocess.Popen([*self.base, *words], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=errors)
            except FileNotFoundError:
                raise BackendError("rbd is not installed (package ceph-common)") from None
            timed_out = threading.Event()

            def expire() -> None:
                timed_out.set()
                process.kill()

            watchdog = threading.Timer(data_timeout(size_hint), expire)
            watchdog.daemon = True
            watchdog.start()
            try:
                assert process.stdout is not None
                while block := process.stdout.read(READ_BLOCK):
                    digest.update(block)
                    out.write(block)
                    written += len(block)
                    on_bytes(len(block))
                    check()
                code = process.wait()
            except BaseException:
                process.kill()
                process.wait()
                raise
            finally:
                watchdog.cancel()
                if process.stdout is not None:
                    process.stdout.close()
            if timed_out.is_set():
                raise BackendError(f"`{shown}` timed out after {data_timeout(size_hint):.0f} s")
            if code != 0:
                errors.seek(0)
                raise ceph_error(shown, code, errors.read(4096).decode(errors="replace"))
        return written, digest.hexdigest()
