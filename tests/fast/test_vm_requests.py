"""What the way from a new VM document to its guest running costs in ZooKeeper requests: the
VM controller of the VM's node, and the controllers of the other nodes, which act on nothing
(issue 17: define → running at 10,000 VMs). The counts are upper bounds; each saved request
is one round trip less per VM."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pvcd.controllers.base import TemporaryError
from pvcd.controllers.vm import vm_key
from tests.fakes.nodes import SimCluster


@pytest.fixture
def requests(sim: SimCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Every ZooKeeper request the store makes, by kind (reads, transactions)."""
    counted: Counter[str] = Counter()
    store = sim.state.store

    def counting(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def counted_call(*args: Any, **kwargs: Any) -> Any:
            counted[name] += 1
            return call(*args, **kwargs)

        return counted_call

    for name in ("read", "read_optional", "commit", "commit_each", "update", "children_async"):
        monkeypatch.setattr(store, name, counting(name, getattr(store, name)))
    yield counted


def settle(sim: SimCluster, uuid: str) -> None:
    """Reconcile the VM on every node until nothing changes any more (the controllers'
    watches enqueue it again after each of its writes: the claim, the status)."""
    for _ in range(3):
        for node in sim.nodes.values():
            node.vm.reconcile(vm_key(uuid))


def test_define_to_running_costs_two_reads_and_two_transactions(
        sim: SimCluster, requests: Counter[str]) -> None:
    nodes = [sim.add_node(name) for name in ("node1", "node2", "node3")]
    uuid = sim.state.define_vm("web", "node1")
    requests.clear()
    settle(sim, uuid)
    assert nodes[0].running() == [uuid]
    assert sim.state.vm_status("web").state == "running"
    # the spec and the claim, each read once from ZooKeeper itself; the claim, then the
    # status once the guest runs
    assert requests == Counter(read_optional=2, commit=2)


def test_the_other_nodes_make_no_request_for_a_vm_not_theirs(
        sim: SimCluster, requests: Counter[str]) -> None:
    nodes = [sim.add_node(name) for name in ("node1", "node2")]
    uuid = sim.state.define_vm("web", "node1")
    nodes[0].vm.reconcile(vm_key(uuid))
    requests.clear()
    for _ in range(3):
        nodes[1].vm.reconcile(vm_key(uuid))
    assert requests == Counter()
    assert nodes[1].running() == []


def test_a_start_is_decided_on_zookeeper_not_on_a_stale_cache(
        sim: SimCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    node1, _ = sim.add_node("node1"), sim.add_node("node2")
    uuid = sim.state.define_vm("web", "node1")
    path = sim.state.paths.vm(uuid)
    stale = sim.state.cache.entry(path)
    assert stale is not None
    sim.state.change(path, node="node2")
    # node1's cache still shows the VM here, to be started (as after a partition)
    cache = sim.state.cache
    get, entry = cache.get, cache.entry
    monkeypatch.setattr(cache, "get", lambda p: stale.doc if p == path else get(p))
    monkeypatch.setattr(cache, "entry", lambda p: stale if p == path else entry(p))
    with pytest.raises(TemporaryError, match="assigned to node2 now"):
        node1.vm.reconcile(vm_key(uuid))
    assert node1.running() == []
    assert sim.state.doc(sim.state.paths.vm_owner(uuid)) is None


def test_a_vm_migrating_here_is_not_started_before_its_source_handed_it_over(
        sim: SimCluster) -> None:
    _, node2 = sim.add_node("node1"), sim.add_node("node2")
    uuid = sim.state.define_vm("web", "node2", migration={"source": "node1", "request": 1})
    with pytest.raises(TemporaryError, match="still being handed over by node1"):
        node2.vm.claims.claim(uuid, starting=True)
    node2.vm.claims.claim(uuid)  # a guest already running here (migrated live) is claimed
    assert sim.state.doc(sim.state.paths.vm_owner(uuid))["node"] == "node2"
