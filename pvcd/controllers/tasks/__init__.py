"""Tasks: long jobs carried out by a node's daemon and followed through `GET /tasks/<id>`.

Modules, one concept each:
  context    what a running task's handler gets: progress, artifacts, log (`TaskContext`)
  registry   the task kinds a daemon can run (`TaskKind`, `TaskRegistry`, `TaskOutcome`)
  runner     claiming and running this node's tasks; overlap; handover
  cleanup    removing a failed task's artifacts in reverse order
  primary    the primary's part: interrupted tasks, their cleanup, retention
  wiring     `build_tasks`: the controllers and the primary service of a node
"""

from pvcd.controllers.tasks.context import TaskContext, TaskStopped
from pvcd.controllers.tasks.registry import TaskKind, TaskOutcome, TaskRegistry
from pvcd.controllers.tasks.wiring import build_tasks

__all__ = ["TaskContext", "TaskKind", "TaskOutcome", "TaskRegistry", "TaskStopped",
           "build_tasks"]
