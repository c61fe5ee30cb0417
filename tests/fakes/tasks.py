"""A test-only task kind, to drive the task machinery (pvcd/controllers/tasks) in tests.

`Workshop` makes "things" (strings in `made`): its kind `test.steps` makes `args.steps` of them,
recording each as an artifact and reporting progress after each; `args.fail_at` fails the task
at that step; `args.hold` makes it wait after each step until the test releases it (`release`)
or the task is stopped. Its undo removes a thing (`undone` keeps the order), or fails for the
refs in `stuck`. Never part of production: tests register it through `TaskRegistry`.
"""

from __future__ import annotations

import threading

from pvcd.controllers.tasks import TaskContext, TaskKind, TaskOutcome, TaskRegistry
from pvcd.domain.errors import BackendError
from pvcd.domain.tasks import Artifact, TaskRecord
from pvcd.state.store import Op
from tests.fakes.state import ClusterState

KIND = "test.steps"


class Workshop:
    def __init__(self) -> None:
        self.made: list[str] = []
        self.undone: list[str] = []
        self.stuck: set[str] = set()
        self.holding = threading.Event()  # a held task is waiting for `release`
        self._gate = threading.Event()
        self.ticks = 0  # a monotonic clock the test moves: progress(..) adds 0.1 s per step

    def kind(self) -> TaskKind:
        return TaskKind(KIND, self.run, self.undo)

    def registry(self) -> TaskRegistry:
        return TaskRegistry([self.kind()])

    def release(self) -> None:
        self._gate.set()

    def run(self, ctx: TaskContext) -> TaskOutcome:
        steps = int(ctx.args.get("steps", 1))
        fail_at = ctx.args.get("fail_at")
        for step in range(1, steps + 1):
            ref = f"{ctx.task_id}#{step}"
            self.made.append(ref)
            ctx.artifact("thing", ref)
            ctx.log(f"made {ref}")
            if step == fail_at:
                raise BackendError(f"step {step} broke")
            ctx.progress(step, steps, f"made {step} of {steps}")
            if ctx.args.get("hold"):
                self.holding.set()
                while not self._gate.wait(0.01):
                    ctx.check()
        return TaskOutcome(f"made {steps} things", {"things": steps})

    def undo(self, artifact: Artifact) -> None:
        if artifact.ref in self.stuck:
            raise BackendError(f"{artifact.ref} is stuck")
        if artifact.ref in self.made:
            self.made.remove(artifact.ref)
        self.undone.append(artifact.ref)


def add_task(cluster: ClusterState, task_id: str, run_on: str = "node1", *,
             follows_primary: bool = False, objects: tuple[str, ...] = (),
             **fields: object) -> str:
    """Write a task as the API's `start_task` writes it (fields override, e.g. a state)."""
    record = TaskRecord(id=task_id, name=str(fields.pop("name", KIND)), run_on=run_on,
                        follows_primary=follows_primary, objects=list(objects),
                        args=dict(fields.pop("args", {})),  # type: ignore[call-overload]
                        created=1.0)
    doc = {**record.to_doc(), **fields}
    cluster.store.commit([Op.create(cluster.paths.task(task_id), doc)])
    return cluster.paths.task(task_id)


def task(state: ClusterState, task_id: str) -> TaskRecord:
    doc = state.doc(state.paths.task(task_id))
    assert isinstance(doc, dict), f"no task {task_id}"
    return TaskRecord.from_doc(doc)
