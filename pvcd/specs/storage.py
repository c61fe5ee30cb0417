"""The rules of a storage request (`storage/requests/<id>`): its operation and arguments.

The API builds each request's arguments from checked values (`pvcd.drivers.ceph.values`) and
checks the whole request here before it writes it; the node that carries a request out checks
it here again before it runs anything, since anything that reaches ZooKeeper can write one. An
operation takes exactly its arguments: a missing, unknown or invalid one refuses the request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from pvcd.domain.errors import InvalidValue
from pvcd.drivers.ceph import values

Check = Callable[[Any], object]
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _one_of(*allowed: str) -> Check:
    def check(value: Any) -> object:
        if value not in allowed:
            raise InvalidValue(f"{value!r} is invalid; valid values are: {', '.join(allowed)}")
        return value
    return check


def _flag(value: Any) -> object:
    if not isinstance(value, bool):
        raise InvalidValue(f"{value!r} is not true or false")
    return value


def _osd(value: Any) -> object:
    if type(value) is not int:  # the API writes the number (a text would be a forgery)
        raise InvalidValue(f"OSD id {value!r} is not a number")
    return values.check_osd_id(value)


def _size(value: Any) -> object:
    if type(value) is not int:
        raise InvalidValue(f"size {value!r} is not a number of bytes")
    return values.parse_size(value)


def _uuid(value: Any) -> object:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise InvalidValue(f"{value!r} is not a VM UUID")
    return value


def _pgs(value: Any) -> object:
    if type(value) is not int:
        raise InvalidValue(f"pgs {value!r} is not a number")
    return values.check_pgs(value)


def _weight(value: Any) -> object:
    if type(value) not in (int, float):
        raise InvalidValue(f"weight {value!r} is not a number")
    return values.check_weight(value)


def _text(check: Callable[[str], object]) -> Check:
    def checked(value: Any) -> object:
        if not isinstance(value, str):
            raise InvalidValue(f"{value!r} is not a text")
        return check(value)
    return checked


POOL, VOLUME = _text(values.check_pool_name), _text(values.check_volume_name)
SNAPSHOT = _text(values.check_snapshot_name)


def _import_file(value: Any) -> object:
    """An absolute, normalised path without control characters (never taken for an option)."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 4096 or \
            os.path.normpath(value) != value or any(ord(c) < 32 for c in value):
        raise InvalidValue("must be an absolute, normalised file path")
    return value


def _bytes(value: Any) -> object:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValue("must be a whole number of bytes")
    return value

# operation → (required arguments, optional arguments), each with its check
OPERATIONS: Mapping[str, tuple[Mapping[str, Check], Mapping[str, Check]]] = {
    "cluster-option": ({"action": _one_of("set", "unset"), "option": _text(values.check_osd_flag)},
                       {}),
    "osd-add": ({"device": _text(values.check_device), "weight": _weight}, {}),
    "osd-remove": ({"osd": _osd}, {}),
    "osd-state": ({"osd": _osd, "state": _one_of("in", "out")}, {}),
    "pool-add": ({"pool": POOL, "pgs": _pgs}, {}),
    "pool-remove": ({"pool": POOL}, {}),
    "volume-add": ({"pool": POOL, "volume": VOLUME, "size": _size}, {}),
    "volume-modify": ({"pool": POOL, "volume": VOLUME},
                      {"name": VOLUME, "size": _size, "allow_shrink": _flag, "force": _flag}),
    "volume-clone": ({"pool": POOL, "volume": VOLUME, "new_volume": VOLUME},
                     {"snapshot": SNAPSHOT, "force": _flag}),
    "volume-remove": ({"pool": POOL, "volume": VOLUME}, {"with_snapshots": _flag}),
    # the node running a VM tells its guest that a grown volume is larger (libvirt block resize)
    "vm-disk-resize": ({"vm": _uuid, "pool": POOL, "volume": VOLUME, "size": _size}, {}),
    "snapshot-add": ({"pool": POOL, "volume": VOLUME, "snapshot": SNAPSHOT}, {}),
    "snapshot-remove": ({"pool": POOL, "volume": VOLUME, "snapshot": SNAPSHOT}, {}),
    "snapshot-rename": ({"pool": POOL, "volume": VOLUME, "snapshot": SNAPSHOT,
                         "new_name": SNAPSHOT}, {}),
    "snapshot-rollback": ({"pool": POOL, "volume": VOLUME, "snapshot": SNAPSHOT}, {}),
    # a VM import or restore (extensions.md §5.2): an export file on the primary, checked by
    # the task against backup.allowed_paths and its manifest's SHA-256 before it asks
    "volume-import": ({"pool": POOL, "volume": VOLUME, "file": _import_file},
                      {"diff": _flag, "bytes": _bytes}),
}


def check_storage_request(op: Any, args: Any) -> None:
    """InvalidValue unless `args` are exactly the arguments of operation `op`, each valid."""
    if op not in OPERATIONS:
        raise InvalidValue(f"unknown storage operation {op!r}")
    if not isinstance(args, dict):
        raise InvalidValue(f"the arguments of a {op} request must be a mapping")
    required, optional = OPERATIONS[op]
    unknown = sorted(str(name) for name in args if name not in required and name not in optional)
    if unknown:
        raise InvalidValue(f"a {op} request takes no {', '.join(unknown)}")
    for name in required:
        if name not in args:
            raise InvalidValue(f"a {op} request needs {name}")
    for name, check in {**required, **optional}.items():
        if name in args:
            try:
                check(args[name])
            except InvalidValue as exc:
                raise InvalidValue(f"{op} {name}: {exc}") from None
