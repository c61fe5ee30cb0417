"""Simulated nodes for in-process tests: each node's real controllers over one shared store.

A `SimNode` is what `pvcd.daemon.NodeDaemon` wires for one node, without its threads, session
handling or API: the node, VM, coordinator and fencing controllers, built by the `make_*`
factories below (the ONE place that knows their constructors: when a constructor changes, adapt
it here), its own libvirt connection on the real `test:///<file>` driver (one connection = one
node), a `FakeHost` and, for the cluster, a `FakeFence`. Tests drive the controllers by calling
`reconcile(key)`; `SimCluster.step()` does that for every node in a fixed order.

The node controller alone runs on a worker thread of the real `Controller` framework: until issue
11's level-based flush is merged, a flush waits inside its reconcile until the other nodes have
moved the VMs, which a single-threaded replay would deadlock on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from pvcd.controllers.base import TemporaryError
from pvcd.controllers.coordinator import KEY as COORDINATOR_KEY
from pvcd.controllers.coordinator import Coordinator, PrimaryServices
from pvcd.controllers.fencing import FencingController
from pvcd.controllers.node import NodeController, NodeStatusWriter
from pvcd.controllers.vm import VmController
from pvcd.domain.moves import Move, reassign
from pvcd.domain.records import (
    Handover,
    NodeSpec,
    NodeStatus,
    from_dict,
)
from pvcd.drivers.fence import FenceDriver, FenceTarget
from pvcd.drivers.libvirt import LibvirtDriver
from pvcd.state.store import Op
from pvcd.state.vm_move import move_vm
from tests.fakes.drivers import FakeFence, FakeHost
from tests.fakes.state import ClusterState, FakeClock

FENCE_DRIVER = "fake"
KEEPALIVE_INTERVAL = 1.0
DEAD_THRESHOLD = 3


# factories: the controllers' constructors, in one place
def make_vm_controller(name: str, state: ClusterState, libvirt: LibvirtDriver,
                       clock: FakeClock, can_act: Callable[[], bool] = lambda: True
                       ) -> VmController:
    return VmController(name, state.view, state.store, libvirt, shutdown_timeout=5.0,
                        clock=clock, can_act=can_act)


def make_node_controller(name: str, state: ClusterState, writer: NodeStatusWriter,
                         host: FakeHost, clock: FakeClock, libvirt: LibvirtDriver,
                         vm: VmController) -> NodeController:
    # flush and ready are level-based and the controller reads libvirt itself
    return NodeController(name, state.view, state.store, writer, host,  # type: ignore[arg-type]
                          libvirt, clock)


def make_coordinator(name: str, state: ClusterState, writer: NodeStatusWriter,
                     services: PrimaryServices, session_id: Callable[[], int | None],
                     clock: FakeClock) -> Coordinator:
    return Coordinator(name, state.view, state.store, writer, services, session_id,
                       handover_timeout=10.0, clock=clock)


def make_fencing(name: str, state: ClusterState, is_primary: Callable[[], bool],
                 fence: FenceDriver, clock: FakeClock, on_failure: str = "none"
                 ) -> FencingController:
    return FencingController(name, state.view, state.store, is_primary,
                             keepalive_interval=KEEPALIVE_INTERVAL,
                             dead_threshold=DEAD_THRESHOLD, fence_timeout=5.0, attempts=2,
                             on_failure=on_failure, drivers=lambda driver: fence, clock=clock,
                             targets=EveryNode())


class EveryNode(Mapping[str, FenceTarget]):
    """The coordinators' fence targets in the sim: every node, by the fake driver."""

    def __getitem__(self, node: str) -> FenceTarget:
        return FenceTarget(node, FENCE_DRIVER)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class SimNode:
    """One node: its controllers, its libvirt and its liveness (`powered`, `hung`)."""

    def __init__(self, name: str, state: ClusterState, clock: FakeClock, workdir: Path,
                 fence: FenceDriver, coordinator: bool = True, memory_total: int = 16384,
                 on_fence_failure: str = "none") -> None:
        self.name = name
        self.state = state
        self.clock = clock
        self.workdir = workdir
        self.is_coordinator = coordinator
        self.host = FakeHost(memory_total=memory_total)
        self.powered = False
        self.hung = False
        self.libvirt = self._new_libvirt()
        self.writer = NodeStatusWriter(state.store, state.paths.node_status(name), clock)
        self.vm = make_vm_controller(name, state, self.libvirt, clock,
                                     can_act=lambda: self.powered)
        self.node = make_node_controller(name, state, self.writer, self.host, clock,
                                         self.libvirt, self.vm)
        self.services = PrimaryServices()  # what runs only on the primary: tests add to it
        self.coordinator: Coordinator | None = None
        self.fencing: FencingController | None = None
        if coordinator:
            self.coordinator = make_coordinator(name, state, self.writer, self.services,
                                                self._session_id, clock)
            coordinator_ = self.coordinator
            self.fencing = make_fencing(
                name, state, lambda: coordinator_.is_primary and coordinator_.services_up,
                fence, clock, on_fence_failure)

    def _new_libvirt(self) -> LibvirtDriver:
        """This node's hypervisor: a libvirt test node of its own (one connection = one node)."""
        path = self.workdir / f"{self.name}.xml"
        path.write_text("<node/>")
        return LibvirtDriver(f"test://{path}")

    def _session_id(self) -> int | None:
        client_id = self.state.client.client_id
        return int(client_id[0]) if self.powered and client_id else None

    @property
    def live(self) -> bool:
        return self.powered and not self.hung

    # the daemon's life
    def register(self) -> None:
        """What `NodeDaemon._register` writes: spec, status (`run`), the ephemeral `alive`."""
        paths, store = self.state.paths, self.state.store
        if not self.state.cache.exists(paths.node(self.name)):
            store.commit([Op.create(paths.node(self.name), NodeSpec(
                self.name, self.is_coordinator).to_doc())])
        previous = store.read_optional(paths.node_status(self.name))
        status = from_dict(NodeStatus, previous[0] if previous else {})
        status.daemon_state = "run"
        status.coordinator_state = "secondary" if self.is_coordinator else "client"
        status.libvirt_uri = self.libvirt.uri
        status.started = status.keepalive = self.clock()
        self.writer.reset(status)
        ops = [Op.create(paths.node_alive(self.name), {"pid": 1, "boot_id": "fake",
                                                       "since": self.clock()}, ephemeral=True)]
        if previous is None:
            ops.append(Op.create(paths.node_status(self.name), status.to_doc()))
        else:
            ops.append(Op.set(paths.node_status(self.name), status.to_doc(),
                              previous[1].version))
        results = store.commit(ops)
        self.writer.mark_written(results[1].version if previous is not None else 0)
        self.powered, self.hung = True, False
        self.node.keepalive()

    def power_off(self) -> None:
        """The host is off: its guests stop (they stay defined, as on a real host), its
        session ends (`alive` and a primary lock it held disappear), its controllers stop."""
        self.powered = False
        if self.coordinator is not None:  # its processes are gone, the primary's with them
            if self.coordinator.services_up:
                self.services.stop()
            self.coordinator.is_primary = self.coordinator.services_up = False
        for domain in self.libvirt.list_domains():
            if domain.active:
                self.libvirt.destroy(domain.uuid)
                self.node.note_domain(domain.uuid)  # (libvirt's lifecycle event)
        lock = self.state.view.primary_entry()
        if lock is not None and (lock.doc or {}).get("node") == self.name:
            self.state.store.commit([Op.delete(self.state.paths.primary)])
        self.state.drop_alive(self.name)

    def stop(self) -> None:
        self.libvirt.close()

    # one round of this node's controllers
    def keepalive(self) -> None:
        if self.live:
            self.node.keepalive()

    def reconcile_coordinator(self) -> None:
        if self.live and self.coordinator is not None:
            self.coordinator.reconcile(COORDINATOR_KEY)

    def reconcile_vms(self) -> None:
        if not self.live:
            return
        keys = self.vm.keys()  # the controller's keys, not a dict's
        for key in keys:
            with contextlib.suppress(TemporaryError):
                self.vm.reconcile(key)
            # what libvirt's lifecycle events tell the daemon's node controller (`note_domain`),
            # delivered at once here so that a round stays deterministic
            self.node.note_domain(key.split("/", 1)[1])

    def reconcile_fencing(self) -> None:
        if self.live and self.fencing is not None:
            keys = self.fencing.keys()
            for key in keys:
                self.fencing.reconcile(key)

    def reconcile_node(self) -> None:
        """One step of the node controller (flush and ready are level-based: no worker)."""
        if self.live:
            keys = self.node.keys()  # the controller's keys, not a dict's
            for key in keys:
                self.node.reconcile(key)

    # what runs here
    def running(self) -> list[str]:
        """UUIDs of the guests this node's libvirt runs."""
        if not self.powered:
            return []
        return sorted(d.uuid for d in self.libvirt.list_domains() if d.active)


