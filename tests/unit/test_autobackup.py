"""Autobackup's pure rules (extensions.md §5.5): the cron schedule, full or incremental, what
retention deletes, the configuration's validation and the fault condition."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest

from pvcd.domain.autobackup import (
    FULL,
    INCREMENTAL,
    AutobackupConfig,
    CronSchedule,
    check_suffix,
    expired_backups,
    failed_vms,
    next_backup,
)
from pvcd.domain.errors import InvalidValue
from pvcd.domain.faults import ClusterFacts, conditions


def local(*parts: int) -> float:
    return time.mktime(datetime.datetime(*parts).timetuple())  # type: ignore[arg-type]


def at(moment: float | None) -> datetime.datetime:
    assert moment is not None
    return datetime.datetime.fromtimestamp(moment)


def test_the_default_schedule_runs_at_two_local_time_strictly_after() -> None:
    daily = CronSchedule.parse("0 2 * * *")
    assert at(daily.next_run(local(2026, 3, 4, 1, 59, 30))) == datetime.datetime(2026, 3, 4, 2, 0)
    # exactly at 02:00 the next one is tomorrow's: a run is never started twice
    assert at(daily.next_run(local(2026, 3, 4, 2, 0))) == datetime.datetime(2026, 3, 5, 2, 0)


def test_steps_ranges_lists_and_weekdays() -> None:
    often = CronSchedule.parse("*/15 9-17 * * 1-5")
    # Saturday 2026-03-07 10:00 -> Monday 09:00
    assert at(often.next_run(local(2026, 3, 7, 10, 0))) == datetime.datetime(2026, 3, 9, 9, 0)
    assert at(often.next_run(local(2026, 3, 9, 9, 1))) == datetime.datetime(2026, 3, 9, 9, 15)
    listed = CronSchedule.parse("5,35 0 1 1,7 *")
    assert at(listed.next_run(local(2026, 1, 1, 0, 5))) == datetime.datetime(2026, 1, 1, 0, 35)
    assert at(listed.next_run(local(2026, 1, 1, 0, 35))) == datetime.datetime(2026, 7, 1, 0, 5)
    sunday = CronSchedule.parse("0 3 * * 7")  # 7 is Sunday, as 0
    assert at(sunday.next_run(local(2026, 3, 4, 0, 0))).isoweekday() == 7


def test_both_day_fields_restricted_match_either_as_cron_does() -> None:
    either = CronSchedule.parse("0 0 13 * 5")  # the 13th, or any Friday
    assert at(either.next_run(local(2026, 3, 1, 0, 0))) == datetime.datetime(2026, 3, 6, 0, 0)
    assert at(either.next_run(local(2026, 3, 12, 0, 0))) == datetime.datetime(2026, 3, 13, 0, 0)


def test_a_leap_day_schedule_is_found_years_ahead() -> None:
    leap = CronSchedule.parse("0 0 29 2 *")
    assert at(leap.next_run(local(2026, 3, 1, 0, 0))) == datetime.datetime(2028, 2, 29, 0, 0)


@pytest.mark.parametrize("text", ["", "0 2 * *", "0 2 * * * *", "60 * * * *", "* 24 * * *",
                                  "* * 0 * *", "* * * 13 *", "* * * * 8", "*/0 * * * *",
                                  "5-1 * * * *", "@daily", "0 2 * * MON", "0 0 30 2 *",
                                  "1,,2 * * * *", "-1 * * * *", "0x1 * * * *"])
def test_invalid_or_never_matching_schedules_are_refused(text: str) -> None:
    with pytest.raises(InvalidValue, match="schedule"):
        CronSchedule.parse(text)


def full(name: str) -> dict[str, Any]:
    return {"snapshot_name": name, "type": FULL, "incremental_parent": None}


def inc(name: str, parent: str) -> dict[str, Any]:
    return {"snapshot_name": name, "type": INCREMENTAL, "incremental_parent": parent}


def test_full_when_none_forced_or_after_interval_else_incremental_from_the_last_full() -> None:
    assert next_backup([], 7, False).type == FULL
    one = [full("ab1")]
    assert next_backup(one, 7, False) == next_backup(one, 3, False)
    assert next_backup(one, 3, False).type == INCREMENTAL
    assert next_backup(one, 3, False).parent == "ab1"
    assert next_backup(one, 3, True).type == FULL
    # full_interval 3: full, inc, inc, then full again
    assert next_backup([inc("ab2", "ab1"), *one], 3, False).parent == "ab1"
    assert next_backup([inc("ab3", "ab1"), inc("ab2", "ab1"), *one], 3, False).type == FULL
    assert next_backup(one, 1, False).type == FULL  # every backup full
    # the last full's snapshot is gone: an incremental has nothing to start from
    assert next_backup(one, 3, False, lambda name: False).type == FULL


def test_retention_keeps_the_newest_fulls_and_their_incrementals() -> None:
    tracked = [inc("ab6", "ab5"), full("ab5"), inc("ab4", "ab3"), full("ab3"),
               inc("ab2", "ab1"), full("ab1")]
    gone = expired_backups(tracked, 2)
    assert [e["snapshot_name"] for e in gone] == ["ab2", "ab1"]
    assert [e["snapshot_name"] for e in expired_backups(tracked, 1)] == [
        "ab4", "ab3", "ab2", "ab1"]
    assert expired_backups(tracked, 3) == []
    # an incremental whose full is no longer listed goes too (nothing could restore it)
    assert [e["snapshot_name"] for e in expired_backups([inc("ab9", "ab0")], 2)] == ["ab9"]


def test_a_configuration_is_checked_as_a_whole() -> None:
    config = AutobackupConfig()
    with pytest.raises(InvalidValue, match="without backup_root_path"):
        config.updated({"enabled": True})
    with pytest.raises(InvalidValue, match="without backup_root_path"):
        config.updated({"enabled": True, "backup_root_path": "/b"})
    ready = config.updated({"enabled": True, "backup_root_path": "/b", "backup_tags": ("x",),
                            "backup_root_suffix": "/auto"})
    assert ready.root == "/b/auto"
    assert AutobackupConfig.from_doc(ready.to_doc()) == ready
    with pytest.raises(InvalidValue, match="schedule"):
        ready.updated({"schedule": "61 * * * *"})
    for suffix in ("auto", "/a/b", "/..", "/.", "/" + "x" * 65):
        with pytest.raises(InvalidValue, match="backup_root_suffix"):
            check_suffix(suffix)


def test_a_failed_latest_autobackup_raises_its_fault_and_a_success_clears_it() -> None:
    doc = {"latest": {"web": {"result": "failure", "message": "rbd said no"},
                      "db": {"result": "success", "message": "ok"}}}
    assert failed_vms(doc) == [("web", "rbd said no")]
    found = conditions(ClusterFacts(autobackup_failures=tuple(failed_vms(doc))))
    assert [(c.id, c.delta) for c in found] == [("AUTOBACKUP_FAILED_WEB", 10)]
    assert "rbd said no" in found[0].message
    assert failed_vms({"latest": {"web": {"result": "success"}}}) == []
    assert failed_vms(None) == []
