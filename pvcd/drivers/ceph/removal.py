"""Safe OSD removal: the one storage operation with real danger, its rules and its procedure.

Measured on 16.2.15: `ceph osd safe-to-destroy` said "safe" while PG stats still lagged the OSD
map, and the purge left objects unfound. So the drain is judged on two sources that must agree:
the PG mapping computed from the *current* OSD map (`ceph osd getmap` + `osdmaptool
--test-map-pgs-dump-all`, which includes pg_temp, i.e. where data still is while backfilling)
and the PG stats reported by the OSDs (`ceph pg dump pgs`). Done means: no PG has the OSD in its
up or acting set in the map, every PG's reported up/acting equals the map's (so the stats are
from the current interval), every PG is active+clean, and `safe-to-destroy` agrees.

The rules (`check_osd_removal`, `drain_problems`) are pure, so they can be read and tested on
their own; `remove_osd_safely` runs them against the cluster through a `CephDriver`.

Races: a pool created or an OSD marked in by someone else during the drain only delays it (the
conditions are re-read on every poll). If the drain stops progressing the OSD is left *out* but
in place, never purged; `CephDriver.osd_in` undoes it.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from pvcd.domain.errors import BackendError, Conflict, NotFound
from pvcd.drivers.ceph.parsers import osds_from_dump
from pvcd.drivers.ceph.records import Osd, OsdRemoval, PgState, Pool, ProgressCallback
from pvcd.drivers.ceph.values import check_osd_id

if TYPE_CHECKING:
    from pvcd.drivers.ceph.driver import CephDriver

log = logging.getLogger(__name__)

# flags that stop data from moving off an OSD that is marked out
DRAIN_BLOCKING_FLAGS = ("pause", "norecover", "nobackfill", "norebalance")


def check_osd_removal(osd_id: int, osds: Sequence[Osd], pools: Sequence[Pool],
                      flags: Sequence[str], pgs: Sequence[PgState]) -> None:
    """Refuse (NotFound/Conflict) a removal that would leave data without a copy or cannot
    finish; return if `osd_id` may be drained and removed."""
    target = next((osd for osd in osds if osd.id == osd_id), None)
    if target is None:
        raise NotFound(f"osd.{osd_id} does not exist")
    blocking = [flag for flag in DRAIN_BLOCKING_FLAGS if flag in flags]
    if blocking:
        raise Conflict(f"cannot remove osd.{osd_id}: the cluster flag(s) {', '.join(blocking)} "
                       "stop data from moving off it; unset them first")
    remaining = [osd for osd in osds if osd.up and osd.in_ and osd.id != osd_id]
    used_pools = [pool for pool in pools if pool.pg_num > 0]
    if used_pools and not remaining:
        raise Conflict(f"cannot remove osd.{osd_id}: it is the last OSD that is up and in; the "
                       f"PGs of {len(used_pools)} pool(s) would be left without a copy")
    short = [f"{pool.name} (size {pool.size})" for pool in used_pools
             if pool.size > len(remaining)]
    if short:
        raise Conflict(f"cannot remove osd.{osd_id}: only {len(remaining)} other OSD(s) are up "
                       f"and in, fewer than the copies kept by pool(s) {', '.join(short)}")
    if not target.up:
        unclean = _count_states(pg for pg in pgs if pg.state != "active+clean")
        holding = [pg.pgid for pg in pgs if osd_id in pg.up or osd_id in pg.acting]
        details = []
        if unclean:
            details.append(f"PG states {unclean}")
        if holding:
            details.append(f"PGs on it: {', '.join(holding[:10])}")
        if details:
            raise Conflict(f"cannot remove osd.{osd_id}: it is down and not all PGs are clean "
                           f"({'; '.join(details)}); it may hold their only copy: start it "
                           "again or let recovery finish first")


def drain_problems(osd_id: int, mapped: Sequence[PgState],
                   reported: Sequence[PgState]) -> tuple[list[str], list[str], list[str]]:
    """(PGs whose map up/acting still holds the OSD, PGs whose reported up/acting differs from
    the map or that have not reported, PGs that are not active+clean) — all empty when drained."""
    on_osd = [pg.pgid for pg in mapped if osd_id in pg.up or osd_id in pg.acting]
    by_id = {pg.pgid: pg for pg in reported}
    lagging = []
    for pg in mapped:
        stat = by_id.get(pg.pgid)
        if stat is None or stat.up != pg.up or stat.acting != pg.acting:
            lagging.append(pg.pgid)
    unclean = [pg.pgid for pg in reported if pg.state != "active+clean"]
    return on_osd, lagging, unclean


def _count_states(pgs: Iterable[PgState]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pg in pgs:
        counts[pg.state] = counts.get(pg.state, 0) + 1
    return counts


def remove_osd_safely(ceph: CephDriver, osd_id: int | str, stop_daemon: Callable[[int], None],
                      progress_timeout: float = 120.0, poll_interval: float = 0.5,
                      on_progress: ProgressCallback | None = None) -> OsdRemoval:
    """Drain `osd_id` and remove it without leaving any data without a copy.

    Refuses first (NotFound/Conflict) when that cannot be done (see `check_osd_removal`).
    Then: mark it out; wait until the map and the PG reports agree that no PG uses it and
    all PGs are active+clean (module docstring); call `stop_daemon(osd_id)` (whoever owns
    the process: the lab or a node); wait until the map has it down; `ceph osd purge`;
    remove its auth key. If the drain makes no progress for `progress_timeout` seconds,
    raise BackendError and leave the OSD out but in place.
    """
    number = check_osd_id(osd_id)
    started = ceph.clock()

    def say(message: str) -> None:
        log.info("ceph osd removal osd=%d %s", number, message)
        if on_progress is not None:
            on_progress(f"osd.{number}: {message}")

    dump = ceph.run_json("ceph", ["osd", "dump"])
    pools = [Pool(p["pool_name"], p["pool"], p["size"], p["min_size"], p["pg_num"], [])
             for p in dump.get("pools", [])]
    check_osd_removal(number, osds_from_dump(dump), pools, dump.get("flags_set", []),
                      ceph.pg_stats())
    pgs_moved = sum(1 for pg in ceph.pg_map() if number in pg.up or number in pg.acting)
    say(f"marking out ({pgs_moved} PGs to move)")
    ceph.run("ceph", ["osd", "out", str(number)])
    _wait_drained(ceph, number, progress_timeout, poll_interval, say)
    drain_seconds = ceph.clock() - started
    say(f"drained in {drain_seconds:.1f} s; stopping its daemon")
    try:
        stop_daemon(number)
    except Exception as exc:
        raise BackendError(f"osd.{number} is drained and out, but stopping its daemon "
                           f"failed: {exc}; it was NOT purged") from exc
    _wait_down(ceph, number, progress_timeout, poll_interval, say)
    ceph.run("ceph", ["osd", "purge", str(number), "--yes-i-really-mean-it"])
    try:
        ceph.run("ceph", ["auth", "rm", f"osd.{number}"])
    except NotFound:
        pass  # purge already removed it
    if any(osd.id == number for osd in ceph.osd_list()):
        raise BackendError(f"osd.{number} is still in the OSD map after `ceph osd purge`")
    total = ceph.clock() - started
    say(f"purged; removal took {total:.1f} s")
    return OsdRemoval(number, pgs_moved, drain_seconds, total)


def _wait_drained(ceph: CephDriver, osd_id: int, progress_timeout: float,
                  poll_interval: float, say: ProgressCallback) -> None:
    best: int | None = None
    last_progress = ceph.clock()
    last_said = ""
    while True:
        mapped, reported = ceph.pg_map(), ceph.pg_stats()
        on_osd, lagging, unclean = drain_problems(osd_id, mapped, reported)
        moving = sum(pg.objects_to_move for pg in reported)
        if not (on_osd or lagging or unclean):
            verdict = ceph.run_json("ceph", ["osd", "safe-to-destroy", str(osd_id)],
                                    accept_codes=(0, errno.EBUSY, errno.EAGAIN))
            if osd_id in verdict.get("safe_to_destroy", []):
                return
            lagging = [f"safe-to-destroy says not yet: {verdict}"]
        summary = (f"{len(on_osd)} PGs still on it, {len(unclean)} not active+clean, "
                   f"{len(lagging)} reports behind the map, {moving} objects to move")
        if summary != last_said:
            say(f"draining: {summary}")
            last_said = summary
        work = len(on_osd) + len(unclean) + len(lagging) + moving
        if best is None or work < best:
            best, last_progress = work, ceph.clock()
        elif ceph.clock() - last_progress > progress_timeout:
            states = _count_states(pg for pg in reported if pg.state != "active+clean")
            raise BackendError(
                f"osd.{osd_id} drain made no progress for {progress_timeout:.0f} s: {summary}"
                f" (PGs on it: {', '.join(on_osd[:10]) or 'none'}; states: {states or '-'}). "
                f"osd.{osd_id} is out but was NOT removed; mark it in to undo"
            )
        ceph.sleep(poll_interval)


def _wait_down(ceph: CephDriver, osd_id: int, timeout: float, poll_interval: float,
               say: ProgressCallback) -> None:
    deadline = ceph.clock() + min(timeout, 30.0)
    while ceph.clock() < deadline:
        if not any(osd.id == osd_id and osd.up for osd in ceph.osd_list()):
            return
        ceph.sleep(poll_interval)
    say("daemon stopped but the map still has it up; marking it down")
    ceph.run("ceph", ["osd", "down", str(osd_id)])