class SimCluster:
    """Nodes sharing one `ClusterState` and one `FakeClock`; `step()` is one round."""

    def __init__(self, state: ClusterState, workdir: Path, clock: FakeClock | None = None,
                 tick: float = 1.0) -> None:
        self.state = state
        self.workdir = workdir
        self.clock = clock or FakeClock()
        self.tick = tick
        self.fence = FakeFence(self._fence_power_off)
        self.nodes: dict[str, SimNode] = {}

    def add_node(self, name: str, coordinator: bool = True, memory_total: int = 16384,
                 on_fence_failure: str = "none") -> SimNode:
        node = SimNode(name, self.state, self.clock, self.workdir, self.fence, coordinator,
                       memory_total, on_fence_failure)
        self.nodes[name] = node
        node.register()
        return node

    def _fence_power_off(self, name: str) -> None:
        self.nodes[name].power_off()

    def step(self) -> None:
        nodes = list(self.nodes.values())
        for node in nodes:
            node.keepalive()
        for node in nodes:
            node.reconcile_coordinator()
        for node in nodes:
            node.reconcile_node()
        for node in nodes:
            node.reconcile_vms()
        for node in nodes:
            node.reconcile_fencing()
        self.clock.advance(self.tick)

    def run(self, seconds: float) -> None:
        for _ in range(max(1, round(seconds / self.tick))):
            self.step()

    def run_until(self, condition: Callable[[], object], seconds: float = 60.0) -> None:
        """Step until `condition()` holds; AssertionError after `seconds` of simulated time."""
        for _ in range(max(1, round(seconds / self.tick))):
            if condition():
                return
            self.step()
        assert condition(), f"not reached within {seconds:g} simulated seconds"

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()

    # what an operator asks for, written as the API writes it
    def migrate(self, vm: str, target: str) -> None:
        """`POST /vm/<vm>/node action=migrate node=<target> force` (pvcd/api/vms.py): the one
        move rule, on what ZooKeeper has now."""
        move_vm(self.state.store, self.state.paths, self.state.vm_uuid(vm),
                lambda basis: reassign(basis.spec, basis.status, target, Move.MIGRATE,
                                       owner=basis.owner))

    def domain_state(self, node: str, wanted: str) -> None:
        """`POST /node/<node>/domain-state state=flush|ready`."""
        self.state.store.update(self.state.paths.node(node), lambda doc: {
            **doc, "domain_state": wanted, "domain_request": int(doc["domain_request"]) + 1})

    def handover(self, to_node: str | None) -> None:
        """`POST /node/<primary>/coordinator-state state=secondary` (or another's `primary`)."""
        primary = self.primary()
        assert primary is not None, "no primary to hand over from"
        self.state.put(self.state.paths.handover,
                       Handover(primary, to_node, self.clock()).to_doc())

    def maintenance(self, enabled: bool) -> None:
        self.state.put(self.state.paths.maintenance, {"enabled": enabled})

    # what is true now
    def node_status(self, name: str) -> NodeStatus:
        status = self.state.view.node_status(name)
        assert status is not None, f"node {name} has no status"
        return status

    def primary(self) -> str | None:
        return self.state.view.primary()

    def where_running(self, uuid: str) -> list[str]:
        return [name for name, node in self.nodes.items() if uuid in node.running()]


@contextlib.contextmanager
def sim_cluster(state: ClusterState, workdir: Path) -> Iterator[SimCluster]:
    cluster = SimCluster(state, workdir)
    try:
        yield cluster
    finally:
        cluster.close()
