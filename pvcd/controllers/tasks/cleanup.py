"""Removing a failed task's artifacts: in reverse order, each through its kind's `undo`.

Used by the node that ran a task (it failed there) and by the primary (the task was
interrupted or cancelled). Each artifact removed leaves the list at once (`save`), so whoever
cleans up after a crash in the middle removes only what is left; what cannot be removed stays
listed and is named in the returned lines (the task's `message` says them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pvcd.controllers.tasks.registry import TaskKind
from pvcd.domain.tasks import TaskRecord

log = logging.getLogger(__name__)


def undo_artifacts(record: TaskRecord, kind: TaskKind | None,
                   save: Callable[[], object]) -> list[str]:
    """Remove `record.artifacts` newest first; return a line per artifact left in place."""
    left: list[str] = []
    for artifact in list(reversed(record.artifacts)):
        if kind is None:
            left.append(f"{artifact.kind} {artifact.ref} (no task kind {record.name!r} on "
                        "this node to remove it)")
            continue
        try:
            kind.undo(artifact)
        except Exception as exc:  # reported in the task's message, never raised
            log.warning("event=task-undo-failed task=%s artifact=%s:%s error=%s", record.id,
                        artifact.kind, artifact.ref, exc)
            left.append(f"{artifact.kind} {artifact.ref} ({exc})")
            continue
        record.artifacts.remove(artifact)
        log.info("event=task-artifact-removed task=%s artifact=%s:%s", record.id,
                 artifact.kind, artifact.ref)
        save()
    return left


def failure_message(reason: str, left: list[str]) -> str:
    if not left:
        return reason
    return f"{reason}; could not remove: {'; '.join(left)}"
