"""Tasks on a real lab (3 node daemons, throwaway Ceph): a storage request is listed as a task,
and a daemon SIGKILLed in the middle of a task leaves it `failure`/`Interrupted` with what it
had created removed by the primary. The task is the lab's own kind `lab.files`
(`pvcd/lab/tasks.py`, only in lab node daemons), written into ZooKeeper as the API's
`start_task` writes it (no production endpoint starts tasks yet)."""

from __future__ import annotations

import secrets
import signal
from pathlib import Path
from typing import Any

from pvcd.domain.tasks import TaskRecord, new_id
from pvcd.lab.lab import Lab
from pvcd.state.codec import encode
from pvcd.state.schema import Paths
from tests.e2e.labclient import LabClient, LabFactory, wait_until


def task_doc(api: LabClient, task_id: str) -> dict[str, Any]:
    response = api.get(f"/tasks/{task_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_storage_requests_are_tasks_and_a_killed_executor_is_cleaned_up(
        make_lab: LabFactory, tmp_path: Path) -> None:
    lab, api = make_lab(nodes=3, ceph=True, fencing="none")
    primary = wait_until(api.primary, 30)
    # a storage request is listed as the task storage.<op>, run on the primary
    pool = f"p{secrets.token_hex(3)}"
    created = api.post("/storage/ceph/pool", data={"pool": pool, "pgs": 8}, timeout=120)
    assert created.status_code == 200, created.text
    listed = api.get("/tasks?limit=^storage.pool-add$").json()
    mine = [t for t in listed if t["args"].get("pool") == pool]
    assert len(mine) == 1, listed
    assert (mine[0]["state"], mine[0]["run_on"]) == ("success", primary)
    assert task_doc(api, mine[0]["id"])["name"] == "storage.pool-add"

    # a task on another node, killed with its daemon in the middle
    victim = next(n for n in ("node1", "node2", "node3") if n != primary)
    task_id = start_lab_task(lab, victim, tmp_path, count=3)
    running = wait_until(lambda: (doc := task_doc(api, task_id))["state"] == "running"
                         and len(doc["artifacts"]) == 3 and doc, 30)
    assert running["executor"].startswith(f"{victim}/")
    files = sorted(tmp_path.glob("lab-task-*"))
    assert len(files) == 3
    lab.signal_node(victim, signal.SIGKILL)
    ended = wait_until(lambda: (doc := task_doc(api, task_id))["state"] == "failure"
                       and not doc["cleanup"] and doc, 60)
    assert ended["error"] == "Interrupted", ended
    assert ended["artifacts"] == [] and "is gone" in ended["message"]
    assert not any(path.exists() for path in files)  # removed by the primary
    failed = api.get(f"/tasks?state=failure&node={victim}").json()
    assert [t["id"] for t in failed] == [task_id]


def start_lab_task(lab: Lab, node: str, folder: Path, count: int) -> str:
    info = lab._info()
    paths = Paths(info.zk_root)
    client = info.zookeeper_client()
    client.start(timeout=10)
    try:
        now = client.get(paths.schema_version)[1].mtime / 1000.0
        record = TaskRecord(id=new_id(now), name="lab.files", run_on=node,
                            follows_primary=False, objects=[f"lab:{folder}"], created=now,
                            args={"dir": str(folder), "count": count, "hold": True})
        client.create(paths.task(record.id), encode(record.to_doc()))
    finally:
        client.stop()
        client.close()
    return record.id
