"""A snapshot's guest hold (`vms/<uuid>/hold`, pvcd.controllers.guest_hold), carried out by the VM
controller against the real libvirt test:/// driver: each test asserts on the guest's libvirt
state and on the report in the VM's status, including the convergence after a daemon was cut
off while it held a guest (a report left without its hold, or left `holding`)."""

from __future__ import annotations

from typing import Any

from pvcd.controllers.vm import vm_key
from pvcd.state.store import Op
from tests.fakes.nodes import SimCluster
from tests.fakes.tasks import add_task


def state_of(node: Any, uuid: str) -> str:
    return str(node.libvirt.domain_state(uuid).state.value)


def report(sim: SimCluster) -> dict[str, Any]:
    return dict(sim.state.vm_status("web").hold)


def hold(sim: SimCluster, uuid: str, mode: str, task: str = "t1") -> None:
    """Snapshot task `task` (running) asks for a hold."""
    if not sim.state.cache.exists(sim.state.paths.task(task)):
        add_task(sim.state, task, follows_primary=True, state="running")
    sim.state.store.commit([Op.create(sim.state.paths.vm_hold(uuid),
                                      {"task": task, "mode": mode, "created": 1.0})])


def release(sim: SimCluster, uuid: str) -> None:
    sim.state.store.commit([Op.delete(sim.state.paths.vm_hold(uuid))])


def held_vm(sim: SimCluster, mode: str) -> tuple[Any, str]:
    """Node1 runs VM `web`, and a hold in `mode` was carried out."""
    node1 = sim.add_node("node1")
    uuid = sim.state.define_vm("web", "node1")
    node1.vm.reconcile(vm_key(uuid))
    hold(sim, uuid, mode)
    node1.vm.reconcile(vm_key(uuid))
    return node1, uuid


def test_a_pause_hold_suspends_the_guest_until_the_hold_is_gone(sim: SimCluster) -> None:
    node1, uuid = held_vm(sim, "pause")
    assert state_of(node1, uuid) == "paused"
    assert report(sim)["task"] == "t1" and report(sim)["state"] == "crash-consistent"
    node1.vm.reconcile(vm_key(uuid))  # level-based: nothing more happens
    assert state_of(node1, uuid) == "paused"
    release(sim, uuid)
    node1.vm.reconcile(vm_key(uuid))
    assert state_of(node1, uuid) == "running" and report(sim) == {}


def test_auto_reports_what_the_driver_reached(sim: SimCluster) -> None:
    node1, uuid = held_vm(sim, "auto")
    reached = report(sim)["state"]
    # the test driver may or may not emulate a guest agent: either way the disks are still
    assert (reached, state_of(node1, uuid)) in (("fs-frozen", "running"),
                                                ("crash-consistent", "paused"))
    release(sim, uuid)
    node1.vm.reconcile(vm_key(uuid))
    assert state_of(node1, uuid) == "running" and report(sim) == {}


def test_a_stopped_vm_is_reported_stopped(sim: SimCluster) -> None:
    node1 = sim.add_node("node1")
    uuid = sim.state.define_vm("web", "node1", state="stop")
    node1.vm.reconcile(vm_key(uuid))
    hold(sim, uuid, "pause")
    node1.vm.reconcile(vm_key(uuid))
    assert report(sim)["state"] == "stopped" and state_of(node1, uuid) == "shutoff"


def test_a_guest_left_paused_by_a_cut_off_task_is_resumed(sim: SimCluster) -> None:
    """The task's daemon died: the primary's cleanup deleted the hold; the report stays."""
    node1, uuid = held_vm(sim, "pause")
    assert state_of(node1, uuid) == "paused"
    release(sim, uuid)  # (the undo of the task's guest-hold artifact)
    node1.vm.reconcile(vm_key(uuid))  # (the report lives in ZooKeeper: a restart reads it)
    assert state_of(node1, uuid) == "running" and report(sim) == {}


def test_a_node_cut_off_while_holding_resumes_its_guest_and_holds_again(
        sim: SimCluster) -> None:
    """The VM's daemon died after reporting `holding` and pausing the guest: its restart
    undoes the pause and takes the hold afresh (the task is still waiting for it)."""
    node1 = sim.add_node("node1")
    uuid = sim.state.define_vm("web", "node1")
    node1.vm.reconcile(vm_key(uuid))
    node1.libvirt.suspend(uuid)
    sim.state.change(sim.state.paths.vm_status(uuid),
                     hold={"task": "t1", "mode": "pause", "state": "holding", "since": 1.0})
    node1.vm.reconcile(vm_key(uuid))  # no hold any more: resumed, report cleared
    assert state_of(node1, uuid) == "running" and report(sim) == {}
    node1.libvirt.suspend(uuid)
    sim.state.change(sim.state.paths.vm_status(uuid),
                     hold={"task": "t2", "mode": "pause", "state": "holding", "since": 1.0})
    hold(sim, uuid, "pause", task="t2")
    node1.vm.reconcile(vm_key(uuid))
    assert report(sim)["state"] == "crash-consistent" and state_of(node1, uuid) == "paused"
    release(sim, uuid)
    node1.vm.reconcile(vm_key(uuid))
    assert state_of(node1, uuid) == "running"


def test_a_hold_of_a_task_that_is_not_running_is_never_carried_out(sim: SimCluster) -> None:
    node1, uuid = held_vm(sim, "pause")
    assert state_of(node1, uuid) == "paused"
    sim.state.change(sim.state.paths.task("t1"), state="failure")  # its hold left behind
    node1.vm.reconcile(vm_key(uuid))
    assert state_of(node1, uuid) == "running" and report(sim) == {}
    node1.vm.reconcile(vm_key(uuid))
    assert state_of(node1, uuid) == "running"
