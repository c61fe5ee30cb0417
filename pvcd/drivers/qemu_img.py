"""`qemu-img` on RBD volumes: what an image file says about itself (`info`), and converting it
into raw data in another volume (`convert`).

qemu-img opens RBD volumes itself (Debian's `qemu-block-extra`) with a `rbd:pool/volume:...`
file name; pool and volume names are checked again here, and the Ceph configuration and keyring
paths may not hold the characters that separate options in that name (`:`, `\\`), so no value
can add an option. Every run is an argument list with a time limit; the conversion's progress
(`-p`, "(12.34/100%)") is reported to the caller about once a second, and the caller may stop it
(the process is killed).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pvcd.domain.errors import BackendError, InvalidValue
from pvcd.drivers.ceph.values import check_pool_name, check_volume_name

log = logging.getLogger(__name__)

QEMU_IMG = "qemu-img"
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
MIN_DATA_RATE = 10 << 20  # bytes/s a conversion is allowed at least, on top of the timeout


@dataclass(frozen=True)
class RbdAccess:
    """How qemu-img reaches the cluster: its configuration, the keyring, the client id."""

    conf_path: str
    keyring_path: str
    client_id: str = "admin"

    def filename(self, pool: str, volume: str) -> str:
        """`rbd:<pool>/<volume>:id=...:conf=...:keyring=...` (names checked, no separators in
        the paths)."""
        check_pool_name(pool)
        check_volume_name(volume)
        for what, text in (("configuration", self.conf_path), ("keyring", self.keyring_path),
                           ("client id", self.client_id)):
            if not text or any(c in text for c in ":\\") or any(ord(c) < 32 for c in text):
                raise InvalidValue(f"the Ceph {what} {text!r} cannot be passed to qemu-img "
                                   "(no ':', '\\' or control characters allowed)")
        return (f"rbd:{pool}/{volume}:id={self.client_id}:conf={self.conf_path}"
                f":keyring={self.keyring_path}")


class QemuImg:
    """Runs `qemu-img` with a time limit (`timeout`, stretched by the data for a conversion)."""

    def __init__(self, timeout: float = 60.0, binary: str = QEMU_IMG) -> None:
        self.timeout = timeout
        self.binary = binary

    def info(self, filename: str, image_format: str) -> dict[str, Any]:
        """`qemu-img info --output=json -f <format>` of one image (not its backing chain)."""
        argv = [self.binary, "info", "--output=json", "-f", image_format, filename]
        try:
            result = subprocess.run(argv, capture_output=True, timeout=self.timeout,
                                    check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BackendError(f"qemu-img info timed out after {self.timeout:g} s") from None
        except FileNotFoundError:
            raise BackendError(f"{self.binary} is not installed (package qemu-utils)") from None
        if result.returncode != 0:
            raise InvalidValue("qemu-img cannot read the image as "
                               f"{image_format}: {_last_line(result.stderr)}")
        try:
            doc = json.loads(result.stdout)
        except ValueError:
            raise BackendError("qemu-img info returned no valid JSON") from None
        if not isinstance(doc, dict):
            raise BackendError("qemu-img info returned no JSON object")
        return doc

    def convert(self, source: str, image_format: str, target: str, size: int,
                progress: Callable[[float], None], stopped: Callable[[], bool]) -> None:
        """Write the image `source` as raw data into the existing `target` (`-n`: not
        created; zeroes written where the image has none, so old data does not show through).
        `progress(percent)` about once a second; `stopped()` ends it early (BackendError)."""
        argv = [self.binary, "convert", "-p", "-n", "-f", image_format, "-O", "raw", source,
                target]
        limit = self.timeout + size / MIN_DATA_RATE
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise BackendError(f"{self.binary} is not installed (package qemu-utils)") from None
        seen: list[float] = [0.0]
        errors: list[bytes] = []
        readers = [threading.Thread(target=_read_progress, args=(process.stdout, seen),
                                    daemon=True),
                   threading.Thread(target=lambda: errors.append(
                       process.stderr.read() if process.stderr else b""), daemon=True)]
        for reader in readers:
            reader.start()
        waited = 0.0
        try:
            while True:
                try:
                    code = process.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    waited += 1.0
                progress(seen[0])
                if stopped():
                    raise BackendError("the conversion was stopped")
                if waited > limit:
                    raise BackendError(f"qemu-img convert timed out after {limit:.0f} s")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            for reader in readers:
                reader.join(timeout=5)
        if code != 0:
            raise BackendError("qemu-img convert failed: "
                               f"{_last_line(b''.join(errors))}")
        progress(100.0)


def _read_progress(stream: Any, seen: list[float]) -> None:
    """Keep the last percentage qemu-img printed (`\\r`-separated) in `seen[0]`."""
    if stream is None:
        return
    tail = b""
    for block in iter(lambda: stream.read1(4096), b""):
        tail = (tail + block)[-256:]
        found = _PERCENT.findall(tail)
        if found:
            seen[0] = float(found[-1])


def _last_line(raw: bytes) -> str:
    lines = [line.strip() for line in raw.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"
