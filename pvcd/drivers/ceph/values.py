"""The values an operator gives to Ceph operations, checked before any command runs.

Pure functions: a bad value never reaches Ceph and comes back as `InvalidValue` with a message
that says what is allowed. The API validates a request with the same functions before it
writes it (so an invalid request is refused at once), and the driver checks again before it
runs a command (so no caller can bypass them).
"""

from __future__ import annotations

import re

from pvcd.domain.errors import InvalidValue

# `ceph osd set` flags an operator may set and unset (Ceph 16 accepts these; `full` is obsolete
# and `pglog_hardlimit` cannot be unset, so neither is offered).
OSD_FLAGS = (
    "noout", "noin", "nodown", "noup", "norebalance", "norecover", "nobackfill", "noscrub",
    "nodeep-scrub", "pause", "notieragent", "nosnaptrim",
)

SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_SIZE = (1 << 63) - 1
MAX_PGS = 32768
MAX_REPLICAS = 10
MAX_WEIGHT = 1000.0
# Ceph takes almost any byte string as a name; we accept a portable subset that is safe in RBD
# specs (`pool/volume@snapshot`), QEMU's `rbd:` filenames (':' separates options) and shells.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
NAME_LIMITS = {"pool": 63, "volume": 96, "snapshot": 96}
# the device of a lab node's memstore OSD (no disk); a node without a lab provisioner refuses it
LAB_DEVICE = "memstore"
_WEIGHT_RE = re.compile(r"\d{1,4}(\.\d{1,6})?|\.\d{1,6}")
_DEVICE_RE = re.compile(r"/dev/[A-Za-z0-9._/-]{1,200}")


def parse_size(value: str | int) -> int:
    """Bytes from `1073741824`, `4096M` or `20G` (K/M/G/T are binary multiples)."""
    if isinstance(value, bool):
        raise InvalidValue(f"size {value!r} is invalid")
    if isinstance(value, int):
        number, unit = value, ""
    elif isinstance(value, str) and (match := re.fullmatch(r"([0-9]{1,20})([KMGT]?)", value)):
        number, unit = int(match.group(1)), match.group(2)
    else:
        raise InvalidValue(
            f"size {str(value)[:40]!r} is invalid: bytes (at most 20 digits), or a number with "
            "one of the suffixes K, M, G, T "
            "(binary multiples), e.g. 1073741824, 4096M or 20G"
        )
    size = number * SIZE_UNITS.get(unit, 1)
    if not 0 < size <= MAX_SIZE:
        shown = f"size {value!r}" if isinstance(value, str) else "the size"
        raise InvalidValue(f"{shown} is out of range: more than 0 bytes, less than 8 EiB")
    return size


def check_name(kind: str, name: str) -> str:
    """A pool, volume or snapshot name (`kind`), or InvalidValue saying what is allowed."""
    limit = NAME_LIMITS[kind]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > limit:
        raise InvalidValue(
            f"{kind} name {name!r} is invalid: 1-{limit} letters, digits, '_', '.', '+' or '-', "
            "not starting with '.', '+' or '-' (no '/', '@', ':' or whitespace)"
        )
    return name


def check_pool_name(name: str) -> str:
    return check_name("pool", name)


def check_volume_name(name: str) -> str:
    return check_name("volume", name)


def check_snapshot_name(name: str) -> str:
    return check_name("snapshot", name)


def check_pgs(pgs: int | str) -> int:
    """A placement group count: a power of two from 1 to 32768."""
    number = _integer(pgs)
    if number is None or not 1 <= number <= MAX_PGS or number & (number - 1):
        raise InvalidValue(f"pgs {pgs!r} is invalid: a power of two from 1 to {MAX_PGS}, "
                           "e.g. 64 or 256")
    return number


def check_replicas(replicas: int | str) -> int:
    number = _integer(replicas)
    if number is None or not 1 <= number <= MAX_REPLICAS:
        raise InvalidValue(f"replicas {replicas!r} is invalid: 1 to {MAX_REPLICAS} copies")
    return number


def check_osd_id(osd_id: int | str) -> int:
    number = _integer(osd_id)
    if number is None or number < 0:
        raise InvalidValue(f"OSD id {osd_id!r} is invalid: a number like 0 or 12")
    return number


def check_osd_flag(flag: str) -> str:
    if flag not in OSD_FLAGS:
        raise InvalidValue(f"OSD flag {flag!r} is invalid: one of {', '.join(OSD_FLAGS)}")
    return flag


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


def _integer(value: int | str) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,9}", value):
        return int(value)
    return None
