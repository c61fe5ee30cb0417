"""Tasks as the cache holds them: the task znodes, and storage requests listed as tasks."""

from __future__ import annotations

from pvcd.domain.tasks import TaskRecord, storage_request_task
from pvcd.state.view import ClusterView


def read_tasks(view: ClusterView) -> list[TaskRecord]:
    """Every task (`tasks/<id>`) in the cache, in id order (creation order)."""
    cache, paths = view.cache, view.paths
    records = []
    for task_id in sorted(cache.children(paths.tasks)):
        doc = cache.get(paths.task(task_id))
        if isinstance(doc, dict):
            records.append(TaskRecord.from_doc(doc))
    return records


def read_task(view: ClusterView, task_id: str) -> TaskRecord | None:
    """A task by id: a task znode, else a storage request as the task `storage.<op>`."""
    if not task_id or "/" in task_id:
        return None
    doc = view.cache.get(view.paths.task(task_id))
    if isinstance(doc, dict):
        return TaskRecord.from_doc(doc)
    doc = view.cache.get(view.paths.storage_request(task_id))
    if isinstance(doc, dict):
        return storage_request_task(doc, view.primary())
    return None


def read_storage_tasks(view: ClusterView) -> list[TaskRecord]:
    """Every storage request in the cache, as a task."""
    cache, paths = view.cache, view.paths
    primary = view.primary()
    records = []
    for request_id in cache.children(paths.storage_requests):
        doc = cache.get(paths.storage_request(request_id))
        if isinstance(doc, dict):
            records.append(storage_request_task(doc, primary))
    return records
