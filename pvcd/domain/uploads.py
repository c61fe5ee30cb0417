"""Disk image uploads into a volume (extensions.md §2.1): the rules, without I/O.

An upload writes a body into an existing RBD volume. Everything that can be judged before the
body is read is judged here (`plan_upload`): the format, the expected size, whether a raw image
fits, which names the undo snapshot and the temporary volume get. What the image says about
itself is judged here too: its first bytes before `qemu-img` ever opens it (`check_header`),
and `qemu-img info`'s report afterwards (`check_image_info`).

Why both: a qcow2 or QED image can name a backing file, a qcow2 image an external data file, a
VMDK descriptor extents in other files. qemu opens such paths on the host that runs it (the
primary), and a conversion would copy a host file into the volume. `qemu-img info` opens the
image too (without its backing chain, but with a qcow2 data file or VMDK extents), so the header
check refuses those images before any qemu tool runs; the info check then confirms the format
and that nothing outside the image is referenced.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pvcd.domain.errors import InvalidValue

IMAGE_FORMATS = ("raw", "qcow2", "vmdk", "qed", "vdi", "vpc")
TASK_NAME = "volume.upload"
# artifact kinds: the undo snapshot (rolled back and removed), the temporary volume (removed)
UNDO_SNAPSHOT = "snapshot"
TEMPORARY_VOLUME = "volume"
SUFFIX = "upload"
VOLUME_NAME_LIMIT = 96  # as pvcd.drivers.ceph.values: the temporary volume's name fits in it
HEADER_BYTES = 512  # what `check_header` needs of the body (at most)


@dataclass(frozen=True)
class UploadPlan:
    """One accepted upload: where it goes, what arrives, and the names of what it creates."""

    pool: str
    volume: str
    image_format: str
    file_size: int  # the body's length, as announced
    volume_size: int
    snapshot: str  # `<volume>@<snapshot>`: the undo snapshot
    temporary: str | None  # `<volume>_upload_<n>`: non-raw images land here first

    @property
    def objects(self) -> list[str]:
        """What the task works on: the volume (busy meanwhile) and its temporary volume."""
        names = [self.volume] + ([self.temporary] if self.temporary else [])
        return [f"volume:{self.pool}/{name}" for name in names]

    @property
    def receive_limit(self) -> int:
        """The most bytes the body may hold: the volume (raw) or the announced size."""
        return self.volume_size if self.temporary is None else self.file_size

    def args(self) -> dict[str, Any]:
        return {"pool": self.pool, "volume": self.volume, "image_format": self.image_format,
                "file_size": self.file_size, "volume_size": self.volume_size,
                "snapshot": self.snapshot, "temporary_volume": self.temporary}

    def result(self, received: int, virtual_size: int) -> dict[str, Any]:
        return {"pool": self.pool, "volume": self.volume, "image_format": self.image_format,
                "bytes_received": received, "virtual_size": virtual_size}


def upload_file_size(image_format: str, file_size: int | None,
                     content_length: int | None) -> int:
    """The expected body length: `file_size`, else the request's `Content-Length`. A raw body
    of unknown length is allowed (up to the volume's size; progress then counts to that)."""
    size = file_size if file_size is not None else content_length
    if size is None:
        if image_format == "raw":
            return 0
        raise InvalidValue(f"file_size is required for image_format {image_format} when the "
                           "body has no Content-Length (multipart or chunked): the temporary "
                           "volume is made that large; give the image file's size in bytes")
    if size <= 0:
        raise InvalidValue(f"file_size {size} is invalid: the image file's size, a positive "
                           "number of bytes")
    return size


def free_suffix(taken: Collection[str]) -> int:
    """The lowest n >= 1 for which `upload_<n>` is not in `taken` (snapshot or volume names)."""
    n = 1
    while f"{SUFFIX}_{n}" in taken:
        n += 1
    return n


def temporary_volume_name(volume: str, n: int) -> str:
    """`<volume>_upload_<n>`, the volume's name shortened if it would not fit Ceph's limit."""
    suffix = f"_{SUFFIX}_{n}"
    return volume[:VOLUME_NAME_LIMIT - len(suffix)] + suffix


def plan_upload(pool: str, volume: str, volume_size: int, image_format: str, file_size: int,
                snapshots: Collection[str], volumes: Collection[str]) -> UploadPlan:
    """The upload of `file_size` bytes of `image_format` into `pool/volume`, or InvalidValue.
    `snapshots`: the volume's snapshot names; `volumes`: the pool's volume names."""
    if image_format not in IMAGE_FORMATS:
        raise InvalidValue(f"image_format '{image_format}' is invalid: one of "
                           f"{', '.join(IMAGE_FORMATS)}")
    if image_format == "raw" and file_size > volume_size:
        raise InvalidValue(f"a raw image of {file_size} bytes does not fit RBD volume "
                           f"{pool}/{volume} of {volume_size} bytes; resize the volume first; "
                           "nothing was changed")
    n = 1
    while True:
        n = max(n, free_suffix(snapshots))
        temporary = temporary_volume_name(volume, n) if image_format != "raw" else None
        if temporary is None or temporary not in volumes:
            break
        n += 1
    return UploadPlan(pool, volume, image_format, file_size, volume_size, f"{SUFFIX}_{n}",
                      temporary)


def interrupted_message(received: int, expected: int) -> str:
    of = f" of {expected}" if expected else ""
    return f"upload interrupted after {received}{of} bytes"


def progress_total(plan: UploadPlan) -> int:
    """What the bytes received count towards: the announced size, else the volume's size."""
    return plan.file_size or plan.volume_size


# --- what the image says about itself -----------------------------------------------------

QCOW2_MAGIC = b"QFI\xfb"
QED_MAGIC = b"QED\x00"
VMDK_SPARSE_MAGIC = b"KDMV"
QCOW2_DATA_FILE_BIT = 1 << 2  # incompatible feature "external data file"
QED_BACKING_FILE_BIT = 1 << 0


def check_header(image_format: str, head: bytes) -> None:
    """Refuse an image whose first bytes (`HEADER_BYTES`, or the whole body if shorter) make
    qemu open other files: a qcow2 backing file or external data file, a QED backing file, a
    VMDK that is a text descriptor (its extents are other files) rather than a sparse image."""
    if image_format == "qcow2":
        if len(head) < 80 or head[:4] != QCOW2_MAGIC:
            raise InvalidValue("the body is not a qcow2 image (no qcow2 header); check "
                               "image_format")
        version, backing_offset = struct.unpack(">IQ", head[4:16])
        if backing_offset:
            raise InvalidValue("the qcow2 image names a backing file, which would be read from "
                               "the primary's disk; flatten it first (qemu-img convert -O "
                               "qcow2) and upload the result")
        if version >= 3 and struct.unpack(">Q", head[72:80])[0] & QCOW2_DATA_FILE_BIT:
            raise InvalidValue("the qcow2 image keeps its data in an external data file, which "
                               "would be read from the primary's disk; convert it into a "
                               "self-contained image first")
    elif image_format == "qed":
        if len(head) < 64 or head[:4] != QED_MAGIC:
            raise InvalidValue("the body is not a QED image (no QED header); check "
                               "image_format")
        if struct.unpack("<Q", head[16:24])[0] & QED_BACKING_FILE_BIT:
            raise InvalidValue("the QED image names a backing file, which would be read from "
                               "the primary's disk; flatten it first")
    elif image_format == "vmdk" and head[:4] != VMDK_SPARSE_MAGIC:
        raise InvalidValue("the body is not a sparse VMDK image (monolithicSparse or "
                           "streamOptimized); a VMDK descriptor names extents in other files, "
                           "which cannot be uploaded: convert it into one self-contained file")


def check_image_info(image_format: str, info: Mapping[str, Any], volume_size: int,
                     pool: str, volume: str) -> int:
    """Judge `qemu-img info --output=json` of the uploaded image, opened from RBD volume
    `pool/volume`; return its virtual size, or InvalidValue saying what is wrong. A VMDK's
    extents must all be that volume."""
    found = info.get("format")
    if found != image_format:
        raise InvalidValue(f"qemu-img reads the body as {found!r}, not as {image_format!r}; "
                           "check image_format")
    for key in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        if info.get(key):
            raise InvalidValue(f"the image names a backing file ({info[key]!r}), which would "
                               "be read from the primary's disk; flatten it first")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise InvalidValue(f"the image keeps its data in an external file "
                           f"({specific['data-file']!r}); convert it into a self-contained "
                           "image first")
    for extent in specific.get("extents") or []:
        if not _is_volume(extent.get("filename"), pool, volume):
            raise InvalidValue(f"the image has an extent in another file "
                               f"({extent.get('filename')!r}); convert it into one "
                               "self-contained file first")
    virtual = info.get("virtual-size")
    if not isinstance(virtual, int) or isinstance(virtual, bool) or virtual <= 0:
        raise InvalidValue(f"qemu-img reports no valid virtual size for the image ({virtual!r})")
    if virtual > volume_size:
        raise InvalidValue(f"the image's virtual size ({virtual} bytes) is larger than the "
                           f"volume ({volume_size} bytes); resize the volume first")
    return virtual


def _is_volume(filename: Any, pool: str, volume: str) -> bool:
    """Whether qemu's name of a file (`json:{"driver": "rbd", "pool": ..., "image": ...}` for
    an RBD volume) is `pool/volume`."""
    if not isinstance(filename, str) or not filename.startswith("json:"):
        return False
    try:
        doc = json.loads(filename[len("json:"):])
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("driver") == "rbd" and \
        doc.get("pool") == pool and doc.get("image") == volume
