"""Placement (pvcd/domain/placement.py) against cluster documents in the real store: which nodes are
candidates, what each selector prefers, and memory capacity."""

from __future__ import annotations

import threading

import pytest

from pvcd.domain import placement as rule
from pvcd.domain.errors import InvalidValue
from pvcd.state.store import Op
from pvcd.state.view import ClusterView
from tests.fakes.nodes import SimCluster


def select_target_node(view: ClusterView, selector: str | None = None,
                       exclude: tuple[str, ...] | list[str] = (), memory: int = 0) -> str:
    """Placement is pure (pvcd.domain.placement), over what the view says of each node."""
    return rule.select_target_node(view.node_loads(), selector, exclude, memory)


def choose_node(view: ClusterView, node: str | None, selector: str | None,
                exclude: tuple[str, ...] | list[str] = ()) -> str:
    return rule.choose_node(view.node_loads(), node, selector, exclude)


@pytest.fixture
def three(sim: SimCluster) -> SimCluster:
    for name in ("node1", "node2", "node3"):
        sim.add_node(name, memory_total=1024)
    return sim


def test_the_node_with_least_memory_assigned_wins_ties_by_name(three: SimCluster) -> None:
    view = three.state.view
    assert select_target_node(view) == "node1"
    three.state.define_vm("a", "node1", memory=512)
    assert select_target_node(view, "mem") == "node2"
    three.state.define_vm("b", "node2", memory=256)
    assert select_target_node(view, "mem") == "node3"
    three.state.define_vm("c", "node3", memory=128)
    assert select_target_node(view, "mem") == "node3"


def test_selectors_count_vms_and_vcpus_and_read_the_load(three: SimCluster) -> None:
    view = three.state.view
    three.state.define_vm("a", "node1", memory=64)
    three.state.define_vm("b", "node1", memory=64)
    three.state.define_vm("c", "node2", memory=64)
    assert select_target_node(view, "vms") == "node3"
    assert select_target_node(view, "vcpus") == "node3"
    three.nodes["node1"].host.load = 0.1
    three.nodes["node2"].host.load = 3.0
    three.nodes["node3"].host.load = 2.0
    for node in three.nodes.values():
        node.keepalive()
    assert select_target_node(view, "load") == "node1"


def test_a_stopped_vm_holds_no_memory(three: SimCluster) -> None:
    three.state.define_vm("big", "node1", memory=900, state="stop")
    assert select_target_node(three.state.view, "mem") == "node1"


def test_only_running_ready_nodes_are_candidates(three: SimCluster) -> None:
    view = three.state.view
    three.nodes["node1"].power_off()  # its session is gone: reported dead
    three.state.change(three.state.paths.node_status("node2"), domain_state="flushed")
    assert select_target_node(view) == "node3"
    assert select_target_node(view, exclude=["node2"]) == "node3"
    with pytest.raises(InvalidValue, match="no node is available"):
        select_target_node(view, exclude=["node3"])


def test_memory_capacity_leaves_out_nodes_that_cannot_hold_the_vm(three: SimCluster) -> None:
    view = three.state.view
    three.state.define_vm("a", "node1", memory=900)
    three.state.define_vm("b", "node2", memory=800)
    assert select_target_node(view, "vms", memory=200) == "node3"
    with pytest.raises(InvalidValue, match="2000 MiB"):
        select_target_node(view, memory=2000)


def test_an_invalid_selector_names_the_valid_ones(three: SimCluster) -> None:
    with pytest.raises(InvalidValue, match="valid values are"):
        select_target_node(three.state.view, "cheapest")
    with pytest.raises(InvalidValue, match="valid values are"):
        choose_node(three.state.view, "node1", "cheapest")


def test_a_valid_node_wins_and_an_unusable_one_falls_back_to_the_selector(
        three: SimCluster) -> None:
    view = three.state.view
    assert choose_node(view, "node3", None) == "node3"
    assert choose_node(view, "node3", None, exclude=["node3"]) == "node1"
    assert choose_node(view, "nonexistent", "mem") == "node1"


def summed(three: SimCluster) -> dict[str, tuple[int, int, int]]:
    """Each node's (memory, vcpus, vms) summed over every VM spec in the cache, as placement
    summed them before the totals were kept (pvcd/state/vm_index.py)."""
    state, sums = three.state, {}
    for uuid in state.view.vm_uuids():
        doc = state.cache.get(state.paths.vm(uuid))
        memory, vcpus, vms = sums.get(doc["node"], (0, 0, 0))
        running = doc["state"] not in ("stop", "shutdown", "disable")
        sums[doc["node"]] = (memory + doc["memory"] * running, vcpus + doc["vcpu"] * running,
                             vms + 1)
    return sums


def kept(three: SimCluster) -> dict[str, tuple[int, int, int]]:
    return {load.name: (load.memory_allocated, load.vcpus_allocated, load.vms)
            for load in three.state.view.node_loads() if load.vms}


def test_kept_totals_follow_defines_stops_moves_and_removals(three: SimCluster) -> None:
    state = three.state
    assert kept(three) == {}
    a = state.define_vm("a", "node1", memory=512)
    state.define_vm("b", "node2", memory=256)
    assert kept(three) == summed(three) == {"node1": (512, 1, 1), "node2": (256, 1, 1)}
    state.store.update(state.paths.vm(a), lambda doc: {**doc, "state": "stop"})
    assert kept(three) == summed(three) == {"node1": (0, 0, 1), "node2": (256, 1, 1)}
    state.store.update(state.paths.vm(a), lambda doc: {**doc, "state": "start",
                                                       "node": "node3"})
    assert kept(three) == summed(three) == {"node2": (256, 1, 1), "node3": (512, 1, 1)}
    entry = state.cache.entry(state.paths.vm(a))
    assert entry is not None
    state.store.commit([Op.delete(state.paths.vm(a), entry.version)])
    assert kept(three) == summed(three) == {"node2": (256, 1, 1)}


def test_kept_totals_match_a_sum_after_concurrent_writers(three: SimCluster) -> None:
    """Writers on several threads and the watch's echoes of their writes: the totals end
    equal to a sum over the specs (each VM's share is recounted from the cache under a lock)."""
    state = three.state
    kept(three)  # counting from now on

    def writer(index: int) -> None:
        for i in range(15):
            uuid = state.define_vm(f"w{index}-{i}", f"node{1 + i % 3}", memory=16 * (1 + i))
            if i % 3 == 0:
                state.store.update(state.paths.vm(uuid), lambda doc: {**doc, "state": "stop"})
            if i % 4 == 0:
                state.store.update(state.paths.vm(uuid), lambda doc: {**doc, "node": "node1"})

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert kept(three) == summed(three)
    assert sum(vms for _, _, vms in kept(three).values()) == 60
