"""Autobackup (extensions.md §5.5): its configuration in `cluster/autobackup`, the schedule, and
which backups a run takes and deletes. Pure rules, no I/O: the API validates a `PUT` with
`AutobackupConfig.updated`, the primary's scheduler asks `CronSchedule.next_run`, and the task
(`pvcd.controllers.autobackup`) asks `next_backup` and `expired_backups` about a VM's state file
(`.autobackup.json`, its backups newest first, as PVC's `autobackup.py:153`).

The schedule is a strict 5-field cron expression (minute hour day-of-month month day-of-week;
numbers, `*`, ranges `a-b`, steps `/n` and lists `,`; no names, no `@daily`) in the primary's
local time, written here rather than taken from a library: the grammar is small, and a strict
parser refuses what a lenient one would guess at. As in cron, when both day fields are
restricted a day matching either one runs. An expression that can never match (`0 0 30 2 *`)
is refused.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pvcd.domain.errors import InvalidValue

DEFAULT_SCHEDULE = "0 2 * * *"
SNAPSHOT_PREFIX = "ab"
STATE_FILE = ".autobackup.json"
FULL, INCREMENTAL = "full", "incremental"
RESULT_SUCCESS, RESULT_FAILURE = "success", "failure"
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))
_NUMBER = re.compile(r"[0-9]{1,2}")
_SUFFIX = re.compile(r"(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})?")
SEARCH_DAYS = 366 * 8  # a match is searched this far ahead (covers every leap day)


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not _NUMBER.fullmatch(step_text) or int(step_text) == 0:
                raise InvalidValue(f"schedule: the {name} step {step_text!r} is invalid: a "
                                   "number from 1")
            step = int(step_text)
        if body == "*":
            first, last = low, high
        else:
            start, dash, end = body.partition("-")
            if not _NUMBER.fullmatch(start) or (dash and not _NUMBER.fullmatch(end)):
                raise InvalidValue(f"schedule: the {name} {part!r} is invalid: *, a number, a "
                                   "range a-b, each optionally with /step, in a list a,b")
            first, last = int(start), int(end) if dash else int(start)
            if step_text and not dash:
                last = high  # `5/15`: from 5 on, as cron does
        if not low <= first <= last <= high:
            raise InvalidValue(f"schedule: the {name} {part!r} is outside {low}-{high} (or a "
                               "range runs backwards)")
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclasses.dataclass(frozen=True)
class CronSchedule:
    """A parsed 5-field cron expression (module docstring)."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday (7 folded onto it)
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str | None) -> CronSchedule:
        if not isinstance(text, str) or not text.strip():
            raise InvalidValue("schedule is empty: 5 fields (minute hour day-of-month month "
                               f"day-of-week) separated by spaces, e.g. '{DEFAULT_SCHEDULE}'")
        parts = text.split()
        if len(parts) != 5 or len(text) > 200:
            raise InvalidValue(f"schedule {text[:200]!r} is invalid: 5 fields (minute hour "
                               "day-of-month month day-of-week) separated by spaces, e.g. "
                               f"'{DEFAULT_SCHEDULE}'")
        fields = [_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(day % 7 for day in fields[4])
        schedule = cls(" ".join(parts), tuple(sorted(fields[0])), tuple(sorted(fields[1])),
                       fields[2], fields[3], weekdays, parts[2] == "*", parts[4] == "*")
        if schedule.next_run(0.0) is None:
            raise InvalidValue(f"schedule {text!r} never runs (no such day)")
        return schedule

    def day_matches(self, day: datetime.date) -> bool:
        if day.month not in self.months:
            return False
        by_day = day.day in self.days
        by_weekday = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return by_day and by_weekday
        return by_day or by_weekday

    def next_run(self, after: float) -> float | None:
        """The first scheduled minute strictly after `after` (Unix seconds), in local time;
        None if there is none within `SEARCH_DAYS`."""
        start = datetime.datetime.fromtimestamp(after).replace(second=0, microsecond=0) + \
            datetime.timedelta(minutes=1)
        day = start.date()
        for _ in range(SEARCH_DAYS):
            if self.day_matches(day):
                for hour in self.hours:
                    for minute in self.minutes:
                        candidate = datetime.datetime.combine(day, datetime.time(hour, minute))
                        if candidate < start:
                            continue
                        moment = time.mktime(candidate.timetuple())  # isdst -1: local rules
                        if moment > after:
                            return moment
            day += datetime.timedelta(days=1)
        return None


def check_suffix(value: str) -> str:
    if not _SUFFIX.fullmatch(value) or value in ("/.", "/.."):
        raise InvalidValue(f"backup_root_suffix {value[:80]!r} is invalid: empty, or '/' and "
                           "one folder name (letters, digits, _ . -; at most 64)")
    return value


@dataclasses.dataclass(frozen=True)
class AutobackupConfig:
    """The configuration part of `cluster/autobackup` (§5.5 `PUT`)."""

    enabled: bool = False
    backup_root_path: str | None = None
    backup_root_suffix: str = ""
    backup_tags: tuple[str, ...] = ()
    schedule: str = DEFAULT_SCHEDULE
    full_interval: int = 7
    full_retention: int = 2

    @classmethod
    def from_doc(cls, doc: Any) -> AutobackupConfig:
        if not isinstance(doc, Mapping):
            return cls()
        default = cls()
        return cls(enabled=doc.get("enabled") is True,
                   backup_root_path=doc.get("backup_root_path") or None,
                   backup_root_suffix=str(doc.get("backup_root_suffix") or ""),
                   backup_tags=tuple(str(t) for t in doc.get("backup_tags") or ()),
                   schedule=str(doc.get("schedule") or default.schedule),
                   full_interval=int(doc.get("full_interval") or default.full_interval),
                   full_retention=int(doc.get("full_retention") or default.full_retention))

    def to_doc(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "backup_root_path": self.backup_root_path,
                "backup_root_suffix": self.backup_root_suffix,
                "backup_tags": list(self.backup_tags), "schedule": self.schedule,
                "full_interval": self.full_interval, "full_retention": self.full_retention}

    def updated(self, changes: Mapping[str, Any]) -> AutobackupConfig:
        """This configuration with `changes` (values already parsed one by one), or
        InvalidValue when the whole would be wrong."""
        new = dataclasses.replace(self, **changes)
        if new.backup_root_suffix is None:  # an empty value: no suffix
            new = dataclasses.replace(new, backup_root_suffix="")
        CronSchedule.parse(new.schedule)
        if new.full_interval < 1 or new.full_retention < 1:
            raise InvalidValue("full_interval and full_retention are integers from 1")
        if new.enabled and (not new.backup_root_path or not new.backup_tags):
            raise InvalidValue("autobackup cannot be enabled without backup_root_path and at "
                               "least one of backup_tags; nothing was changed")
        return new

    @property
    def root(self) -> str:
        """`<backup_root_path><backup_root_suffix>`: where the VM folders go."""
        return f"{self.backup_root_path or ''}{self.backup_root_suffix}"


def snapshot_name(datestring: str) -> str:
    """An autobackup's VM snapshot and directory: `ab<datestring>` (PVC's names)."""
    return SNAPSHOT_PREFIX + datestring


@dataclasses.dataclass(frozen=True)
class Plan:
    """The next backup of a VM: full, or incremental from `parent` (a retained full)."""

    type: str
    parent: str | None = None


def next_backup(backups: Sequence[Mapping[str, Any]], full_interval: int, force_full: bool,
                snapshot_exists: Callable[[str], bool] = lambda name: True) -> Plan:
    """Full when there is no full yet, when `force_full`, when `full_interval - 1` backups
    were taken since the last full, or when the last full's retained snapshot is gone; else
    incremental from the last full. `backups`: the state file's list, newest first."""
    for since, entry in enumerate(backups):
        if entry.get("type") == FULL:
            name = str(entry.get("snapshot_name"))
            if force_full or since >= full_interval - 1 or not snapshot_exists(name):
                return Plan(FULL)
            return Plan(INCREMENTAL, name)
    return Plan(FULL)


def expired_backups(backups: Sequence[Mapping[str, Any]], full_retention: int
                    ) -> list[Mapping[str, Any]]:
    """The backups to delete: the fulls beyond the `full_retention` newest, and every
    incremental whose parent is one of them (or no kept full). Newest first, as given."""
    kept_fulls = [str(e.get("snapshot_name")) for e in backups
                  if e.get("type") == FULL][:full_retention]
    return [e for e in backups
            if (e.get("type") == FULL and str(e.get("snapshot_name")) not in kept_fulls) or
            (e.get("type") != FULL and str(e.get("incremental_parent")) not in kept_fulls)]


def vm_result(result: str, kind: str | None, snapshot: str | None, runtime: float,
              size: int, message: str) -> dict[str, Any]:
    """One VM's entry of a run's `result` (§5.5)."""
    return {"result": result, "type": kind, "snapshot_name": snapshot,
            "runtime_secs": round(runtime, 3), "export_size_bytes": size, "message": message}


def failed_vms(doc: Any) -> list[tuple[str, str]]:
    """From `cluster/autobackup`: the VMs whose latest autobackup failed, with its message
    (the condition of fault `AUTOBACKUP_FAILED_<VM>`, §8.4)."""
    latest = doc.get("latest") if isinstance(doc, Mapping) else None
    if not isinstance(latest, Mapping):
        return []
    return sorted((str(name), str(entry.get("message") or ""))
                  for name, entry in latest.items()
                  if isinstance(entry, Mapping) and entry.get("result") == RESULT_FAILURE)
