"""The task machinery in process (pvcd/controllers/tasks) over the real store on ZooKeeper: a
test-only task kind (tests/fakes/tasks.py) makes "things" and records them as artifacts, so
what a task did and what its failure or interruption removed can be read back."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from pvcd.config.schema import TasksSection
from pvcd.controllers.base import Result
from pvcd.controllers.tasks.context import PROGRESS_INTERVAL
from pvcd.controllers.tasks.primary import EXPIRE_KEY, TaskJanitor
from pvcd.controllers.tasks.runner import TaskRunner, task_key
from pvcd.state.store import Op
from tests.fakes.state import ClusterState, FakeClock
from tests.fakes.tasks import Workshop, add_task, task


class Ticks:
    """A monotonic clock the handler moves (progress throttling without sleeping)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def runner(state: ClusterState, shop: Workshop, node: str = "node1", pid: int = 4242,
           monotonic: Callable[[], float] | None = None) -> TaskRunner:
    return TaskRunner(node, state.view, state.store, shop.registry(), FakeClock(),
                      monotonic or Ticks(), executor=f"{node}/{pid}")


def janitor(state: ClusterState, shop: Workshop, clock: FakeClock | None = None,
            **config: float) -> TaskJanitor:
    keeper = TaskJanitor("node1", state.view, state.store, shop.registry(),
                         TasksSection(**config), clock or FakeClock())  # type: ignore[arg-type]
    keeper.active = True
    return keeper


def alive(state: ClusterState, node: str, pid: int) -> None:
    path = state.paths.node_alive(node)
    state.store.commit([Op.create(state.paths.node(node), {"name": node}),
                        Op.create(path, {"pid": pid, "boot_id": "b", "since": 1.0},
                                  ephemeral=True)])


