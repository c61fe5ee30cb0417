"""The pure rules of pvcd.domain: placement and the VM move rule."""

from __future__ import annotations

import dataclasses

import pytest

from pvcd.domain.errors import Conflict, InvalidValue
from pvcd.domain.moves import Move, check_migrate, check_unmigrate, holder, reassign
from pvcd.domain.placement import NodeLoad, choose_node, require_node, select_target_node
from pvcd.domain.records import Migration, NodeStats, NodeStatus, VmSpec, VmStatus


def load(name: str, mem: int = 0, total: int = 1000, state: str = "run",
         domain: str = "ready", **kw: float) -> NodeLoad:
    return NodeLoad(name, state, domain, memory_total=total, memory_allocated=mem,
                    **kw)  # type: ignore[arg-type]


NODES = [load("node1", 100), load("node2", 300), load("node3", 200)]


def spec(**kw: object) -> VmSpec:
    values: dict[str, object] = {"uuid": "u1", "name": "web", "xml": "<domain/>",
                                 "node": "node1", "memory": 100}
    values.update(kw)
    return VmSpec(**values)  # type: ignore[arg-type]


class TestPlacement:
    def test_selector_picks_the_least_loaded_available_node(self) -> None:
        assert select_target_node(NODES) == "node1"
        assert select_target_node(NODES, exclude=["node1"]) == "node3"
        nodes = [*NODES[:2], load("node3", 0, domain="flushed")]
        assert select_target_node(nodes, exclude=["node1"]) == "node2"

    def test_nodes_without_room_are_skipped_then_refused_with_numbers(self) -> None:
        assert select_target_node(NODES, memory=750) == "node1"
        assert select_target_node(NODES, exclude=["node1"], memory=750) == "node3"
        with pytest.raises(InvalidValue, match=r"no node has 950 MiB.*node1 900"):
            select_target_node(NODES, memory=950)

    def test_a_named_node_wins_unless_it_lacks_room_or_is_not_ready(self) -> None:
        assert choose_node(NODES, "node2", None, memory=100) == "node2"
        with pytest.raises(InvalidValue, match=r"node2 lacks memory.*700 MiB of 1000"):
            choose_node(NODES, "node2", None, memory=800)
        assert choose_node(NODES, "ghost", None) == "node1"  # the manual's fallback
        assert choose_node(NODES, "node1", None, exclude=["node1"]) == "node3"
        with pytest.raises(InvalidValue, match="not running and ready"):
            require_node([load("node1", state="dead")], "node1")

    def test_unknown_selector_and_unreported_memory(self) -> None:
        with pytest.raises(InvalidValue,
                           match="valid values are: mem, memprov, vcpus, load, vms, none"):
            select_target_node(NODES, "fastest")
        assert select_target_node([load("node1", 0, total=0)], memory=10**6) == "node1"


class TestMoves:
    def test_a_running_vm_is_handed_over_by_the_node_that_runs_it(self) -> None:
        status = VmStatus(node="node1", state="running", migration_done=3)
        new = reassign(spec(), status, "node2", Move.MIGRATE)
        assert (new.node, new.last_node) == ("node2", "node1")
        assert new.migration == Migration("node1", 4, "migrate")

    def test_a_stopped_vm_just_moves(self) -> None:
        new = reassign(spec(state="stop"), VmStatus(node="node1"), "node2", Move.MOVE)
        assert (new.node, new.last_node, new.migration) == ("node2", None, None)

    def test_a_vm_that_should_run_is_handed_over_by_its_node_before_it_says_so(self) -> None:
        assert holder(spec(), None) == "node1"
        assert reassign(spec(), None, "node2", Move.MIGRATE).migration == \
            Migration("node1", 1, "migrate")

    def test_never_a_migration_to_the_node_that_holds_it(self) -> None:
        # the status still says node2 runs it although the spec names node1
        status = VmStatus(node="node2", state="running")
        new = reassign(spec(), status, "node2", Move.MIGRATE)
        assert new.node == "node2" and new.migration is None

    def test_a_vm_in_flight_is_not_moved_again(self) -> None:
        flying = spec(node="node2", last_node="node1", migration=Migration("node1", 2))
        with pytest.raises(Conflict, match="being migrated from node1 to node2"):
            reassign(flying, VmStatus(node="node1", migration_done=1), "node3", Move.MIGRATE)

    def test_recovery_drops_the_hand_over_of_a_fenced_node(self) -> None:
        flying = spec(node="node2", last_node="node1", migration=Migration("node1", 2))
        new = reassign(flying, VmStatus(node="node1", state="running", migration_done=1),
                       "node2", Move.RECOVER, dead="node1")
        assert (new.node, new.last_node, new.migration) == ("node2", "node1", None)
        dead_host = reassign(spec(), VmStatus(node="node1", state="running"), "node3",
                             Move.RECOVER, dead="node1")
        assert (dead_host.node, dead_host.last_node, dead_host.migration) == \
            ("node3", "node1", None)

    def test_last_node_rules(self) -> None:
        migrated = spec(node="node2", last_node="node1")
        # forced onward: the original is kept; back home: nothing left to undo
        assert reassign(migrated, None, "node3", Move.MIGRATE).last_node == "node1"
        assert reassign(migrated, None, "node1", Move.MIGRATE).last_node is None
        assert reassign(migrated, None, "node3", Move.MOVE).last_node is None
        assert reassign(migrated, None, "node3", Move.FLUSH).last_node == "node2"
        assert reassign(migrated, None, "node1", Move.UNMIGRATE).migration.action == \
            "unmigrate"  # type: ignore[union-attr]

    def test_migrate_and_unmigrate_checks(self) -> None:
        migrated = spec(node="node2", last_node="node1")
        with pytest.raises(InvalidValue, match="unmigrate it first, or use force"):
            check_migrate(migrated, force=False, permanent=False)
        check_migrate(migrated, force=True, permanent=False)
        assert check_unmigrate(migrated) == "node1"
        with pytest.raises(InvalidValue, match="has not been migrated"):
            check_unmigrate(spec())


def test_node_status_doc_is_asdict_without_sharing() -> None:
    """NodeStatus.to_doc builds by hand what dataclasses.asdict gives (the keepalive's cost):
    the same document, no list or dict shared with the record; a new field that is not a
    scalar needs its own copy there."""
    scalars = {"str", "int", "float", "bool", "str | None"}
    assert {f.name for f in dataclasses.fields(NodeStatus)
            if str(f.type) not in scalars} == {"stats", "refused"}
    assert {f.name for f in dataclasses.fields(NodeStats)
            if str(f.type) not in scalars} == {"running_domains"}
    status = NodeStatus(daemon_state="run", keepalive=12.5, migration_uri="tcp://x",
                        stats=NodeStats(cpu_count=4, load=0.5, running_domains=["a", "b"]),
                        refused={"vm/x": "why"})
    doc = status.to_doc()
    assert doc == dataclasses.asdict(status)
    doc["stats"]["running_domains"].append("c")
    doc["refused"]["vm/y"] = "no"
    assert status.stats.running_domains == ["a", "b"] and status.refused == {"vm/x": "why"}
