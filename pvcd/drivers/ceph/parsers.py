"""Ceph's output and errors, read into records and domain errors.

Pure functions over text and JSON that Ceph printed, so they can be tested without a cluster:
the mgr's `ceph osd status` table (Ceph 16 has no JSON form of it), `osdmaptool`'s PG mapping,
`ceph osd dump`'s OSD list, and a failed tool's exit code and stderr, which become `NotFound`
(ENOENT), `Conflict` (EEXIST, EBUSY, ENOTEMPTY: the object exists or is in use) or
`BackendError`, each carrying Ceph's own words without its log prefixes and progress meters.
"""

from __future__ import annotations

import errno
import re
from typing import Any

from pvcd.domain.errors import BackendError, Conflict, NotFound
from pvcd.drivers.ceph.records import Osd, PgState

_LOG_PREFIX_RE = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+[+-]\d{4} [0-9a-f]+ +-?\d+ ")
_PROGRESS_RE = re.compile(r"[A-Za-z ]+: \d+% complete\.\.\.(done|failed)?\.?")
_MAP_LINE_RE = re.compile(
    r"^(?P<pgid>\d+\.[0-9a-f]+) raw \(\[[^\]]*\], p-?\d+\) "
    r"up \(\[(?P<up>[^\]]*)\], p-?\d+\) acting \(\[(?P<acting>[^\]]*)\], p-?\d+\)$"
)
_CONFLICT_ERRNOS = (errno.EEXIST, errno.EBUSY, errno.ENOTEMPTY)


def ceph_error(command: str, code: int, stderr: str) -> BackendError | NotFound | Conflict:
    """The domain error for a failed Ceph tool: its exit code is an errno (`Error ENOENT: ...`
    for `ceph`, `(2) No such file or directory` for `rbd`)."""
    message = f"`{command}` failed: {clean_stderr(stderr) or f'exit code {code}'}"
    if code == errno.ENOENT or "Error ENOENT" in stderr:
        return NotFound(message)
    if code in _CONFLICT_ERRNOS or re.search(r"Error (EEXIST|EBUSY|ENOTEMPTY)", stderr):
        return Conflict(message)
    return BackendError(message)


def clean_stderr(text: str) -> str:
    """Ceph's stderr without log prefixes and progress meters, one line."""
    lines = []
    for line in text.splitlines():
        line = _PROGRESS_RE.sub("", _LOG_PREFIX_RE.sub("", line)).strip()
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines)[-1000:]


def parse_pg_map(text: str) -> list[PgState]:
    """`osdmaptool --test-map-pgs-dump-all` output: one PgState per PG line."""
    result = []
    for line in text.splitlines():
        match = _MAP_LINE_RE.match(line.strip())
        if match:
            result.append(PgState(match["pgid"], _osd_tuple(match["up"]),
                                  _osd_tuple(match["acting"])))
    return result


def parse_osd_status(text: str) -> dict[int, dict[str, Any]]:
    """The mgr's `ceph osd status` table: host and I/O rates per OSD id."""
    rows: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) != 9 or not cells[0].isdigit():
            continue
        osd_id, host, _used, _avail, wr_ops, wr_data, rd_ops, rd_data, _state = cells
        rows[int(osd_id)] = {
            "node": host, "wr_ops": _human(wr_ops, 1000), "wr_data": _human(wr_data, 1024),
            "rd_ops": _human(rd_ops, 1000), "rd_data": _human(rd_data, 1024),
        }
    return rows


def _human(cell: str, factor: int) -> float | None:
    """'0', '12', '1.5k', '1023M' -> a number (the mgr's format_units, k/M/G/T/P)."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?)([kMGTP]?)", cell)
    if not match:
        return None
    power = " kMGTP".index(match[2]) if match[2] else 0
    return float(match[1]) * factor**power


def osds_from_dump(dump: dict[str, Any]) -> list[Osd]:
    return [
        Osd(id=o["osd"], uuid=o.get("uuid", ""), up=bool(o["up"]), in_=bool(o["in"]),
            reweight=float(o.get("weight", 0)),
            primary_affinity=float(o.get("primary_affinity", 1)),
            state=list(o.get("state", [])))
        for o in dump.get("osds", [])
    ]


def _osd_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def kib(value: Any) -> int | None:
    return None if value is None else int(value) * 1024
