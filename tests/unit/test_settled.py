"""The "settled" rules of `pvcd.domain.settled`: a wait must end neither on the state an object
had before the change (a stale report) nor miss a failure."""

from __future__ import annotations

import pytest

from pvcd.domain.records import Migration, NodeSpec, NodeStats, NodeStatus, VmSpec, VmStatus
from pvcd.domain.settled import (
    coordinator_settled,
    node_domain_goal,
    node_domain_settled,
    vm_goal,
    vm_settled,
)


def spec(**fields: object) -> VmSpec:
    return VmSpec(**{"uuid": "u1", "name": "web1", "xml": "<domain/>", "node": "node2",
                     **fields})  # type: ignore[arg-type]


def status(**fields: object) -> VmStatus:
    return VmStatus(**{"node": "node2", "state": "running", **fields})  # type: ignore[arg-type]


def test_a_started_vm_settles_once_its_node_reports_it_running_for_the_latest_request() -> None:
    wanted = spec(state="start", state_request=3)
    assert vm_settled(wanted, None) == (False, None, "assigned to node2, no report from it yet")
    stale = vm_settled(wanted, status(state="stopped", state_request_done=2))
    assert not stale.settled and "has not handled the request yet" in stale.seen
    # running, but from before the request: still not settled
    assert not vm_settled(wanted, status(state_request_done=2)).settled
    assert vm_settled(wanted, status(state_request_done=3)) == (True, None, "running on node2")
    assert vm_goal(wanted) == "VM 'web1' to run on node2"


@pytest.mark.parametrize("state", ["stop", "shutdown", "disable"])
def test_a_stopped_vm_settles_once_stopped(state: str) -> None:
    wanted = spec(state=state, state_request=1)
    assert not vm_settled(wanted, status(state="shutting-down", state_request_done=1)).settled
    assert not vm_settled(wanted, status(state_request_done=1)).settled  # still running
    assert vm_settled(wanted, status(state="stopped", state_request_done=1)).settled
    assert vm_goal(wanted) == "VM 'web1' to be stopped (on node2)"


def test_a_restart_settles_only_after_the_restart_was_done() -> None:
    wanted = spec(state="start", restart_request=2, state_request=4)
    before = vm_settled(wanted, status(restart_done=1, state_request_done=4))
    assert not before.settled and before.seen == "restart pending (running on node2)"
    assert vm_settled(wanted, status(restart_done=2, state_request_done=4)).settled


def test_a_migration_settles_when_done_and_the_vm_runs_on_its_new_node() -> None:
    wanted = spec(node="node1", migration=Migration(source="node2", request=5))
    moving = vm_settled(wanted, status(state="migrating", migration_done=4))
    assert moving == (False, None,
                      "migrate from node2 to node1 in progress (migrating on node2)")
    # the source recorded the end; the target has not reported the guest yet
    handed = vm_settled(wanted, status(node="node1", state="stopped", migration_done=5))
    assert not handed.settled
    # an old report from the source after the migration is over: not on the new node yet
    assert not vm_settled(wanted, status(node="node2", migration_done=5)).settled
    assert vm_settled(wanted, status(node="node1", migration_done=5)).settled


def test_a_failure_for_the_latest_request_ends_the_wait_with_its_reason() -> None:
    wanted = spec(state_request=2)
    old = vm_settled(wanted, status(state="failed", failed_reason="no disk", state_request_done=1))
    assert old.failed_reason is None  # a failure of an earlier request: the node tries again
    failed = vm_settled(wanted, status(state="failed", failed_reason="no disk",
                                       state_request_done=2))
    assert failed == (False, "VM 'web1' failed on node2: no disk", "failed on node2: no disk")
    gone = vm_settled(None, None)
    assert not gone.settled and gone.failed_reason == "the VM was removed"


def node_status(**fields: object) -> NodeStatus:
    return NodeStatus(**fields)  # type: ignore[arg-type]


def test_a_flush_settles_when_the_node_reports_flushed_for_the_latest_request() -> None:
    wanted = NodeSpec(name="node1", domain_state="flush", domain_request=4)
    assert node_domain_goal(wanted) == "node node1 to be flushed"
    moving = node_domain_settled(wanted, node_status(
        domain_state="flush", domain_request_done=3,
        stats=NodeStats(running_domains=["u1", "u2"])))
    assert moving == (False, None,
                      "domain state flush, 2 VMs running there, request 4 not done yet")
    # `flushed` of an earlier flush, before this request was handled
    assert not node_domain_settled(wanted, node_status(domain_state="flushed",
                                                       domain_request_done=3)).settled
    assert node_domain_settled(wanted, node_status(domain_state="flushed",
                                                   domain_request_done=4)).settled
    ready = NodeSpec(name="node1", domain_state="ready", domain_request=5)
    assert node_domain_goal(ready) == "node node1 to be ready"
    assert not node_domain_settled(ready, node_status(domain_state="unflush",
                                                      domain_request_done=4)).settled
    assert node_domain_settled(ready, node_status(domain_state="ready",
                                                  domain_request_done=5)).settled
    assert node_domain_settled(None, None).failed_reason == "the node was removed"


def test_the_coordinator_role_settles_when_the_lock_and_the_report_agree() -> None:
    primary = node_status(coordinator_state="primary")
    takeover = node_status(coordinator_state="takeover")
    secondary = node_status(coordinator_state="secondary")
    assert coordinator_settled("node2", "primary", "node2", primary).settled
    assert not coordinator_settled("node2", "primary", "node2", takeover).settled
    assert not coordinator_settled("node2", "primary", None, primary).settled
    assert coordinator_settled("node2", "secondary", "node1", secondary).settled
    between = coordinator_settled("node2", "secondary", None, secondary)
    assert between == (False, None, "coordinator state secondary, primary none yet")
    assert not coordinator_settled("node2", "secondary", "node2", secondary).settled
