"""The task kinds a node can run: a typed registry handed to `build_tasks` by the daemon.

A `TaskKind` is a name (`volume.upload`, `provisioner.create`: spec §1.4), the function that
does the work (`run(ctx) -> TaskOutcome`, raising a `PvcError` to fail with its message) and the
function that removes one artifact it recorded (`undo(artifact)`). `undo` works from the
artifact alone, since the primary may have to call it for a task another node ran (an
interrupted task); it must be idempotent (the artifact may be gone already) and raise when it
cannot remove it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pvcd.controllers.tasks.context import TaskContext
from pvcd.domain.tasks import Artifact


@dataclass(frozen=True)
class TaskOutcome:
    """A task's success: the message a synchronous 200 would carry, and its `result`."""

    message: str
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskKind:
    name: str
    run: Callable[[TaskContext], TaskOutcome]
    undo: Callable[[Artifact], None]


class TaskRegistry:
    """The task kinds of one daemon, by name; the same on every node (the primary undoes the
    artifacts of tasks any node ran)."""

    def __init__(self, kinds: Iterable[TaskKind] = ()) -> None:
        self._kinds: dict[str, TaskKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: TaskKind) -> None:
        if kind.name in self._kinds:
            raise ValueError(f"task kind {kind.name!r} registered twice")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> TaskKind | None:
        return self._kinds.get(name)

    def names(self) -> list[str]:
        return sorted(self._kinds)
