"""`pvc task list|info|wait` against the API in process, with the primary's task runner on a
thread running the test-only kind (tests/fakes/tasks.py)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from pvcd.cli.main import cli
from pvcd.cli.progress import ProgressBar, bar, duration
from pvcd.controllers.tasks.runner import TaskRunner, task_key
from tests.fakes.api import TOKEN, running_api
from tests.fakes.nodes import SimCluster
from tests.fakes.tasks import Workshop, add_task, task


@pytest.fixture
def env(sim: SimCluster) -> Iterator[dict[str, str]]:
    sim.add_node("node1")
    sim.step()
    with running_api(sim.state, sim.clock) as api:
        yield {"PVC_URL": api.base, "PVC_TOKEN": TOKEN, "PVC_CONNECTION": "",
               "PVC_CONFIG": "/nonexistent"}


def test_list_and_info_show_tasks(env: dict[str, str], sim: SimCluster) -> None:
    add_task(sim.state, "0001-a", state="running", progress={
        "current": 2, "total": 5, "message": "copying disk sda"})
    listed = CliRunner().invoke(cli, ["task", "list", "--state", "running"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "0001-a" in listed.output and "2/5" in listed.output and "copying" in listed.output
    info = CliRunner().invoke(cli, ["task", "info", "0001-a"], env=env)
    assert info.exit_code == 0, info.output
    assert "Progress:" in info.output and "2/5 copying disk sda" in info.output
    missing = CliRunner().invoke(cli, ["task", "info", "0009-x"], env=env)
    assert missing.exit_code == 1 and "not found" in missing.output


@pytest.mark.parametrize("fail", [False, True])
def test_wait_follows_a_task_to_its_end(env: dict[str, str], sim: SimCluster,
                                        fail: bool) -> None:
    shop = Workshop()
    add_task(sim.state, "0001-a", args={"steps": 3, "hold": True,
                                         "fail_at": 2 if fail else None})
    runner = TaskRunner("node1", sim.state.view, sim.state.store, shop.registry(),
                        executor="node1/1")
    worker = threading.Thread(target=runner.reconcile, args=(task_key("0001-a"),),
                              daemon=True)
    worker.start()
    assert shop.holding.wait(5)  # running, at step 1 of 3
    threading.Timer(0.6, shop.release).start()  # finishes while `wait` follows it
    result = CliRunner().invoke(cli, ["task", "wait", "0001-a", "--timeout", "30"], env=env)
    worker.join(5)
    if fail:
        assert result.exit_code == 1, result.output
        assert "step 2 broke" in result.output
    else:
        assert result.exit_code == 0, result.output
        assert "made 3 things" in result.output
    # it followed the running task (plain lines: no terminal) until it ended
    lines = result.output.splitlines()
    ended = lines.index(f"Task 0001-a (test.steps): {'failure' if fail else 'success'}")
    assert ended >= 1 and all("Task" not in line for line in lines[:ended])
    assert task(sim.state, "0001-a").state == ("failure" if fail else "success")


def test_the_progress_bar_shows_rate_and_eta_on_a_terminal() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = ProgressBar(out, interactive=True, unit="bytes", clock=lambda: now[0])
    progress.update(0, 100 << 20, "receiving")
    now[0] = 2.0
    progress.update(20 << 20, 100 << 20, "receiving")
    line = out.getvalue().rsplit("\r\x1b[K", 1)[1]
    assert line.startswith("[####") and " 20%" in line
    assert "20 MiB/100 MiB" in line and "10 MiB/s" in line and "ETA 0:08" in line
    assert bar(0, 0).startswith("[?") and duration(3725) == "1:02:05"


def test_without_a_terminal_a_line_is_printed_per_step() -> None:
    out = io.StringIO()
    progress = ProgressBar(out, interactive=False)
    for current, message in [(0, "start"), (1, "copy sda"), (1, "copy sda"), (2, "define")]:
        progress.update(current, 2, message)
    progress.finish("done")
    assert out.getvalue() == "0/2 start\n1/2 copy sda\n2/2 define\ndone\n"
