"""The task endpoints and `start_task` in process: the real API over the real store, tasks run
by a real `TaskRunner` with the test-only kind of tests/fakes/tasks.py."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.web

from pvcd.api.base import ApiContext, BaseHandler
from pvcd.api.tasks import TASK_VALUES, start_task
from pvcd.api.values import accepts, text
from pvcd.controllers.tasks.runner import TaskRunner, task_key
from pvcd.domain.records import StorageRequest
from pvcd.lab.zookeeper import free_port
from pvcd.state.store import Op
from tests.fakes.api import TOKEN, ApiClient, make_api_context, running_api
from tests.fakes.nodes import SimCluster
from tests.fakes.state import ClusterState
from tests.fakes.tasks import KIND, Workshop, add_task, task


@pytest.fixture
def api(sim: SimCluster) -> Iterator[ApiClient]:
    for name in ("node1", "node2"):
        sim.add_node(name)
    sim.step()  # node1 takes the primary role
    with running_api(sim.state, sim.clock) as client:
        yield client


def add_request(state: ClusterState, request_id: str, op: str, request_state: str,
                **fields: Any) -> None:
    request = StorageRequest(id=request_id, op=op, args={"pool": "p"}, target="primary",
                             state=request_state, created=2.0, **fields)
    state.store.commit([Op.create(state.paths.storage_request(request_id), request.to_doc())])


def refused(response: Any, text_: str) -> None:
    assert response.status_code == 510, response.text
    assert text_ in response.json()["message"], response.json()


def test_tasks_and_storage_requests_are_listed_newest_first(
        api: ApiClient, sim: SimCluster) -> None:
    state = sim.state
    add_task(state, "0000000000001-aaaaaaaa", run_on="node2", progress={
        "current": 3, "total": 7, "message": "copying"}, state="running")
    add_task(state, "0000000000003-cccccccc", state="success", finished=5.0)
    add_request(state, "0000000000002-bbbbbbbb", "osd-add", "done", executor="node1/9",
                progress="up and in")
    tasks = api.get("/tasks").json()
    assert [t["id"] for t in tasks] == ["0000000000003-cccccccc", "0000000000002-bbbbbbbb",
                                        "0000000000001-aaaaaaaa"]
    storage = tasks[1]
    assert (storage["name"], storage["state"], storage["run_on"]) == \
        ("storage.osd-add", "success", "node1")
    assert storage["progress"]["message"] == storage["status"] == "up and in"
    running = tasks[2]
    assert (running["current"], running["total"], running["status"]) == (3, 7, "copying")
    assert [t["id"] for t in api.get("/tasks?state=running").json()] == \
        ["0000000000001-aaaaaaaa"]
    assert [t["id"] for t in api.get("/tasks?node=node2").json()] == ["0000000000001-aaaaaaaa"]
    assert [t["name"] for t in api.get("/tasks?limit=^storage").json()] == ["storage.osd-add"]
    one = api.get("/tasks/0000000000001-aaaaaaaa").json()
    assert isinstance(one, dict) and one["objects"] == [] and one["log"] == []
    assert api.get("/tasks/0000000000002-bbbbbbbb").json()["name"] == "storage.osd-add"


@pytest.mark.parametrize("path,message", [
    ("/tasks?state=done", "valid values are: pending, running, success, failure"),
    ("/tasks?node=node9", "node 'node9' not found"),
    ("/tasks?limit=(", "not a valid regular expression"),
    ("/tasks/0000000000009-ffffffff", "not found"),
])
def test_bad_reads_answer_510(api: ApiClient, path: str, message: str) -> None:
    refused(api.get(path), message)


def test_delete_cancels_pending_removes_finished_and_refuses_running(
        api: ApiClient, sim: SimCluster) -> None:
    state = sim.state
    add_task(state, "0001-p")
    add_task(state, "0002-r", state="running", executor="node1/1")
    add_task(state, "0003-f", state="failure", finished=3.0)
    add_request(state, "0004-s", "pool-add", "running")
    add_request(state, "0005-s", "pool-add", "failed")
    assert api.call("DELETE", "/tasks/0001-p").status_code == 200
    cancelled = task(state, "0001-p")
    assert (cancelled.state, cancelled.error) == ("failure", "Cancelled")
    refused(api.call("DELETE", "/tasks/0002-r"), "is running on node1 and cannot be cancelled")
    assert task(state, "0002-r").state == "running"
    assert api.call("DELETE", "/tasks/0003-f").status_code == 200
    assert not state.cache.exists(state.paths.task("0003-f"))
    refused(api.call("DELETE", "/tasks/0004-s"), "storage requests cannot be cancelled")
    assert api.call("DELETE", "/tasks/0005-s").status_code == 200
    assert not state.cache.exists(state.paths.storage_request("0005-s"))
    refused(api.call("DELETE", "/tasks/0009-x"), "not found")
    runner = TaskRunner("node1", state.view, state.store, Workshop().registry(),
                        executor="node1/1")
    runner.primary_active = True
    runner.reconcile(task_key("0001-p"))  # cancelled: never runs
    assert task(state, "0001-p").error == "Cancelled"


# --- start_task, through an endpoint of the test's own --------------------------------------

OBJECT = text("object", "What the task works on.", required=True)
RUN_ON = text("run_on", "The node to run it on (default: the primary).")
STEPS = text("steps", "How many things to make.")


class StartHandler(BaseHandler):
    @accepts(OBJECT, RUN_ON, STEPS, *TASK_VALUES)
    async def post(self) -> None:
        steps = int(self.values[STEPS] or 2)  # negative: fail at the first step
        await start_task(self, KIND, {"steps": abs(steps), "fail_at": 1 if steps < 0 else None},
                         [self.values[OBJECT]], self.values[RUN_ON])


@contextlib.contextmanager
def serving(ctx: ApiContext) -> Iterator[ApiClient]:
    port = free_port()
    ready = threading.Event()
    held: dict[str, Any] = {}

    async def main() -> None:
        app = tornado.web.Application([(r"/api/v1/start", StartHandler, {"ctx": ctx})],
                                      cookie_secret="fast-tier-secret")
        server = app.listen(port, address="127.0.0.1")
        held["loop"], held["stop"] = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await held["stop"].wait()
        server.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    client = ApiClient(f"http://127.0.0.1:{port}/api/v1", TOKEN)
    try:
        yield client
    finally:
        client.session.close()
        held["loop"].call_soon_threadsafe(held["stop"].set)
        thread.join(5)


@pytest.fixture
def starter(sim: SimCluster) -> Iterator[ApiClient]:
    for name in ("node1", "node2"):
        sim.add_node(name)
    sim.step()
    with serving(make_api_context(sim.state, "node1", sim.clock)) as client:
        yield client


def run_tasks_in_background(state: ClusterState, shop: Workshop) -> threading.Event:
    """The primary's runner, on a thread: runs every pending task it sees until stopped."""
    runner = TaskRunner("node1", state.view, state.store, shop.registry(), executor="node1/1")
    runner.primary_active = True
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            keys = runner.keys()  # the runner's keys, not a dict's
            for key in keys:
                runner.reconcile(key)
            stop.wait(0.01)

    threading.Thread(target=loop, daemon=True).start()
    return stop


