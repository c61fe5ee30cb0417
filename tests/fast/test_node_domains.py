"""The node's record follows its domains without one write per VM start (issue 17): a mass
start is folded into at most one write of the domain counts per `DOMAINS_INTERVAL`, and the
record still lists every running domain once the interval has passed."""

from __future__ import annotations

import uuid as uuidlib

from pvcd.controllers.node import DOMAINS_INTERVAL
from pvcd.lab.guest import tiny_guest_xml
from tests.fakes.nodes import SimCluster


def test_a_burst_of_starts_is_one_write_of_the_domain_counts(sim_node1: SimCluster) -> None:
    node = sim_node1.nodes["node1"]
    paths, cache = sim_node1.state.paths, sim_node1.state.cache
    key = node.node.domains_key()
    before = cache.entry(paths.node_status("node1")).version
    started = []
    for i in range(20):  # libvirt events of 20 starts, in one instant
        uuid = str(uuidlib.uuid4())
        node.libvirt.define(tiny_guest_xml(f"burst{i}", uuid))
        node.libvirt.start(uuid)
        node.node.note_domain(uuid)
        started.append(uuid)
        result = node.node.reconcile(key)
        if i > 0:
            assert 0 < (result.requeue_after or 0) <= DOMAINS_INTERVAL  # folded in
    # the first event was written at once, the other 19 wait for the interval
    assert cache.entry(paths.node_status("node1")).version == before + 1
    sim_node1.clock.advance(DOMAINS_INTERVAL)
    assert not node.node.reconcile(key).requeue_after
    status = cache.get(paths.node_status("node1"))
    assert cache.entry(paths.node_status("node1")).version == before + 2
    assert set(started) <= set(status["stats"]["running_domains"])


def test_a_stop_is_written_at_once(sim_node1: SimCluster) -> None:
    """The API's "runs on" checks (rollback, rename, volume users) read the node's list: a
    domain that stopped is never folded, even right after a write."""
    node = sim_node1.nodes["node1"]
    paths, cache = sim_node1.state.paths, sim_node1.state.cache
    key = node.node.domains_key()
    uuid = str(uuidlib.uuid4())
    node.libvirt.define(tiny_guest_xml("quick", uuid))
    node.libvirt.start(uuid)
    node.node.note_domain(uuid)
    node.node.reconcile(key)  # written: the list has it
    assert uuid in cache.get(paths.node_status("node1"))["stats"]["running_domains"]
    node.libvirt.destroy(uuid)
    node.node.note_domain(uuid)
    assert not node.node.reconcile(key).requeue_after  # within the interval, yet not folded
    assert uuid not in cache.get(paths.node_status("node1"))["stats"]["running_domains"]
