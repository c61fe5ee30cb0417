"""The VM controller's removal and rename branches on a real ZooKeeper, with a recording libvirt.

No daemon runs: each test writes the VM's records as the API does and calls the controllers'
reconcile itself, then checks the order of the libvirt calls and what is left in ZooKeeper.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from kazoo.client import KazooClient

from pvcd.controllers.vm import VmController, vm_key
from pvcd.domain.errors import NotFound
from pvcd.domain.records import Migration, StorageRequest, VmRemoval, VmSpec, VmStatus, from_dict
from pvcd.lab.guest import tiny_guest_xml
from pvcd.state.cache import StateCache
from pvcd.state.schema import Paths, ensure_schema
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.vmxml import parse_domain_xml


@dataclass
class Domain:
    uuid: str
    name: str
    state: str = "shutoff"
    reason: str = ""


@dataclass
class RecordingLibvirt:
    """A node's libvirt: its domains, and every call made, in order."""

    domains: dict[str, Domain] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def define(self, xml: str) -> None:
        definition = parse_domain_xml(xml)
        other = self.domains.get(definition.uuid)
        if other is not None and other.name != definition.name:  # as libvirt refuses it
            raise AssertionError(f"domain {other.name} already exists with this UUID")
        self.calls.append(f"define {definition.name}")
        self.domains[definition.uuid] = Domain(definition.uuid, definition.name,
                                               other.state if other else "shutoff")

    def undefine(self, uuid: str) -> None:
        self.calls.append("undefine")
        if self.domains.pop(uuid, None) is None:
            raise NotFound(uuid)

    def start(self, uuid: str) -> None:
        self.calls.append("start")
        self.domains[uuid].state = "running"

    def shutdown(self, uuid: str) -> None:
        self.destroy(uuid)

    def destroy(self, uuid: str) -> None:
        self.calls.append("destroy")
        self.domains[uuid].state = "shutoff"

    def domain_state(self, uuid: str) -> Domain | None:
        return self.domains.get(uuid)

    def list_domains(self) -> list[Domain]:
        return list(self.domains.values())

    def domain_uuids(self) -> list[str]:
        return list(self.domains)

    def xml(self, uuid: str) -> str:
        raise NotImplementedError

    def migrate(self, uuid: str, dest_uri: str, migration_uri: str | None,
                timeout: float, max_downtime: int | None = None) -> None:
        raise NotImplementedError


@dataclass
class Cluster:
    view: ClusterView
    store: Store

    def node(self, name: str, libvirt: RecordingLibvirt) -> VmController:
        return VmController(name, self.view, self.store, libvirt)

    def define(self, name: str, node: str, **changes: object) -> VmSpec:
        definition = parse_domain_xml(tiny_guest_xml(name))
        spec = VmSpec(uuid=definition.uuid, name=name, xml=definition.xml, node=node,
                      **changes)  # type: ignore[arg-type]
        paths = self.view.paths
        self.store.commit([Op.create(paths.vm(spec.uuid), spec.to_doc()),
                           Op.create(paths.vm_name(name), {"uuid": spec.uuid})])
        return spec

    def change(self, uuid: str, **changes: object) -> VmSpec:
        entry = self.view.cache.entry(self.view.paths.vm(uuid))
        assert entry is not None
        spec = from_dict(VmSpec, entry.doc)
        for key, value in changes.items():
            setattr(spec, key, value)
        self.store.commit([Op.set(self.view.paths.vm(uuid), spec.to_doc(), entry.version)])
        return spec

    def alive(self, *nodes: str) -> None:
        self.store.commit([Op.create(self.view.paths.node(n), {"name": n}) for n in nodes] +
                          [Op.create(self.view.paths.node_alive(n), {}) for n in nodes])


@pytest.fixture
def cluster(zk: KazooClient, zk_root: str) -> Iterator[Cluster]:
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, paths.root)
    cache.start()
    yield Cluster(ClusterView(cache, paths), Store(zk, cache))
    cache.close()


def exists(cluster: Cluster, path: str) -> bool:
    return cluster.store.read_optional(path) is not None


