"""Writing data into new RBD volumes: a fresh filesystem, or a converted disk image.

The provisioner's `blank` disks with a `filesystem` and its `ova` disks (extensions.md §3.6) need
bytes written into a volume the primary has just made. `rbd map` needs the kernel's `rbd`
module, which many hosts (and the development machine) lack, so nothing is mapped:

- a filesystem is made by `mkfs.<fs>` (or `mkswap`) on a sparse file of the disk's size in a
  private temporary directory (mode 0700), then copied into the volume with
  `qemu-img convert -n --target-is-zero`, which skips the zero blocks (the volume is new, so
  it reads as zeros): the volume then holds exactly what mkfs wrote on a device;
- an image is converted volume to volume with `qemu-img convert -f <format> -O raw`.

Every command is an argument list with a timeout that grows with the data; the tool names come
from this module's table, never from the cluster's state, and every pool, volume, filesystem
argument and format is checked here again before a command runs (the task read them from
ZooKeeper). `qemu-img` reaches Ceph through its `rbd:` driver (Debian: `qemu-utils` and
`qemu-block-extra`) as client.admin, with the same ceph.conf and keyring as `rbd`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence

from pvcd.domain.errors import BackendError, InvalidValue
from pvcd.drivers.ceph.values import check_pool_name, check_volume_name

log = logging.getLogger(__name__)

# filesystem -> the command that makes it on a file (options before the file)
MKFS: dict[str, tuple[str, ...]] = {
    "ext2": ("mkfs.ext2", "-F", "-q"), "ext3": ("mkfs.ext3", "-F", "-q"),
    "ext4": ("mkfs.ext4", "-F", "-q"), "xfs": ("mkfs.xfs", "-q"),
    "btrfs": ("mkfs.btrfs", "-q"), "vfat": ("mkfs.vfat",), "swap": ("mkswap",),
}
IMAGE_FORMATS = ("raw", "qcow2", "vmdk", "qed", "vdi", "vpc")
# `-X` or `-X=value` (§3.4): no whitespace or shell characters
_FS_ARG = re.compile(r"-[A-Za-z0-9]{1,2}(=[A-Za-z0-9_.,:/+@%-]{0,200})?")
MIN_DATA_RATE = 10 << 20  # bytes/s allowed on top of the command timeout
_RBD_UNSAFE = re.compile(r"[:\\@\s]")  # would change the meaning of a qemu `rbd:` filename


def filesystem_arguments(args: Sequence[str]) -> list[str]:
    """`-X` stays, `-X=value` becomes `-X value`; anything else is InvalidValue."""
    argv: list[str] = []
    for arg in args:
        if not isinstance(arg, str) or not _FS_ARG.fullmatch(arg):
            raise InvalidValue(f"filesystem argument {arg!r} is invalid: -X or -X=value "
                               "(letters, digits and _.,:/+@%- only)")
        option, sep, value = arg.partition("=")
        argv += [option, value] if sep else [option]
    return argv


class DiskImages:
    """Writes into RBD volumes of the cluster described by `conf_path`, as client.admin."""

    def __init__(self, conf_path: str, keyring_path: str, timeout: float = 30.0) -> None:
        for path in (conf_path, keyring_path):
            if _RBD_UNSAFE.search(path):
                raise InvalidValue(f"{path!r} cannot be named in a qemu rbd: filename (no ':', "
                                   "'\\', '@' or whitespace)")
        self.conf_path = conf_path
        self.keyring_path = keyring_path
        self.timeout = timeout

    def rbd_filename(self, pool: str, volume: str) -> str:
        check_pool_name(pool)
        check_volume_name(volume)
        return f"rbd:{pool}/{volume}:id=admin:conf={self.conf_path}:keyring={self.keyring_path}"

    def write_filesystem(self, pool: str, volume: str, size: int, filesystem: str,
                         args: Sequence[str] = ()) -> None:
        """Make `filesystem` (with `args`) of `size` bytes and write it into the new, empty
        volume `pool/volume` of at least that size."""
        if filesystem not in MKFS:
            raise InvalidValue(f"filesystem {filesystem!r} is invalid; valid filesystems are: "
                               f"{', '.join(MKFS)}")
        options = filesystem_arguments(args)
        target = self.rbd_filename(pool, volume)
        with tempfile.TemporaryDirectory(prefix="pvcd-mkfs-") as directory:
            image = os.path.join(directory, "disk.img")
            with open(image, "wb") as handle:
                handle.truncate(size)  # sparse: only what mkfs writes takes space
            self._run([*MKFS[filesystem], *options, image], self.timeout)
            self._run(["qemu-img", "convert", "-n", "--target-is-zero", "-f", "raw", "-O", "raw",
                       image, target], self._data_timeout(size))
        log.info("event=disk-filesystem-written pool=%s volume=%s filesystem=%s bytes=%d", pool,
                 volume, filesystem, size)

    def convert(self, pool: str, source: str, source_format: str, target_pool: str,
                target: str, size: int) -> None:
        """Convert the image in volume `pool/source` (format `source_format`) into the new,
        empty volume `target_pool/target`."""
        if source_format not in IMAGE_FORMATS:
            raise InvalidValue(f"image format {source_format!r} is invalid; valid formats are: "
                               f"{', '.join(IMAGE_FORMATS)}")
        self._run(["qemu-img", "convert", "-n", "--target-is-zero", "-f", source_format,
                   "-O", "raw", self.rbd_filename(pool, source),
                   self.rbd_filename(target_pool, target)], self._data_timeout(size))
        log.info("event=disk-image-converted source=%s/%s format=%s target=%s/%s", pool, source,
                 source_format, target_pool, target)

    def _data_timeout(self, size: int) -> float:
        return self.timeout + max(0, size) / MIN_DATA_RATE

    def _run(self, argv: list[str], timeout: float) -> None:
        shown = " ".join(a if not a.startswith("rbd:") else a.split(":id=")[0] for a in argv)
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                    check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"`{shown}` timed out after {timeout:.0f} s") from exc
        except FileNotFoundError as exc:
            raise BackendError(f"{argv[0]} is not installed (Debian: qemu-utils "
                               "qemu-block-extra e2fsprogs xfsprogs btrfs-progs dosfstools)"
                               ) from exc
        if result.returncode != 0:
            why = (result.stderr or result.stdout).strip()[-500:]
            raise BackendError(f"`{shown}` failed (exit {result.returncode}): {why}")
