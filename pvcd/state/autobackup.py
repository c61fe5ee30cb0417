"""Autobackup in ZooKeeper (extensions.md §5.5): reading `cluster/autobackup`, and what a new
run is (`run_task`), shared by `POST /vm/autobackup` and the primary's schedule.

`cluster/autobackup` holds the configuration (`AutobackupConfig`), `last_run` (the task id and
its state as the run last wrote it; the task record, while it exists, is the better word), and
`latest` (each VM's latest autobackup result: the condition of `AUTOBACKUP_FAILED_<VM>`). The
schedule writes `scheduled_for` in the same transaction as the task it starts, a
compare-and-set, so a handover at the scheduled minute cannot start the run twice.

A run is one task `cluster.autobackup` on the primary; its objects are `cluster:autobackup`
(one run at a time) and the VMs it will back up (a client's snapshot or backup of one of them
waits for it, or is refused while it runs).
"""

from __future__ import annotations

from typing import Any

from pvcd.domain.autobackup import AutobackupConfig
from pvcd.domain.records import VmSpec
from pvcd.domain.states import TASK_FINISHED_STATES
from pvcd.domain.tasks import TaskRecord, new_id
from pvcd.state.store import Op
from pvcd.state.tasks import read_tasks
from pvcd.state.view import ClusterView

TASK_NAME = "cluster.autobackup"
RUN_OBJECT = "cluster:autobackup"


def read_autobackup(view: ClusterView) -> tuple[AutobackupConfig, dict[str, Any], int | None]:
    """The configuration, the whole document, and its version (None: never written)."""
    entry = view.cache.entry(view.paths.autobackup)
    doc = entry.doc if entry is not None and isinstance(entry.doc, dict) else {}
    return AutobackupConfig.from_doc(doc), dict(doc), entry.version if entry else None


def run_in_progress(view: ClusterView) -> TaskRecord | None:
    """The autobackup run that is pending or running, if any."""
    for record in read_tasks(view):
        if record.name == TASK_NAME and record.state not in TASK_FINISHED_STATES:
            return record
    return None


def tagged_vms(view: ClusterView, tags: tuple[str, ...]) -> list[VmSpec]:
    """The VMs with at least one of `tags`, by name."""
    wanted = set(tags)
    found = [spec for spec in (view.vm_spec(uuid) for uuid in view.vm_uuids())
             if spec is not None and any(tag.name in wanted for tag in spec.tags)]
    return sorted(found, key=lambda spec: spec.name)


def run_task(view: ClusterView, config: AutobackupConfig, force_full: bool, trigger: str
             ) -> tuple[dict[str, Any], list[str]]:
    """A new run's args and objects: the tagged VMs as they are now."""
    vms = tagged_vms(view, config.backup_tags)
    return ({"force_full": force_full, "trigger": trigger,
             "vms": [spec.uuid for spec in vms], "names": [spec.name for spec in vms]},
            [RUN_OBJECT, *(f"vm:{spec.uuid}" for spec in vms)])


def scheduled_run_ops(view: ClusterView, config: AutobackupConfig, doc: dict[str, Any],
                      version: int, node: str, now: float, due: float) -> list[Op]:
    """The schedule's run due at `due`: the task and `scheduled_for`, in one transaction."""
    args, objects = run_task(view, config, False, "schedule")
    record = TaskRecord(id=new_id(now), name=TASK_NAME, run_on=node, follows_primary=True,
                        args=args, objects=objects, created=now, updated=now)
    return [Op.set(view.paths.autobackup, {**doc, "scheduled_for": due}, version),
            Op.create(view.paths.task(record.id), record.to_doc())]


def last_run(view: ClusterView, doc: dict[str, Any]) -> dict[str, Any] | None:
    """`last_run` of `GET /vm/autobackup`: from the task record while it exists."""
    stored = doc.get("last_run")
    if not isinstance(stored, dict) or not isinstance(stored.get("task_id"), str):
        return None
    task = view.cache.get(view.paths.task(stored["task_id"]))
    if isinstance(task, dict):
        record = TaskRecord.from_doc(task)
        return {"task_id": record.id, "state": record.state, "error": record.error,
                "started": record.started, "finished": record.finished}
    return {key: stored.get(key) for key in ("task_id", "state", "error", "started",
                                             "finished")}
