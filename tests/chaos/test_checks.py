"""The chaos test's judges, without a lab: the end checks find each kind of defect in a made-up
picture, and the sampler tells a double-run from a VM that merely moved between two asks."""

from __future__ import annotations

from typing import Any

from tests.chaos.checks import Picture, expectations, verdict
from tests.chaos.load import Op
from tests.chaos.sampler import DoubleRunSampler

A, B, C = ("aaaaaaaa-0000-0000-0000-000000000001", "bbbbbbbb-0000-0000-0000-000000000002",
           "cccccccc-0000-0000-0000-000000000003")


def op(kind: str, uuid: str, sent: float, answered: float, status: int | None = 200,
       memory: int | None = None) -> Op:
    return Op(0, kind, uuid, sent, answered, status, "", uuid, memory)


def spec(name: str, node: str, state: str = "start", memory: int = 64) -> dict[str, Any]:
    return {"name": name, "node": node, "state": state, "memory": memory}


def picture(specs: dict[str, dict[str, Any]], running: dict[str, list[str]],
            api: dict[str, str] | None = None) -> Picture:
    domains: dict[str, dict[str, dict[str, str]]] = {"node1": {}, "node2": {}, "node3": {}}
    for uuid, nodes in running.items():
        for node in nodes:
            domains[node][uuid] = {"uuid": uuid, "name": uuid[:4], "state": "running"}
    states = api if api is not None else {u: str(s["state"]) for u, s in specs.items()}
    return Picture({u: {"uuid": u, "name": specs.get(u, {}).get("name"), "state": s}
                    for u, s in states.items()}, specs, {}, domains)


def test_a_cluster_at_rest_with_every_write_kept_is_clean() -> None:
    ops = [op("define", A, 0, 1, memory=64), op("modify", A, 2, 3, memory=80),
           op("define", B, 0, 1), op("delete", B, 4, 5)]
    judged = verdict(picture({A: spec("a", "node1", memory=80)}, {A: ["node1"]}), ops)
    assert judged.clean, judged.lines()


def test_each_defect_is_found() -> None:
    ops = [op("define", A, 0, 1, memory=64), op("modify", A, 2, 3, memory=80),
           op("define", B, 0, 1), op("delete", B, 4, 5), op("define", C, 0, 1)]
    # A kept the old memory and runs on the wrong node; B was deleted but lingers in the API
    # and on node3; C is lost
    specs = {A: spec("a", "node1", memory=64)}
    judged = verdict(picture(specs, {A: ["node2"], B: ["node3"]},
                             api={A: "start", B: "start"}), ops)
    assert len(judged.lost) == 1 and C in judged.lost[0]
    assert len(judged.lost_modify) == 1 and "last acknowledged 80" in judged.lost_modify[0]
    assert len(judged.ghosts) == 1 and "api" in judged.ghosts[0] and "node3" in judged.ghosts[0]
    assert len(judged.mismatch) == 1 and B in judged.mismatch[0]
    assert len(judged.stuck) == 1 and "runs on ['node2']" in judged.stuck[0]


def test_a_vm_in_migrate_or_stopped_but_running_is_stuck() -> None:
    specs = {A: spec("a", "node1"), B: spec("b", "node2", state="stop")}
    judged = verdict(picture(specs, {A: ["node1"], B: ["node2"]},
                             api={A: "migrate", B: "stop"}), [])
    assert len(judged.stuck) == 2


def test_an_unanswered_or_overlapping_write_makes_the_expectation_unknown() -> None:
    ops = [op("define", A, 0, 1, memory=64), op("modify", A, 2, 3, status=None, memory=80),
           op("define", B, 0, 1, memory=64), op("modify", B, 2, 5, memory=70),
           op("modify", B, 4, 6, memory=72),
           op("define", C, 0, 1), op("delete", C, 2, 3, status=None)]
    present, deleted, memory = expectations(ops)
    assert present == {A, B} and deleted == set()  # C: a delete was sent, its fate unknown
    assert memory == {}  # A: the last write unanswered; B: two overlapping writes


class FakeLab:
    """Answers each ask from a script: one {node: running uuids} per pass."""

    def __init__(self, passes: list[dict[str, list[str]]]) -> None:
        self.passes = passes
        self.asked: dict[str, int] = {}

    def domains(self, node: str) -> dict[str, dict[str, str]]:
        index = self.asked.get(node, 0)
        self.asked[node] = index + 1
        return {u: {"uuid": u, "state": "running"} for u in self.passes[index].get(node, [])}


def sampled(passes: list[dict[str, list[str]]]) -> DoubleRunSampler:
    sampler = DoubleRunSampler(FakeLab(passes), ["node1", "node2"])  # type: ignore[arg-type]
    for _ in range(len(passes) // 2):  # the sweeps run on this thread
        sampler.sweep()
    sampler.close_episodes()
    sampler.stop()
    return sampler


def test_the_sampler_counts_a_double_run_only_when_both_passes_see_it() -> None:
    moved = sampled([{"node1": [A], "node2": [A]}, {"node2": [A]}])
    assert moved.episodes == [] and moved.suspects == 1
    double = sampled([{"node1": [A], "node2": [A]}, {"node1": [A], "node2": [A]},
                      {"node1": [A], "node2": [A]}, {"node1": [A], "node2": [A]}])
    assert len(double.episodes) == 1
    assert double.episodes[0].nodes == ("node1", "node2") and double.episodes[0].sweeps == 2
