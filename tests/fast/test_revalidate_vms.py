"""The VM controller re-validates every VM document it reads (docs/security.md, "Daemons
re-validate"): a document written straight into ZooKeeper, past the API, that the API would
refuse, changes nothing in the node's libvirt (the real test:/// driver) and the VM's status
says why."""

from __future__ import annotations

import uuid as uuidlib

from pvcd.controllers.vm import vm_key
from pvcd.domain.records import VmSpec
from pvcd.lab.guest import tiny_guest_xml
from tests.fakes.attacker import write_past_the_api
from tests.fakes.nodes import SimCluster

ENTITY_XML = ("<!DOCTYPE domain [<!ENTITY x SYSTEM 'file:///etc/shadow'>]>"
              "<domain type='qemu'><name>evil</name><memory>65536</memory>"
              "<description>&x;</description></domain>")


def defined_uuids(sim: SimCluster, node: str) -> set[str]:
    return {d.uuid for d in sim.nodes[node].libvirt.list_domains()}


def test_a_vm_document_with_an_entity_is_refused_and_nothing_is_defined(sim: SimCluster) -> None:
    node1 = sim.add_node("node1")
    uuid = str(uuidlib.uuid4())
    spec = VmSpec(uuid=uuid, name="evil", xml=ENTITY_XML, node="node1")
    write_past_the_api(sim.state, sim.state.paths.vm(uuid), spec.to_doc())
    node1.vm.reconcile(vm_key(uuid))
    assert defined_uuids(sim, "node1") == set()
    status = sim.state.view.vm_status(uuid)
    assert status is not None and (status.node, status.state) == ("node1", "failed")
    assert "refused by node node1" in status.failed_reason
    assert "DOCTYPE or ENTITY" in status.failed_reason


def test_a_running_vm_whose_document_names_another_uuid_is_left_as_it_was(
        sim: SimCluster) -> None:
    node1 = sim.add_node("node1")
    uuid = sim.state.define_vm("web", "node1")
    victim = sim.state.define_vm("db", "node2")  # a VM of another node
    node1.vm.reconcile(vm_key(uuid))
    assert node1.running() == [uuid]
    doc = sim.state.doc(sim.state.paths.vm(uuid))
    forged = {**doc, "xml": tiny_guest_xml("web", victim, memory_mib=512), "restart_request": 1}
    write_past_the_api(sim.state, sim.state.paths.vm(uuid), forged)
    node1.vm.reconcile(vm_key(uuid))
    assert node1.running() == [uuid] and defined_uuids(sim, "node1") == {uuid}
    assert "<memory unit='KiB'>65536</memory>" in node1.libvirt.xml(uuid)  # not redefined
    status = sim.state.vm_status("web")
    assert status.state == "failed" and f"is not the VM's UUID {uuid}" in status.failed_reason
    assert status.restart_done == 1  # the restart it asked for is answered: failed
    write_past_the_api(sim.state, sim.state.paths.vm(uuid), doc)  # the API's document
    node1.vm.reconcile(vm_key(uuid))
    status = sim.state.vm_status("web")
    assert (status.state, status.failed_reason) == ("running", "")


def test_a_document_that_is_no_vm_is_refused_and_the_other_vms_still_run(
        sim: SimCluster) -> None:
    node1 = sim.add_node("node1")
    good = sim.state.define_vm("web", "node1")
    junk = str(uuidlib.uuid4())
    write_past_the_api(sim.state, sim.state.paths.vm(junk), {"node": "node1", "xml": 7})
    node1.reconcile_vms()  # every key the controller knows, the junk one included
    assert node1.running() == [good] and defined_uuids(sim, "node1") == {good}
    status = sim.state.view.vm_status(junk)
    assert status is not None and status.state == "failed"
    assert "not a VM document" in status.failed_reason


def test_an_unknown_desired_state_is_refused(sim: SimCluster) -> None:
    node1 = sim.add_node("node1")
    uuid = sim.state.define_vm("web", "node1", state="stop")
    write_past_the_api(sim.state, sim.state.paths.vm(uuid),
                    {**sim.state.doc(sim.state.paths.vm(uuid)), "state": "start; reboot"})
    node1.vm.reconcile(vm_key(uuid))
    assert defined_uuids(sim, "node1") == set()
    assert "invalid desired state" in sim.state.vm_status("web").failed_reason


def test_forged_metadata_is_refused_and_a_flush_still_completes(sim: SimCluster) -> None:
    """Metadata the API would refuse (extensions.md §6.1), written past it: the node does not
    act on the VM by it, and placement still decides over it (a junk limit limits nothing)."""
    node1 = sim.add_node("node1")
    sim.add_node("node2")
    sim.step()
    uuid = sim.state.define_vm("web", "node1")
    sim.run_until(lambda: node1.running() == [uuid], seconds=10)
    doc = sim.state.doc(sim.state.paths.vm(uuid))
    for field, value, reason in [("migration_max_downtime", "300; rm", "migration_max_downtime"),
                                 ("node_limit", "node1", "node_limit"),
                                 ("migration_method", "teleport", "migration_method"),
                                 ("tags", [{"name": "a b", "type": "user"}], "invalid tag"),
                                 ("tags", [5], "invalid tag")]:
        write_past_the_api(sim.state, sim.state.paths.vm(uuid), {**doc, field: value})
        node1.vm.reconcile(vm_key(uuid))
        status = sim.state.vm_status("web")
        assert status.state == "failed" and reason in status.failed_reason, field
        assert node1.running() == [uuid]  # left as it was
    write_past_the_api(sim.state, sim.state.paths.vm(uuid), {**doc, "node_limit": 7})
    sim.domain_state("node1", "flush")
    sim.run_until(lambda: sim.state.vm_spec("web").node == "node2", seconds=30)
    assert node1.running() == [uuid]  # refused on both nodes: the guest stays as it was
