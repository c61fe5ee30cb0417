"""Where the API believes a VM runs (`pvcd.api.vm_rename.running_on`, behind rollbacks,
renames and volume users): its status, or a node whose libvirt list of running domains was
written after that status. A node folds its list's writes (up to `DOMAINS_INTERVAL` after the
events), so a list older than the VM's status must not keep a stopped VM "running"."""

from __future__ import annotations

from pvcd.api.vm_rename import running_on
from pvcd.domain.records import NodeStatus, VmStatus, from_dict
from pvcd.state.store import Op
from tests.fakes.nodes import SimCluster


def _list_running(sim: SimCluster, node: str, uuids: list[str]) -> None:
    state = sim.state
    entry = state.cache.entry(state.paths.node_status(node))
    status = from_dict(NodeStatus, entry.doc)
    status.stats.running_domains = uuids
    state.store.commit([Op.set(state.paths.node_status(node), status.to_doc(), entry.version)])


def test_a_list_older_than_the_vm_status_does_not_make_it_running(sim_node1: SimCluster) -> None:
    state = sim_node1.state
    uuid = state.define_vm("web", "node1", state="stop")
    _list_running(sim_node1, "node1", [uuid])  # libvirt ran it when the node last listed
    assert running_on(state.view, uuid) == "node1"  # (no status of its own yet)
    stopped = VmStatus(node="node1", state="stopped")
    state.store.commit([Op.create(state.paths.vm_status(uuid), stopped.to_doc())])
    assert running_on(state.view, uuid) is None  # the status is newer than the list
    _list_running(sim_node1, "node1", [uuid, uuid])  # a newer list that still has it
    assert running_on(state.view, uuid) == "node1"