def test_start_task_answers_202_with_location_and_creates_the_task(
        starter: ApiClient, sim: SimCluster) -> None:
    response = starter.post("/start", data={"object": "vm:x"})
    assert response.status_code == 202, response.text
    doc = response.json()
    assert set(doc) == {"task_id", "task_name", "run_on", "message"}
    assert (doc["task_name"], doc["run_on"]) == (KIND, "node1")
    assert response.headers["Location"] == f"/api/v1/tasks/{doc['task_id']}"
    created = task(sim.state, doc["task_id"])
    assert (created.state, created.objects, created.follows_primary) == \
        ("pending", ["vm:x"], True)
    # a client's second task on the busy object is refused, naming the busy task
    before = sim.state.cache.children(sim.state.paths.tasks)
    refused(starter.post("/start", data={"object": "vm:x"}),
            f"vm:x is busy with task {doc['task_id']} ({KIND}, pending)")
    refused(starter.post("/start", data={"object": "vm:y", "run_on": "node3"}),
            "node node3 is not running")
    assert sim.state.cache.children(sim.state.paths.tasks) == before


def test_a_task_on_a_volume_a_storage_request_works_on_is_refused(
        starter: ApiClient, sim: SimCluster) -> None:
    """Storage requests are tasks too (§1.2): a client's task on a volume an unfinished
    clone, rollback or snapshot works on is refused, naming it."""
    request = StorageRequest(id="0000000000003-cccccccc", op="volume-clone",
                             args={"pool": "p", "volume": "v", "new_volume": "w"},
                             target="node9", created=1.0)  # no executor here takes it
    sim.state.store.commit([Op.create(sim.state.paths.storage_request(request.id),
                                      request.to_doc())])
    before = sim.state.cache.children(sim.state.paths.tasks)
    for busy in ("volume:p/v", "volume:p/w"):  # the source, and the copy being made
        refused(starter.post("/start", data={"object": busy}),
                f"{busy} is busy with task {request.id} (storage.volume-clone, pending)")
    assert sim.state.cache.children(sim.state.paths.tasks) == before
    assert starter.post("/start", data={"object": "volume:p/x"}).status_code == 202


def test_a_task_too_large_for_zookeeper_is_refused_before_anything_is_written(
        starter: ApiClient, sim: SimCluster) -> None:
    before = sim.state.cache.children(sim.state.paths.tasks)
    response = starter.post("/start", data={"object": "vm:" + "x" * 1_100_000})
    refused(response, "one ZooKeeper write may carry")
    assert sim.state.cache.children(sim.state.paths.tasks) == before


def test_start_task_with_wait_answers_200_or_510_once_the_task_ends(
        starter: ApiClient, sim: SimCluster) -> None:
    stop = run_tasks_in_background(sim.state, Workshop())
    try:
        done = starter.post("/start", data={"object": "vm:x", "wait": ""}, timeout=30)
        assert done.status_code == 200, done.text
        assert done.json()["result"] == {"things": 2}
        assert done.json()["message"] == "made 2 things"
        failed = starter.post("/start", data={"object": "vm:y", "steps": "-1", "wait": "1"},
                              timeout=30)
        assert failed.status_code == 510, failed.text
        assert failed.json()["message"] == "step 1 broke"
        assert task(sim.state, failed.json()["task_id"]).state == "failure"
    finally:
        stop.set()


def test_a_wait_cut_by_a_handover_answers_202(starter: ApiClient, sim: SimCluster) -> None:
    answer: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: answer.update(response=starter.post(
        "/start", data={"object": "vm:x", "wait": ""}, timeout=30)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not sim.state.cache.children(sim.state.paths.tasks):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sim.state.change(sim.state.paths.node_status("node1"), coordinator_state="relinquish")
    thread.join(10)
    assert answer["response"].status_code == 202, answer["response"].text