def test_the_node_undefines_the_vm_before_it_forgets_it_and_asks_for_its_disks(
        cluster: Cluster) -> None:
    libvirt = RecordingLibvirt()
    node1 = cluster.node("node1", libvirt)
    spec = cluster.define("web", "node1")
    node1.reconcile(vm_key(spec.uuid))
    assert libvirt.domains[spec.uuid].state == "running"
    libvirt.calls.clear()

    removal = VmRemoval(disks=[["vms", "web_root", "1-a"], ["vms", "web_data", "1-b"]])
    cluster.change(spec.uuid, remove=removal)
    node1.reconcile(vm_key(spec.uuid))

    assert libvirt.calls == ["destroy", "undefine"] and libvirt.domains == {}
    paths = cluster.view.paths
    for path in (paths.vm(spec.uuid), paths.vm_status(spec.uuid), paths.vm_name("web")):
        assert not exists(cluster, path), path
    requests = [from_dict(StorageRequest, cluster.store.read(paths.storage_request(i))[0])
                for i in ("1-a", "1-b")]
    assert [(r.op, r.target, r.args["volume"], r.state) for r in requests] == [
        ("volume-remove", "primary", "web_root", "pending"),
        ("volume-remove", "primary", "web_data", "pending")]
    node1.reconcile(vm_key(spec.uuid))  # idempotent: nothing left to do
    assert libvirt.calls == ["destroy", "undefine"]


def test_a_vm_being_removed_is_never_started(cluster: Cluster) -> None:
    libvirt = RecordingLibvirt()
    spec = cluster.define("idle", "node1", state="stop")
    node1 = cluster.node("node1", libvirt)
    node1.reconcile(vm_key(spec.uuid))
    assert libvirt.domains[spec.uuid].state == "shutoff"
    cluster.change(spec.uuid, state="start", remove=VmRemoval())
    node1.reconcile(vm_key(spec.uuid))
    assert "start" not in libvirt.calls and libvirt.domains == {}
    assert not exists(cluster, cluster.view.paths.vm(spec.uuid))


def test_a_removal_during_a_migration_waits_for_the_source(cluster: Cluster) -> None:
    source, target = RecordingLibvirt(), RecordingLibvirt()
    node1, node2 = cluster.node("node1", source), cluster.node("node2", target)
    cluster.alive("node1", "node2")
    spec = cluster.define("mover", "node1")
    node1.reconcile(vm_key(spec.uuid))
    # a migration to node2 is recorded, then the removal, before node1 has handed it over
    cluster.change(spec.uuid, node="node2", migration=Migration("node1", 1),
                   remove=VmRemoval(disks=[["vms", "mover", "2-a"]]))
    paths = cluster.view.paths
    assert node2.reconcile(vm_key(spec.uuid)).requeue_after  # the source still holds it
    assert exists(cluster, paths.vm(spec.uuid)) and not exists(cluster,
                                                                paths.storage_request("2-a"))
    node1.reconcile(vm_key(spec.uuid))
    assert source.domains == {} and "start" not in target.calls
    status = from_dict(VmStatus, cluster.store.read(paths.vm_status(spec.uuid))[0])
    assert status.migration_done == 1
    deadline = time.monotonic() + 5  # node2 reads the status from its cache
    while node2.reconcile(vm_key(spec.uuid)).requeue_after and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not exists(cluster, paths.vm(spec.uuid))
    assert exists(cluster, paths.storage_request("2-a"))
    assert target.calls == []


def test_a_renamed_vm_is_redefined_under_its_new_name_with_the_same_uuid(
        cluster: Cluster) -> None:
    libvirt = RecordingLibvirt()
    spec = cluster.define("old", "node1", state="stop")
    node1 = cluster.node("node1", libvirt)
    node1.reconcile(vm_key(spec.uuid))
    libvirt.calls.clear()
    cluster.change(spec.uuid, name="new", xml=spec.xml.replace("<name>old</name>",
                                                               "<name>new</name>"))
    node1.reconcile(vm_key(spec.uuid))
    assert libvirt.calls == ["undefine", "define new"]
    assert [(d.uuid, d.name, d.state) for d in libvirt.domains.values()] == \
        [(spec.uuid, "new", "shutoff")]
