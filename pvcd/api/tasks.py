"""Task endpoints (`GET /tasks`, `GET/DELETE /tasks/<id>`) and `start_task`, the one way an
endpoint starts a long job (spec §0.2 "long jobs", §1; docs/tasks.md).

Tasks are read from the cache like everything else; storage requests are listed beside them as
tasks named `storage.<op>`. `start_task` refuses a task on an object another unfinished task
works on (510 naming that task: a client never waits behind work it cannot see), creates the
task in one transaction with whatever must be reserved at once, and answers 202 with its id and
`Location`; with the flag `wait` it first waits (up to `api.task_wait`) for the task to finish: 200
with its result, 510 with its failure, still 202 while it runs.

Race named: two requests on the same object within one event-loop turn may both pass the busy
check; the runner then runs them one after the other in id order (`pvcd.controllers.tasks`), so
they never overlap, but the second is queued instead of refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pvcd.api.base import BaseHandler
from pvcd.api.routing import route
from pvcd.api.values import accepts, choice, flag, limit, text
from pvcd.api.waiting import wait_until
from pvcd.domain.errors import Conflict, NotFound
from pvcd.domain.states import TASK_FINISHED_STATES, TASK_STATES
from pvcd.domain.tasks import TaskRecord, busy_task, new_id, task_object
from pvcd.state.request_size import check_request_size
from pvcd.state.store import Op
from pvcd.state.tasks import read_storage_tasks, read_task, read_tasks

PREFIX = "/api/v1/tasks"

WAIT_FOR_TASK = flag("wait", "Answer once the task has finished, waiting at most "
                     "api.task_wait (120 s by default): 200 with its result, 510 with why it "
                     "failed, or still 202 while it runs.")
# declared by every endpoint that starts a task: `@accepts(..., *TASK_VALUES)`
TASK_VALUES = (WAIT_FOR_TASK,)


def task_location(task_id: str) -> str:
    return f"{PREFIX}/{task_id}"


async def start_task(handler: BaseHandler, name: str, args: dict[str, Any],
                     objects: Sequence[str], run_on: str | None = None,
                     reserve_ops: Sequence[Op] = ()) -> None:
    """Create task `name` (validated by the caller) and answer as spec §0.2 says.

    `objects`: what it works on (`vm:<uuid>`, `volume:<pool>/<volume>`); a busy one is a 510
    naming the task working on it. `run_on`: the node that must run it (it must be running),
    or None for the primary (a new primary runs it if this one hands over first).
    `reserve_ops`: written in the same transaction (a name index, a busy mark). The handler
    method declares `TASK_VALUES`."""
    record = await create_task(handler, name, args, objects, run_on, reserve_ops)
    await answer_task(handler, record)


async def create_task(handler: BaseHandler, name: str, args: dict[str, Any],
                      objects: Sequence[str], run_on: str | None = None,
                      reserve_ops: Sequence[Op] = (),
                      before_commit: Callable[[TaskRecord], None] | None = None
                      ) -> TaskRecord:
    """`start_task` without the answer: for an upload, which answers once its body is in.
    `before_commit(record)`: called with the record (its id chosen) right before it is
    written (an upload opens its body's pipe there, so the runner finds it)."""
    ctx = handler.ctx
    view = ctx.view
    busy = busy_task(objects, [*read_tasks(view), *read_storage_tasks(view)])
    if busy is not None:
        shared = sorted(set(objects) & set(busy.objects))
        raise Conflict(f"{', '.join(shared)} is busy with task {busy.id} ({busy.name}, "
                       f"{busy.state}); try again when it has finished "
                       f"(GET {task_location(busy.id)}); nothing was changed")
    if run_on is not None and not view.node_alive(run_on):
        raise Conflict(f"node {run_on} is not running, so the task could not start there; "
                       "nothing was changed")
    now = ctx.clock()
    record = TaskRecord(id=new_id(now), name=name, run_on=run_on or ctx.node_name,
                        follows_primary=run_on is None, args=args, objects=list(objects),
                        created=now, updated=now)
    path = view.paths.task(record.id)
    ops = [*reserve_ops, Op.create(path, record.to_doc())]
    check_request_size(ops, f"the {name} task")  # its args are as large as a client makes them
    if before_commit is not None:
        before_commit(record)
    await handler.commit(ops)
    return record


async def answer_task(handler: BaseHandler, record: TaskRecord) -> None:
    """Answer for a created task as spec §0.2 says: 202, or with `wait` its end."""
    ctx = handler.ctx
    view = ctx.view
    name, wait = record.name, handler.values[WAIT_FOR_TASK]
    path = view.paths.task(record.id)
    accepted = {"task_id": record.id, "task_name": name, "run_on": record.run_on,
                "message": f"Task {record.id} ({name}) accepted; follow it at "
                           f"{task_location(record.id)}"}
    if wait:
        here = view.paths.node_status(ctx.node_name)

        def seen() -> tuple[Any, bool]:
            status = view.node_status(ctx.node_name)
            return view.cache.get(path), status is not None and \
                status.coordinator_state == "relinquish"

        def over(judged: tuple[Any, bool]) -> bool:
            doc, moving = judged
            return moving or (isinstance(doc, dict) and doc.get("state") in
                              TASK_FINISHED_STATES)

        (doc, _), _ = await wait_until(view.cache, (path, here), seen, over,
                                       handler.ctx.task_wait)
        done = TaskRecord.from_doc(doc) if isinstance(doc, dict) else record
        if done.state == "success":
            handler.reply({"message": done.message, "task_id": done.id,
                           "result": done.result}, 200)
            return
        if done.state == "failure":
            handler.reply({"message": done.message, "task_id": done.id}, 510)
            return
    handler.set_header("Location", task_location(record.id))
    handler.reply(accepted, 202)


TASK_LIMIT = limit("task names")
TASK_STATE = choice("state", TASK_STATES, "Only tasks in this state.")
TASK_NODE = text("node", "Only tasks that run (or ran) on this node.")


class TaskListHandler(BaseHandler):
    @accepts(TASK_LIMIT, TASK_STATE, TASK_NODE)
    def get(self) -> None:
        view = self.ctx.view
        pattern, state, node = self.values[TASK_LIMIT], self.values[TASK_STATE], \
            self.values[TASK_NODE]
        if node is not None and view.node_spec_entry(node) is None:
            raise NotFound(f"node '{node}' not found; valid nodes are: "
                           f"{', '.join(view.node_names()) or 'none'}")
        records = [r for r in [*read_tasks(view), *read_storage_tasks(view)]
                   if (pattern is None or pattern.search(r.name))
                   and (state is None or r.state == state)
                   and (node is None or r.run_on == node)]
        self.reply([task_object(r) for r in sorted(records, key=lambda r: r.id, reverse=True)])


class TaskHandler(BaseHandler):
    def get(self, task_id: str) -> None:
        self.reply(task_object(self.task(task_id)))

    async def delete(self, task_id: str) -> None:
        record = self.task(task_id)
        view = self.ctx.view
        path = view.paths.task(task_id)
        entry = view.cache.entry(path)
        if entry is None:  # a storage request: only a finished one's record can go
            if not record.is_finished:
                raise Conflict(f"storage request {task_id} is {record.state}; storage "
                               "requests cannot be cancelled")
            request = view.cache.entry(view.paths.storage_request(task_id))
            assert request is not None
            await self.commit([Op.delete(view.paths.storage_request(task_id), request.version)])
            self.message(f"Removed the record of task {task_id} ({record.name})")
            return
        if record.state == "running":
            raise Conflict(f"task {task_id} ({record.name}) is running on {record.run_on} and "
                           "cannot be cancelled; it ends by itself (follow it with GET "
                           f"{task_location(task_id)})")
        if record.state == "pending":
            now = self.ctx.clock()
            record.state, record.error, record.cleanup = "failure", "Cancelled", \
                bool(record.artifacts)
            record.message = "cancelled before it started" + \
                ("; the primary releases what it reserved" if record.artifacts else "")
            record.finished = record.updated = now
            await self.commit([Op.set(path, record.to_doc(), entry.version)])
            self.message(f"Cancelled task {task_id} ({record.name})")
            return
        if record.cleanup:
            raise Conflict(f"task {task_id} ({record.name}) failed and the primary is still "
                           "removing what it created; try again once `cleanup` is false")
        await self.commit([Op.delete(path, entry.version)])
        self.message(f"Removed the record of task {task_id} ({record.name})")

    def task(self, task_id: str) -> TaskRecord:
        record = read_task(self.ctx.view, task_id)
        if record is None:
            raise NotFound(f"task {task_id} not found (finished tasks are kept for "
                           "tasks.retention seconds, storage requests for "
                           "drivers.ceph.request_retention)")
        return record


ROUTES = [
    route("/tasks", TaskListHandler),
    route("/tasks/<task_id>", TaskHandler),
]