def in_thread(action: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def test_a_task_is_claimed_run_and_its_outcome_recorded(cluster_state: ClusterState) -> None:
    shop = Workshop()
    add_task(cluster_state, "0001-a", args={"steps": 3})
    node1 = runner(cluster_state, shop)
    assert node1.keys() == [task_key("0001-a")]
    node1.reconcile(task_key("0001-a"))
    done = task(cluster_state, "0001-a")
    assert (done.state, done.error, done.executor) == ("success", None, "node1/4242")
    assert (done.message, done.result) == ("made 3 things", {"things": 3})
    assert [a.ref for a in done.artifacts] == ["0001-a#1", "0001-a#2", "0001-a#3"]
    assert (done.progress.current, done.progress.total) == (3, 3)
    assert done.log == ["made 0001-a#1", "made 0001-a#2", "made 0001-a#3"]
    assert done.started is not None and done.finished is not None
    assert shop.made == ["0001-a#1", "0001-a#2", "0001-a#3"]
    node1.reconcile(task_key("0001-a"))  # finished: nothing runs twice
    assert len(shop.made) == 3


def test_only_its_node_or_the_primary_claims_a_task(cluster_state: ClusterState) -> None:
    shop = Workshop()
    add_task(cluster_state, "0001-a", run_on="node2")
    add_task(cluster_state, "0002-b", run_on="node1", follows_primary=True)
    node1, node2 = runner(cluster_state, shop), runner(cluster_state, shop, "node2")
    node1.reconcile(task_key("0001-a"))
    node2.reconcile(task_key("0002-b"))  # not primary
    assert task(cluster_state, "0001-a").state == task(cluster_state, "0002-b").state == \
        "pending"
    node2.primary_active = True  # the new primary runs the primary's pending tasks
    node2.reconcile(task_key("0002-b"))
    node2.reconcile(task_key("0001-a"))
    assert (task(cluster_state, "0002-b").state, task(cluster_state, "0002-b").run_on) == \
        ("success", "node2")
    assert task(cluster_state, "0001-a").executor == "node2/4242"


def test_progress_is_written_at_most_once_a_second(cluster_state: ClusterState) -> None:
    ticks = Ticks()
    writes: list[float] = []
    cluster_state.cache.subscribe(
        lambda path: writes.append(ticks.now) if path.endswith("/0001-a") else None)

    class SlowShop(Workshop):
        def run(self, ctx):  # type: ignore[no-untyped-def]
            for step in range(1, 51):
                ticks.now += 0.1
                ctx.progress(step, 50, f"step {step}")
            return super().run(ctx)

    shop = SlowShop()
    add_task(cluster_state, "0001-a", args={"steps": 1})
    node1 = runner(cluster_state, shop, monotonic=ticks)
    version_before = cluster_state.store.read_optional(cluster_state.paths.task("0001-a"))
    assert version_before is not None
    node1.reconcile(task_key("0001-a"))
    after = cluster_state.store.read_optional(cluster_state.paths.task("0001-a"))
    assert after is not None
    # 5 s of progress every 0.1 s: about 5 writes (not 50), plus claim, artifact, result
    progress_writes = after[1].version - version_before[1].version - 3
    assert 3 <= progress_writes <= 5 / PROGRESS_INTERVAL + 1
    assert after[0]["state"] == "success"


def test_overlapping_tasks_run_one_at_a_time_in_id_order(cluster_state: ClusterState) -> None:
    shop = Workshop()
    add_task(cluster_state, "0001-a", objects=("vm:x",), args={"hold": True})
    add_task(cluster_state, "0002-b", objects=("vm:x", "volume:p/v"))
    add_task(cluster_state, "0003-c", objects=("vm:y",))
    node1 = runner(cluster_state, shop)
    first = in_thread(lambda: node1.reconcile(task_key("0001-a")))
    assert shop.holding.wait(5)
    # b shares vm:x with a, which runs: it stays pending; c is free and runs meanwhile
    assert node1.reconcile(task_key("0002-b")) == Result(requeue_after=1.0)
    node1.reconcile(task_key("0003-c"))
    assert task(cluster_state, "0002-b").state == "pending"
    assert task(cluster_state, "0003-c").state == "success"
    shop.release()
    first.join(5)
    assert task(cluster_state, "0001-a").state == "success"
    node1.reconcile(task_key("0002-b"))
    assert task(cluster_state, "0002-b").state == "success"


def test_a_failed_task_removes_its_artifacts_in_reverse_order(
        cluster_state: ClusterState) -> None:
    shop = Workshop()
    add_task(cluster_state, "0001-a", args={"steps": 4, "fail_at": 3})
    runner(cluster_state, shop).reconcile(task_key("0001-a"))
    failed = task(cluster_state, "0001-a")
    assert (failed.state, failed.error, failed.message) == \
        ("failure", "BackendError", "step 3 broke")
    assert shop.undone == ["0001-a#3", "0001-a#2", "0001-a#1"]
    assert shop.made == [] and failed.artifacts == []


def test_what_cannot_be_removed_stays_listed_and_is_named(cluster_state: ClusterState) -> None:
    shop = Workshop()
    shop.stuck.add("0001-a#1")
    add_task(cluster_state, "0001-a", args={"steps": 2, "fail_at": 2})
    runner(cluster_state, shop).reconcile(task_key("0001-a"))
    failed = task(cluster_state, "0001-a")
    assert failed.message == "step 2 broke; could not remove: thing 0001-a#1 (0001-a#1 is stuck)"
    assert [a.ref for a in failed.artifacts] == ["0001-a#1"] and shop.made == ["0001-a#1"]


def test_a_task_of_an_unknown_kind_fails_saying_so(cluster_state: ClusterState) -> None:
    add_task(cluster_state, "0001-a", name="volume.nope")
    runner(cluster_state, Workshop()).reconcile(task_key("0001-a"))
    failed = task(cluster_state, "0001-a")
    assert (failed.state, failed.error) == ("failure", "InvalidValue")
    assert "no task kind 'volume.nope'" in failed.message


@pytest.mark.parametrize("gone", ["alive-deleted", "pid-changed"])
def test_the_primary_fails_and_cleans_up_an_interrupted_task(
        cluster_state: ClusterState, gone: str) -> None:
    shop = Workshop()
    alive(cluster_state, "node2", pid=77)
    shop.made += ["0001-a#1", "0001-a#2"]
    add_task(cluster_state, "0001-a", run_on="node2", state="running", executor="node2/77",
             artifacts=[{"kind": "thing", "ref": "0001-a#1"},
                        {"kind": "thing", "ref": "0001-a#2"}])
    keeper = janitor(cluster_state, shop)
    assert keeper.key_of_node_path(cluster_state.paths.node_alive("node2")) == "node/node2"
    keeper.reconcile("node/node2")
    assert task(cluster_state, "0001-a").state == "running"  # its executor still runs
    if gone == "alive-deleted":
        cluster_state.drop_alive("node2")
    else:  # the daemon was restarted: same node, another process
        cluster_state.drop_alive("node2")
        alive_path = cluster_state.paths.node_alive("node2")
        cluster_state.store.commit([Op.create(alive_path, {"pid": 78}, ephemeral=True)])
    keeper.reconcile("node/node2")
    failed = task(cluster_state, "0001-a")
    assert (failed.state, failed.error, failed.cleanup) == ("failure", "Interrupted", False)
    assert "node2/77 is gone" in failed.message
    assert shop.undone == ["0001-a#2", "0001-a#1"] and failed.artifacts == []


def test_a_node_whose_task_was_taken_over_stops_it_and_leaves_cleanup_to_the_primary(
        cluster_state: ClusterState) -> None:
    shop = Workshop()
    add_task(cluster_state, "0001-a", args={"steps": 3, "hold": True})
    node1 = runner(cluster_state, shop)
    worker = in_thread(lambda: node1.reconcile(task_key("0001-a")))
    assert shop.holding.wait(5)
    janitor(cluster_state, shop).reconcile(task_key("0001-a"))  # no alive for node1
    # the change reaches node1's runner through its watch
    node1.reconcile_running(str(node1.key_of_running_path(cluster_state.paths.task("0001-a"))))
    worker.join(5)
    assert not worker.is_alive()
    ended = task(cluster_state, "0001-a")
    assert (ended.state, ended.error) == ("failure", "Interrupted")
    assert shop.undone == ["0001-a#1"] and shop.made == []  # undone once, by the primary


def test_after_a_handover_running_primary_tasks_stop_after_the_wait(
        cluster_state: ClusterState) -> None:
    shop = Workshop()
    add_task(cluster_state, "0001-a", follows_primary=True, args={"steps": 2, "hold": True})
    add_task(cluster_state, "0002-b", follows_primary=True)
    node1 = runner(cluster_state, shop)
    node1.primary_active = True
    worker = in_thread(lambda: node1.reconcile(task_key("0001-a")))
    assert shop.holding.wait(5)
    node1.handover(0.05)
    node1.reconcile(task_key("0002-b"))  # stopped claiming at once
    assert task(cluster_state, "0002-b").state == "pending"
    worker.join(5)
    ended = task(cluster_state, "0001-a")
    assert (ended.state, ended.error) == ("failure", "Interrupted")
    assert "tasks.handover_wait" in ended.message
    assert shop.made == [] and ended.artifacts == []


def test_retention_keeps_recent_finished_tasks_up_to_keep(cluster_state: ClusterState) -> None:
    clock = FakeClock(100_000.0)
    shop = Workshop()
    for number, finished in enumerate([10_000.0, 99_000.0, 99_500.0, 99_800.0, 99_900.0]):
        add_task(cluster_state, f"000{number}-x", state="success", finished=finished)
    add_task(cluster_state, "0009-p")  # pending: never expires
    add_task(cluster_state, "0008-c", state="failure", finished=1.0, cleanup=True)
    janitor(cluster_state, shop, clock, retention=3600.0, keep=3).reconcile(EXPIRE_KEY)
    left = sorted(cluster_state.cache.children(cluster_state.paths.tasks))
    # 0000 too old; 0001 beyond the newest 3 finished; the one still cleaning up is kept
    assert left == ["0002-x", "0003-x", "0004-x", "0008-c", "0009-p"]


def test_the_primary_releases_what_a_cancelled_task_had_reserved(
        cluster_state: ClusterState) -> None:
    shop = Workshop()
    shop.made.append("name:web1")
    # cancelled through the API while pending, holding a reservation made with it
    add_task(cluster_state, "0001-a", state="failure", error="Cancelled", cleanup=True,
             message="cancelled before it started",
             artifacts=[{"kind": "thing", "ref": "name:web1"}])
    keeper = janitor(cluster_state, shop)
    keys = keeper.keys()  # the janitor's keys, not a dict's
    assert task_key("0001-a") in keys
    keeper.reconcile(task_key("0001-a"))
    done = task(cluster_state, "0001-a")
    assert (done.state, done.error, done.cleanup, done.artifacts) == \
        ("failure", "Cancelled", False, [])
    assert shop.made == [] and shop.undone == ["name:web1"]
    keeper.active = False  # not primary: it does nothing
    add_task(cluster_state, "0002-b", state="running", executor="node9/1")
    keeper.reconcile(task_key("0002-b"))
    assert task(cluster_state, "0002-b").state == "running"
