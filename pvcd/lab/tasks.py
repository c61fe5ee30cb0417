"""The lab's own task kind, `lab.files`: lets end-to-end tests run a task inside real node
daemons and kill one mid-task (tests/e2e/test_tasks.py). Lab node daemons get it through
`Plugins.task_kinds` (`pvcd.lab.node`); `pvcd run` never has it.

It creates `args.count` files `lab-task-<id>-<n>` in `args.dir` (each an artifact, with a
progress report), then, with `args.hold`, waits until a file `release` appears there (or the
task is stopped). Its undo deletes such a file, and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from pvcd.controllers.tasks import TaskContext, TaskKind, TaskOutcome
from pvcd.domain.errors import InvalidValue
from pvcd.domain.tasks import Artifact

NAME = "lab.files"
PREFIX = "lab-task-"


def run(ctx: TaskContext) -> TaskOutcome:
    folder = Path(str(ctx.args["dir"]))
    count = int(ctx.args.get("count", 1))
    for number in range(1, count + 1):
        path = folder / f"{PREFIX}{ctx.task_id}-{number}"
        path.write_text(ctx.task_id)
        ctx.artifact("file", str(path))
        ctx.progress(number, count, f"made {path.name}")
    while ctx.args.get("hold") and not (folder / "release").exists():
        ctx.check()
        ctx.stopped.wait(0.05)
    return TaskOutcome(f"made {count} files in {folder}", {"files": count})


def undo(artifact: Artifact) -> None:
    path = Path(artifact.ref)
    if artifact.kind != "file" or not path.name.startswith(PREFIX):
        raise InvalidValue(f"not a lab task file: {artifact.kind} {artifact.ref}")
    path.unlink(missing_ok=True)


def lab_task_kinds() -> list[TaskKind]:
    return [TaskKind(NAME, run, undo)]
