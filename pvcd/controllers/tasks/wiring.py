"""`build_tasks`: the task runner of a node and, on coordinators, the primary's care of tasks.

Every node runs the tasks addressed to it (`runner`, `tasks.workers` at once; `tasks-stop`
stops one the primary declared interrupted, whatever those workers are doing); a coordinator
also claims the tasks that follow the primary and, while it is primary, fails interrupted tasks,
cleans up after them and expires old ones (`primary`). The primary service `tasks` switches
both with the role: starting it claims the pending primary tasks at once; stopping it stops
claiming at once and gives the running ones `tasks.handover_wait` (the handover is not held
up).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pvcd.config.schema import TasksSection
from pvcd.controllers.base import Controller, PrimaryService, Watch, Wiring
from pvcd.controllers.tasks.primary import TaskJanitor
from pvcd.controllers.tasks.registry import TaskRegistry
from pvcd.controllers.tasks.runner import TaskRunner
from pvcd.state.store import Store
from pvcd.state.view import ClusterView


class TaskService:
    """The primary role's switch over the runner and the janitor."""

    def __init__(self, runner: TaskRunner, runner_controller: Controller, janitor: TaskJanitor,
                 janitor_controller: Controller, handover_wait: float) -> None:
        self.runner = runner
        self.runner_controller = runner_controller
        self.janitor = janitor
        self.janitor_controller = janitor_controller
        self.handover_wait = handover_wait

    def start(self) -> None:
        self.runner.primary_active = self.janitor.active = True
        self.runner_controller.resync()
        self.janitor_controller.resync()

    def stop(self) -> None:
        self.janitor.active = False
        self.runner.handover(self.handover_wait)


def build_tasks(node: str, view: ClusterView, store: Store, config: TasksSection,
                registry: TaskRegistry, coordinator: bool, resync_interval: float,
                clock: Callable[[], float] = time.time) -> Wiring:
    wiring = Wiring()
    tasks_prefix = view.paths.tasks + "/"
    runner = TaskRunner(node, view, store, registry, clock)
    runner_controller = wiring.add(
        Controller("tasks", runner.reconcile, runner.keys, workers=config.workers,
                   resync_interval=resync_interval),
        Watch(tasks_prefix, runner.key_of_path))
    wiring.add(Controller("tasks-stop", runner.reconcile_running, resync_interval=resync_interval),
               Watch(tasks_prefix, runner.key_of_running_path))
    if not coordinator:
        return wiring
    janitor = TaskJanitor(node, view, store, registry, config, clock)
    janitor_controller = wiring.add(
        Controller("tasks-primary", janitor.reconcile, janitor.keys,
                   resync_interval=resync_interval),
        Watch(tasks_prefix, janitor.key_of_task_path),
        Watch(view.paths.nodes + "/", janitor.key_of_node_path))
    service = TaskService(runner, runner_controller, janitor, janitor_controller,
                          config.handover_wait)
    wiring.services.append(PrimaryService("tasks", service.start, service.stop))
    return wiring
