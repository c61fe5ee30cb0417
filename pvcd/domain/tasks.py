"""Tasks: the record of one long job (docs/tasks.md), and the pure rules about tasks.

A task is one znode `tasks/<id>` holding a `TaskRecord`: what it does (`name`), what it works
on (`objects`), where it runs (`run_on`), how far it got (`progress`, `log`), what it made so
far (`artifacts`, removed in reverse order when it fails) and how it ended. The rules here are
the ones every writer must agree on: the id form (sortable by creation, shared with storage
requests), when two tasks overlap and which one waits, what a storage request looks like when
listed as a task, and which finished tasks the retention removes. No I/O.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from pvcd.domain.states import TASK_FINISHED_STATES

LOG_LINES = 100  # a task keeps its last 100 log lines ...
LOG_LINE_LENGTH = 300  # ... of at most 300 characters each


def new_id(now: float) -> str:
    """`<13-digit ms>-<8 hex>`: sortable by creation time, unique without coordination (task
    and storage request ids)."""
    return f"{int(now * 1000):013d}-{secrets.token_hex(4)}"


@dataclasses.dataclass
class Artifact:
    """Something a task created (a volume, a snapshot, a record): `kind` tells its task kind's
    undo what it is, `ref` which one."""

    kind: str
    ref: str

    def to_doc(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref": self.ref}

    @classmethod
    def from_doc(cls, doc: Any) -> Artifact:
        doc = doc if isinstance(doc, Mapping) else {}
        return cls(str(doc.get("kind", "")), str(doc.get("ref", "")))


@dataclasses.dataclass
class TaskProgress:
    """Steps done, steps planned, what it does now (an upload counts bytes)."""

    current: int = 0
    total: int = 0
    message: str = ""


@dataclasses.dataclass
class TaskRecord:
    """One task: `pending` → `running` → `success` | `failure` (docs/tasks.md).

    `follows_primary`: run by whichever node is primary (`run_on` names the primary it was
    created for, and the one that claims it); else only by `run_on`. `cleanup`: a failed task
    whose `artifacts` the primary still has to remove (interrupted or cancelled)."""

    id: str
    name: str
    run_on: str
    follows_primary: bool = True
    state: str = "pending"
    progress: TaskProgress = dataclasses.field(default_factory=TaskProgress)
    message: str = ""
    error: str | None = None
    result: dict[str, Any] | None = None
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    objects: list[str] = dataclasses.field(default_factory=list)
    artifacts: list[Artifact] = dataclasses.field(default_factory=list)
    executor: str | None = None
    log: list[str] = dataclasses.field(default_factory=list)
    cleanup: bool = False
    created: float = 0.0
    started: float | None = None
    updated: float | None = None
    finished: float | None = None

    @property
    def is_finished(self) -> bool:
        return self.state in TASK_FINISHED_STATES

    def add_log(self, line: str) -> None:
        self.log.append(line[:LOG_LINE_LENGTH])
        del self.log[:-LOG_LINES]

    def to_doc(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["artifacts"] = [a.to_doc() for a in self.artifacts]
        return doc

    @classmethod
    def from_doc(cls, doc: Any) -> TaskRecord:
        doc = dict(doc) if isinstance(doc, Mapping) else {}
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in doc.items() if k in names}
        progress = doc.get("progress") if isinstance(doc.get("progress"), Mapping) else {}
        kwargs["progress"] = TaskProgress(int(progress.get("current") or 0),
                                          int(progress.get("total") or 0),
                                          str(progress.get("message") or ""))
        kwargs["artifacts"] = [Artifact.from_doc(a) for a in doc.get("artifacts") or []]
        kwargs.setdefault("id", "")
        kwargs.setdefault("name", "")
        kwargs.setdefault("run_on", "")
        return cls(**kwargs)


def task_object(record: TaskRecord) -> dict[str, Any]:
    """The API's form (§1.1): the record, with PVC 1.0's top-level copies of the progress."""
    doc = record.to_doc()
    doc.update(current=record.progress.current, total=record.progress.total,
               status=record.progress.message)
    return doc


# --- objects: who waits for whom --------------------------------------------------------------

def overlaps(a: Iterable[str], b: Iterable[str]) -> bool:
    """Two tasks overlap when they name an object in common (`vm:<uuid>`, `volume:<p>/<v>`)."""
    return not set(a).isdisjoint(b)


def blocking_task(task: TaskRecord, others: Iterable[TaskRecord]) -> TaskRecord | None:
    """The unfinished task that `task` must wait for: overlapping tasks run one at a time in id
    order, so the first unfinished one with a smaller id that shares an object; else None."""
    earlier = [other for other in others if other.id < task.id and not other.is_finished
               and overlaps(task.objects, other.objects)]
    return min(earlier, key=lambda other: other.id) if earlier else None


def busy_task(objects: Iterable[str], others: Iterable[TaskRecord]) -> TaskRecord | None:
    """An unfinished task working on one of `objects` (a client's new task is refused then)."""
    wanted = list(objects)
    busy = [other for other in others if not other.is_finished
            and overlaps(wanted, other.objects)]
    return min(busy, key=lambda other: other.id) if busy else None


# --- retention --------------------------------------------------------------------------------

def expired(tasks: Iterable[TaskRecord], now: float, retention: float, keep: int
            ) -> list[TaskRecord]:
    """Finished tasks the retention removes: those finished more than `retention` seconds ago,
    and beyond the newest `keep` finished ones (oldest first). A task whose artifacts are still
    to be removed is kept."""
    finished = sorted((t for t in tasks if t.is_finished and not t.cleanup),
                      key=lambda t: (t.finished or 0.0, t.id))
    surplus = max(0, len(finished) - keep)
    return [t for index, t in enumerate(finished)
            if index < surplus or (t.finished or 0.0) < now - retention]


# --- storage requests, listed as tasks --------------------------------------------------------

STORAGE_STATES = {"pending": "pending", "running": "running", "done": "success",
                  "failed": "failure"}


def storage_objects(args: Mapping[str, Any]) -> list[str]:
    """The volumes a storage request works on (`volume:<pool>/<volume>`, and the new volume
    of a clone), so that tasks see them busy as they see each other's objects."""
    pool, names = args.get("pool"), [args.get("volume"), args.get("new_volume")]
    if not isinstance(pool, str) or not pool:
        return []
    return [f"volume:{pool}/{name}" for name in names if isinstance(name, str) and name]


def storage_request_task(doc: Mapping[str, Any], primary: str | None) -> TaskRecord:
    """A storage request (`storage/requests/<id>`) as the task `storage.<op>` (§1.2): states
    `done` → `success`, `failed` → `failure`, its `progress` text as `progress.message`;
    `run_on` the node that runs it (the primary's name for primary requests)."""
    target = str(doc.get("target") or "")
    on_primary = target == "primary"
    executor = doc.get("executor")
    run_on = target
    if on_primary:
        run_on = str(executor).split("/", 1)[0] if executor else (primary or target)
    state = STORAGE_STATES.get(str(doc.get("state")), "pending")
    return TaskRecord(
        id=str(doc.get("id") or ""), name=f"storage.{doc.get('op')}", run_on=run_on,
        follows_primary=on_primary, state=state,
        progress=TaskProgress(message=str(doc.get("progress") or "")),
        message=str(doc.get("message") or ""),
        error=doc.get("error") if state == "failure" else None,
        result=doc.get("result") if state == "success" else None,
        args=dict(doc.get("args") or {}), objects=storage_objects(doc.get("args") or {}),
        executor=executor,
        created=float(doc.get("created") or 0.0), started=doc.get("started"),
        updated=doc.get("finished") or doc.get("started"), finished=doc.get("finished"))
