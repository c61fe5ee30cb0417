"""Whether a pool has room for more provisioned bytes: the hard limit and PVC's 80 % soft cap.

RBD volumes are thin, so a pool can be promised more than it holds. PVC 1.0 refuses a new or
grown volume whose full size would not fit in the pool's free space, and, unless the operator
passes `force`, one that would take the pool past 80 % of its capacity (extensions.md §2.2,
§2.3). "Capacity" is what the pool stores plus what it can still take (`ceph df`: `stored` and
`max_avail`, both after replication), as PVC computes it. Pure: the primary reads the numbers
from Ceph right before it acts and asks here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvcd.domain.errors import InvalidValue

SOFT_CAP = 0.80


@dataclass(frozen=True)
class PoolSpace:
    """A pool's usage as `ceph df` reports it: bytes stored and bytes it can still take."""

    pool: str
    stored: int
    free: int

    @property
    def capacity(self) -> int:
        return self.stored + self.free


def check_room(space: PoolSpace, adding: int, what: str, force: bool) -> None:
    """InvalidValue unless `adding` more bytes (`what` says for what) fit in the pool: less than
    its free space, and (without `force`) within 80 % of its capacity."""
    if adding <= 0:
        return
    if adding >= space.free:
        raise InvalidValue(f"{what} needs {adding} bytes, but pool {space.pool} has only "
                           f"{space.free} bytes free; nothing was changed")
    after = space.stored + adding
    if not force and after > SOFT_CAP * space.capacity:
        percent = 100.0 * after / space.capacity if space.capacity else 100.0
        raise InvalidValue(f"{what} would fill pool {space.pool} to {percent:.0f} % of its "
                           f"capacity ({space.capacity} bytes), past the {SOFT_CAP:.0%} soft "
                           "cap; add 'force' to do it anyway; nothing was changed")
