"""One node's daemon, and the composition root: every controller is built here.

The daemon builds each subsystem from explicit dependencies (its builder returns a `Wiring`: its
controllers, the cache paths that feed them, the services it runs while this node is primary) and
registers it: controllers start and stop with the daemon, cache changes are dispatched to the
watches, primary services follow the coordinator. Nothing a subsystem builds knows the daemon.
What the config cannot select (the lab's fence drivers and agent) comes in as `Plugins`.

Lifecycle: connect → ensure the schema → start the cache → register (node spec, status,
ephemeral `alive`) → controllers and the keepalive loop (the `session` thread; the main thread
only waits for `stop()`) → on SIGTERM, within `timing.shutdown_budget` whatever ZooKeeper does:
`shutdown`, hand the primary role over, stop the controllers, `stop`, close the session.

Session handling: a SUSPENDED connection keeps everything as is (the session, the ephemeral
znodes and the primary lock may well survive a ZooKeeper leader change). A LOST session
(expired) means ZooKeeper already removed our ephemeral znodes: the coordinator drops the primary
role at once, and the session thread re-registers on the new session without a restart.
While the connection is down no call waits for ZooKeeper longer than the session timeout (the
store's `timeout`), and the keepalive writes nothing (kazoo would only queue it).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kazoo.client import KazooState

from pvcd.config import Config
from pvcd.controllers.autobackup_schedule import build_autobackup_schedule
from pvcd.controllers.base import Controller, Watch, Wiring
from pvcd.controllers.client_networks import build_networks
from pvcd.controllers.console import build_console
from pvcd.controllers.coordinator import KEY as COORDINATOR_KEY
from pvcd.controllers.coordinator import Coordinator, PrimaryServices
from pvcd.controllers.faults import build_faults
from pvcd.controllers.fencing import FencingController
from pvcd.controllers.floating import build_floating_ips
from pvcd.controllers.health import HealthSources, SessionEvents, build_health
from pvcd.controllers.metadata import build_metadata
from pvcd.controllers.node import NodeController, NodeStatusWriter
from pvcd.controllers.node_log import NodeLogHandler, NodeLogWriter
from pvcd.controllers.restore_hold import hold_during_restore
from pvcd.controllers.self_fence import DeclaredDead
from pvcd.controllers.storage import build_storage
from pvcd.controllers.task_kinds import production_task_kinds
from pvcd.controllers.tasks import TaskRegistry, build_tasks
from pvcd.controllers.uploads import UploadService
from pvcd.controllers.vm import VmController, vm_key
from pvcd.domain.errors import ConfigError, Conflict, PvcError
from pvcd.domain.records import NodeSpec, NodeStatus, from_dict
from pvcd.drivers.ceph.driver import CephDriver
from pvcd.drivers.fence import fence_driver
from pvcd.drivers.host import HostDriver, pid_alive
from pvcd.drivers.libvirt import LibvirtDriver
from pvcd.drivers.systemd import notify
from pvcd.plugins import Plugins
from pvcd.safety import cluster_client, fence_targets, self_fence
from pvcd.state.cache import StateCache
from pvcd.state.schema import Paths, ensure_schema
from pvcd.state.store import Op, Store
from pvcd.state.view import ClusterView
from pvcd.state.vm_index import VmIndex
from pvcd.upload_pipe import UploadPipes

if TYPE_CHECKING:
    from pvcd.api.metrics import Metrics
    from pvcd.api.server import ApiServer

log = logging.getLogger(__name__)

CACHE_LOAD_TIMEOUT = 600.0  # seconds the cache's initial load of the whole tree may take


class NodeDaemon:
    def __init__(self, config: Config, host: HostDriver | None = None,
                 clock: Callable[[], float] = time.time, plugins: Plugins | None = None,
                 libvirt: LibvirtDriver | None = None) -> None:
        """`plugins`: what the config cannot select (the lab's); `libvirt`: the connection to
        use instead of opening `drivers.libvirt.uri` (the lab shares it with its agent)."""
        self.config = config
        self.name = config.node.name
        self.clock = clock
        self.host = host or HostDriver()
        self.plugins = plugins or Plugins()
        self.fence_drivers = functools.partial(fence_driver, extra=self.plugins.fence_drivers)
        self.fence_targets = fence_targets(config, self.fence_drivers)
        self.paths = Paths(config.cluster.zookeeper_root)
        self.client = cluster_client(config.cluster)
        self.cache = StateCache(self.client, self.paths.root)
        # no blocking call waits on a suspended connection longer than the session may live
        self.store = Store(self.client, self.cache, timeout=config.cluster.session_timeout)
        # subscribed before the cache starts: the index sees the initial load
        self.view = ClusterView(self.cache, self.paths, VmIndex(self.cache, self.paths))
        self.self_fence = self_fence(config, self.plugins.watchdog)
        self.writer = NodeStatusWriter(self.store, self.paths.node_status(self.name), clock,
                                       yield_to_fence=self.self_fence.enabled)
        self.libvirt = libvirt or LibvirtDriver(config.drivers.libvirt.uri)
        # this node's log in the cluster: `log_handler` is attached to the root logger by the
        # process that runs this one daemon (`pvcd.main.run_node`)
        self.log_handler = NodeLogHandler(config.logging.zookeeper_lines)
        self.node_log = NodeLogWriter(self.log_handler, self.store,
                                      self.paths.node_log(self.name),
                                      config.logging.zookeeper_lines,
                                      connected=lambda: self.client.connected)
        self.node = NodeController(self.name, self.view, self.store, self.writer, self.host,
                                   self.libvirt, clock)
        timing = config.timing
        self.node_controller = Controller("node", self.node.reconcile, self.node.keys,
                                          resync_interval=timing.resync_interval)
        # controllers started and stopped with the daemon, and which cache paths feed them
        self.controllers: list[Controller] = []
        self._watches: list[tuple[Watch, Controller]] = []
        spec_path = self.paths.node(self.name)
        self._add(Wiring([(self.node_controller, [
            Watch(spec_path, lambda path: self.node.key() if path == spec_path else None)])]))
        self.services = PrimaryServices()
        self.uploads = UploadPipes()  # bodies the API receives, for this node's upload tasks
        self.coordinator: Coordinator | None = None
        self.coordinator_controller: Controller | None = None
        if config.node.coordinator:
            self.coordinator = Coordinator(self.name, self.view, self.store, self.writer,
                                           self.services, self._session_id,
                                           timing.handover_timeout, clock)
            # started after, and stopped before, the other controllers (`run`, `_shutdown`)
            self.coordinator_controller = Controller(
                "coordinator", self.coordinator.reconcile, lambda: [COORDINATOR_KEY],
                resync_interval=1.0)
            alive = Watch(self.paths.nodes + "/",
                          lambda path: COORDINATOR_KEY if path.endswith("/alive") else None)
            self._watches += [(Watch(self.paths.coordinator, lambda path: COORDINATOR_KEY),
                               self.coordinator_controller),
                              (alive, self.coordinator_controller)]
            # the primary's services in this order: floating IPs, the API, then the subsystems'
            self._add(build_floating_ips(config.networks, config.drivers.network.netns))
            # the API (tornado, prometheus_client and pvcd.api: ~14 MiB) is imported by
            # coordinators only: any of them may become primary, no other node serves it
            from pvcd.api.metrics import Metrics

            self.metrics = Metrics(self.view, self.name, clock, sources=self._metric_sources,
                                   in_flight=lambda: self.api.ctx.in_flight)
            self.api = self._make_api(self.metrics)
            self.services.add("api", self.api.start, self.api.stop)
        self._add(build_networks(self.name, self.view, self.store, self.writer,
                                 config.drivers.network, config.node.coordinator,
                                 networks=config.networks))
        # the cloud-init metadata service (extensions.md §4): on the primary, when enabled
        self._add(build_metadata(self.name, self.view, config.drivers.network,
                                 coordinator=config.node.coordinator,
                                 enabled=config.metadata.enabled))
        # Ceph: OSDs on their owner node; pools, volumes on the primary
        self._add(build_storage(self.name, self.view, self.store, config.drivers.ceph,
                                timing.resync_interval, clock,
                                coordinator=self.coordinator is not None,
                                extra_osds=self.plugins.extra_osds, guests=self.libvirt))
        # tasks: this node's, and on coordinators the primary's (docs/tasks.md)
        self._add(build_tasks(self.name, self.view, self.store, config.tasks,
                              TaskRegistry([*production_task_kinds(
                                  self.view, self.store, config, self.uploads, clock,
                                  guests=self.libvirt),
                                  *self.plugins.task_kinds]),
                              coordinator=self.coordinator is not None,
                              resync_interval=timing.resync_interval, clock=clock))
        # cluster faults (extensions.md §8.4): raised by the primary every health.interval
        self._add(build_faults(self.view, self.store, config.health.interval,
                               coordinator=self.coordinator is not None, clock=clock))
        # the autobackup schedule (extensions.md §5.5): runs started by the primary
        self._add(build_autobackup_schedule(self.name, self.view, self.store,
                                            coordinator=self.coordinator is not None,
                                            clock=clock))
        self._add(self._build_vms())
        if self.coordinator is not None:
            self._add(self._build_fencing())
        # node health checks every `health.interval` (docs/operations.md)
        self.session_events = SessionEvents()
        health, self.health_writer = build_health(
            config, self.view, self.store, HealthSources(
                host_info=self.libvirt.host_info, session_events=self.session_events,
                is_primary=self._serves_as_primary,
                fence_target=self.fence_targets.get(self.name)),
            can_write=lambda: self.registered and self.client.connected, clock=clock)
        self._add(health)
        self.registered = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.stopped = threading.Event()

    def _add(self, wiring: Wiring) -> None:
        """Register a subsystem: its controllers, their watches, its primary services."""
        for controller, watches in wiring.controllers:
            self.controllers.append(controller)
            self._watches += [(watch, controller) for watch in watches]
        for service in wiring.services:
            self.services.add(service.name, service.start, service.stop)

    def _upload_service(self) -> UploadService | None:
        """Uploads are received by the API's process (a coordinator that manages Ceph)."""
        ceph = self.config.drivers.ceph
        if not ceph.enabled:
            return None
        return UploadService(self.name, self.view, self.store,
                             CephDriver(ceph.conf_file, ceph.keyring,
                                        timeout=ceph.command_timeout),
                             ceph.request_timeout, self.config.tasks.workers, self.clock)

    def _make_api(self, metrics: Metrics) -> ApiServer:
        from pvcd.api.app import make_context
        from pvcd.api.auth import Tokens
        from pvcd.api.connections import ConnectionLimits
        from pvcd.api.server import ApiServer, make_ssl_context

        api, ceph = self.config.api, self.config.drivers.ceph
        ctx = make_context(
            self.view, self.store, self.name, api.auth.enabled,
            Tokens.from_config([(t.token, t.description) for t in api.auth.tokens]),
            storage_request_timeout=ceph.request_timeout if ceph.enabled else None,
            clock=self.clock, registry=metrics, api=api, uploads=self.uploads,
            pool_space=CephDriver(ceph.conf_file, ceph.keyring, timeout=ceph.command_timeout
                                  ).pool_space if ceph.enabled else None,
            upload_service=self._upload_service(),
            upstream_ip=_address(self.config.networks.upstream.floating_ip
                                 if self.config.networks.upstream else None),
            backup_paths=self.config.backup.allowed_paths)
        ssl_context = None
        if api.tls.enabled and api.tls.cert_file and api.tls.key_file:
            ssl_context = make_ssl_context(api.tls.cert_file, api.tls.key_file)
        # the API is reachable on the cluster floating IP wherever the primary is; a wildcard
        # listen address covers it already, a specific one (or a lab namespace) does not
        extra: list[tuple[str, str | None]] = []
        cluster = self.config.networks.cluster
        if cluster.floating_ip and cluster.device and api.listen not in ("0.0.0.0", "::"):
            address = cluster.floating_ip.split("/")[0]
            if address != api.listen:
                extra.append((address, self.config.drivers.network.netns))
        try:
            return ApiServer(ctx, api.listen, api.port, api.auth.secret_key, ssl_context,
                             extra_listen=extra, limits=ConnectionLimits.from_config(api),
                             allow_unauthenticated=api.auth.allow_unauthenticated)
        except ConfigError as exc:
            raise ConfigError(f"{self.config.path}: {exc}") from None

    def _build_fencing(self) -> Wiring:
        timing, fencing = self.config.timing, self.config.fencing
        coordinator = self.coordinator
        assert coordinator is not None
        self.fencing = FencingController(
            self.name, self.view, self.store,
            is_primary=lambda: coordinator.is_primary and coordinator.services_up,
            keepalive_interval=timing.keepalive_interval,
            dead_threshold=timing.dead_threshold, fence_timeout=timing.fence_timeout,
            attempts=fencing.attempts, on_failure=fencing.on_fence_failure,
            drivers=self.fence_drivers, clock=self.clock, targets=self.fence_targets)
        controller = Controller("fencing", self.fencing.reconcile, self.fencing.keys,
                                resync_interval=max(0.2, timing.keepalive_interval / 2))
        nodes = self.paths.nodes + "/"
        wiring = Wiring()
        wiring.add(controller,
                   Watch(nodes, functools.partial(FencingController.key_of_node_path, nodes)))
        return wiring

    def _serves_as_primary(self) -> bool:
        coordinator = self.coordinator
        return coordinator is not None and coordinator.is_primary and coordinator.services_up

    def _metric_sources(self) -> tuple[list[Controller], FencingController | None]:
        """What the primary's /metrics shows of this daemon: its controllers and fences."""
        coordinator = [self.coordinator_controller] if self.coordinator_controller else []
        return [*self.controllers, *coordinator], getattr(self, "fencing", None)

    def _build_vms(self) -> Wiring:
        timing = self.config.timing
        self.vm = VmController(self.name, self.view, self.store, self.libvirt,
                               timing.shutdown_timeout, self.clock,
                               can_act=lambda: self.registered and self.client.connected
                               and not self.self_fence.given_up,
                               freeze_timeout=self.config.snapshot.freeze_timeout)
        self.vm_controller = Controller("vm", hold_during_restore(self.view, self.vm.reconcile),
                                        self.vm.keys, workers=4,
                                        resync_interval=timing.resync_interval)
        vms = self.paths.vms + "/"

        wiring = Wiring()
        wiring.add(self.vm_controller,
                   Watch(vms, lambda path: _vm_key_of(vms, path)))
        # the node record's domain counts follow VM changes and libvirt's events at once
        self._watches.append((Watch(vms, lambda path: None if _vm_key_of(vms, path) is None
                                    else self.node.domains_key()), self.node_controller))
        consoles, self.console = build_console(
            self.name, self.view, self.store, self.libvirt,
            self.config.drivers.libvirt.console_log_directory,
            self.config.drivers.libvirt.console_log_lines,
            can_act=lambda: self.registered and self.client.connected,
            running=self.node.running.current)
        wiring.extend(consoles)

        def on_lifecycle(uuid: str, event: object, detail: object) -> None:
            self.node.note_domain(uuid)
            self.vm_controller.enqueue(vm_key(uuid))
            self.node_controller.enqueue(self.node.domains_key())

        self.libvirt.add_lifecycle_listener(on_lifecycle)
        return wiring

    # public
    def run(self) -> None:
        """Run until `stop()`; returns after a clean shutdown."""
        log.info("event=daemon-start node=%s coordinator=%s zookeeper=%s", self.name,
                 self.config.node.coordinator, ",".join(self.config.cluster.coordinators))
        self.client.add_listener(self._on_session_state)
        if not self._connect():  # stopped before ZooKeeper answered: nothing to hand over
            self._release(" before=connected")
            return
        ensure_schema(self.client, self.paths)
        self.node_log.start()
        # the initial load reads every znode (10,000 VMs: 40,000 of them, 25-55 s on a loaded
        # lab machine): a timeout much shorter made a restarted daemon fail at start
        self.cache.start(timeout=CACHE_LOAD_TIMEOUT)
        self.cache.subscribe(self._on_change)
        for service in self.plugins.services:  # up before the node says it runs (the lab
            service.start()                    # agent answers as soon as the node is seen)
        if not self._register_first():  # stopped while the primary was fencing this node
            self._release(" before=registered")
            return
        for controller in self.controllers:
            controller.start()
        if self.coordinator_controller is not None:
            self.coordinator_controller.start()
        notify(f"READY=1\nSTATUS=registered as node {self.name}")  # Type=notify units
        # ZooKeeper work (keepalive, re-registration) runs on a thread of its own: this one
        # only waits for `stop()`, so SIGTERM is acted on whatever ZooKeeper does
        keeper = threading.Thread(target=self._keep_session, name="session", daemon=True)
        keeper.start()
        try:
            self._stop.wait()
        finally:
            self._shutdown(keeper)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # session
    def _connect(self) -> bool:
        """Connect to ZooKeeper, retrying until it answers (True) or `stop()` (False); a stop
        is noticed within 0.2 s even while a connection attempt is pending."""
        attempt = max(5.0, self.config.cluster.session_timeout)
        while not self._stop.is_set():
            connected = self.client.start_async()
            deadline = time.monotonic() + attempt
            while not connected.wait(0.2):
                if self._stop.is_set():
                    return False
                if time.monotonic() > deadline:
                    break
            if self.client.connected:
                return True
            log.warning("event=zookeeper-unreachable node=%s zookeeper=%s", self.name,
                        ",".join(self.config.cluster.coordinators))
            self.client.stop()
            self._stop.wait(1.0)
        return False

    def _on_session_state(self, state: str) -> None:
        # runs on kazoo's connection thread: only flip flags and wake the session thread
        self.session_events.note(state)
        if state == KazooState.LOST:
            self.registered = False
            log.warning("event=session-lost node=%s", self.name)
        elif state == KazooState.SUSPENDED:
            log.warning("event=session-suspended node=%s", self.name)
        self._wake.set()
        if self.coordinator_controller is not None:
            self.coordinator_controller.enqueue(COORDINATOR_KEY)

    def _session_id(self) -> int | None:
        if not self.registered or self.client.client_id is None:
            return None
        return int(self.client.client_id[0])

    # registration
    def _register_first(self) -> bool:
        """Register; while the primary is fencing this node (a daemon started again before
        the fence is over), wait for it. False: stopped meanwhile."""
        while not self._stop.is_set():
            try:
                self._register()
                return True
            except DeclaredDead as exc:
                log.warning("event=register-deferred node=%s reason=%s", self.name, exc)
                self._stop.wait(self.config.timing.keepalive_interval)
        return False

    def _register(self) -> None:
        """Create or refresh this node's records; idempotent; run at start and after LOST."""
        self._claim_name()
        spec_path = self.paths.node(self.name)
        coordinator = self.config.node.coordinator
        read_started = time.monotonic()
        previous = self.store.read_optional(self.paths.node_status(self.name))
        if self.self_fence.enabled and previous is not None and \
                isinstance(previous[0], dict) and previous[0].get("daemon_state") == "dead":
            # the primary is fencing this node: never arm (or pet) the watchdog over that
            if self.self_fence.taken is not None:
                self.self_fence.declared_dead("marked dead while the session was away")
            raise DeclaredDead("the primary is fencing this node (marked dead)")
        self.self_fence.arm(read_started)  # before this node says it runs

        def refresh_spec(doc: object) -> object:
            spec = from_dict(NodeSpec, doc)
            # (`fence`: what nodes published before fencing became the coordinators' own
            # configuration, IPMI passwords included: scrubbed)
            if spec.coordinator == coordinator and spec.name == self.name and \
                    not (isinstance(doc, dict) and "fence" in doc):
                return None
            spec.name, spec.coordinator = self.name, coordinator
            return spec.to_doc()

        if self.store.read_optional(spec_path) is None:
            try:
                self.store.commit([Op.create(spec_path, NodeSpec(self.name, coordinator).to_doc())])
            except Conflict:
                pass
        self.store.update(spec_path, refresh_spec)
        status = from_dict(NodeStatus, previous[0] if previous else {})
        status.daemon_state = "run"
        status.coordinator_state = "secondary" if coordinator else "client"
        status.pid = os.getpid()
        libvirt = self.config.drivers.libvirt
        status.libvirt_uri = libvirt.peer_uri or libvirt.uri
        status.migration_uri = self.config.drivers.libvirt.migration_uri
        status.started = self.clock()
        status.keepalive = self.clock()
        self.writer.reset(status)
        alive_doc = {"pid": os.getpid(), "boot_id": self.host.boot_id(), "since": self.clock()}
        ops = [Op.create(self.paths.node_alive(self.name), alive_doc, ephemeral=True)]
        if previous is None:
            ops.append(Op.create(self.paths.node_status(self.name), status.to_doc()))
        else:
            ops.append(Op.set(self.paths.node_status(self.name), status.to_doc(),
                              previous[1].version))
        results = self.store.commit(ops)
        self.writer.mark_written(results[1].version if previous is not None else 0)
        self.node.keepalive()
        self.registered = True
        log.info("event=node-registered node=%s session=%#x", self.name,
                 self.client.client_id[0] if self.client.client_id else 0)
        for controller in self.controllers:
            controller.resync()  # whatever backed off while we had no session: look again
        if self.coordinator_controller is not None:
            self.coordinator_controller.enqueue(COORDINATOR_KEY)

    def _claim_name(self) -> None:
        """Make sure no other live daemon uses our node name; clear our own stale liveness.

        An `alive` znode left by this node's previous process (same boot, pid gone) is deleted
        at once instead of waiting for its session to time out; one held by a live process is
        a configuration error (two daemons, one name), reported after waiting it out.
        """
        path = self.paths.node_alive(self.name)
        deadline = time.monotonic() + 2 * self.config.cluster.session_timeout + 1
        while True:
            current = self.store.read_optional(path)
            if current is None:
                return
            doc, stat = current
            doc = doc if isinstance(doc, dict) else {}
            own_session = self.client.client_id and stat.ephemeralOwner == self.client.client_id[0]
            stale = doc.get("boot_id") == self.host.boot_id() and not pid_alive(
                int(doc.get("pid", 0)))
            if own_session or stale:
                try:
                    self.store.commit([Op.delete(path, stat.version)])
                except Conflict:
                    pass
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"another pvcd daemon is registered as node '{self.name}' "
                                   f"(pid {doc.get('pid')}); refusing to start twice")
            time.sleep(0.2)

    # loop
    def _keep_session(self) -> None:
        """Keepalive every interval; re-register after a LOST session (the `session` thread)."""
        interval = self.config.timing.keepalive_interval
        next_keepalive = time.monotonic() + interval
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_keepalive - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            if self.self_fence.given_up:  # declared dead: wait for the watchdog's reset
                self._stop.wait(interval)
                continue
            try:
                if not self.registered and self.client.state == KazooState.CONNECTED:
                    self._register()
                # while the connection is down a write would only queue in kazoo (and hold
                # the status writer): the first keepalive after it is back says it all
                if self.registered and self.client.connected and \
                        time.monotonic() >= next_keepalive:
                    started = time.monotonic()
                    self.node.keepalive()
                    self.self_fence.proven_alive(started)
            except DeclaredDead as exc:
                if self.self_fence.taken is not None:
                    self.self_fence.declared_dead(str(exc))
                else:
                    log.warning("event=register-deferred node=%s reason=%s", self.name, exc)
                    self._stop.wait(interval)
                continue
            except Exception as exc:
                log.warning("event=keepalive-failed node=%s error=%r", self.name, exc)
                self._stop.wait(0.2)
                self._wake.set()
                continue
            if time.monotonic() >= next_keepalive:
                next_keepalive = time.monotonic() + interval

    def _on_change(self, path: str) -> None:
        for watch, controller in self._watches:
            if path.startswith(watch.prefix):
                key = watch.key_of(path)
                if key is not None:
                    controller.enqueue(key)

    def _shutdown(self, keeper: threading.Thread) -> None:
        """Stop within `timing.shutdown_budget`, ZooKeeper reachable or not.

        Each step runs on a thread of its own and is waited for only as long as the budget
        allows: a step stuck on ZooKeeper (a write kazoo holds while its connection is
        suspended, a lock held by a controller inside such a write) is left behind, logged, and
        the next runs. The writes only this shutdown makes (status, liveness) are skipped while
        the connection is down: the session's expiry removes the liveness anyway.
        """
        budget = self.config.timing.shutdown_budget
        deadline = time.monotonic() + budget
        log.info("event=daemon-shutdown node=%s budget=%.1f", self.name, budget)
        notify("STOPPING=1\nSTATUS=shutting down")

        def left(share: float = 1.0) -> float:
            return max(0.0, min(deadline - time.monotonic(), budget * share))

        if self.client.connected:  # a keepalive under way: let it finish
            keeper.join(left(0.1))
        _bounded("status", lambda: self._write_state("shutdown"), left(0.25))
        if self.coordinator is not None:
            _bounded("primary", self.coordinator.shutdown, left(0.5))
        stopped: list[bool] = []
        _bounded("controllers", lambda: stopped.append(self._stop_controllers(left)), left())
        if stopped == [True]:
            log.info("event=controllers-stopped node=%s", self.name)
        else:
            log.warning("event=controllers-left-running node=%s", self.name)
        unregistered: list[bool] = []
        _bounded("unregister", lambda: unregistered.append(self._unregister()), left())
        if unregistered == [True]:  # the cluster knows the daemon stopped: it fences nothing
            self.self_fence.stop()
        elif self.self_fence.taken is not None:  # else the machine must reset, as if partitioned
            log.critical("event=watchdog-left-armed node=%s reason=stop not recorded in the "
                         "cluster", self.name)
        self._release(deadline=deadline)

    def _write_state(self, state: str) -> None:
        if self.registered and self.client.connected:
            self.writer.update(lambda s: setattr(s, "daemon_state", state))

    def _stop_controllers(self, left: Callable[[], float]) -> bool:
        """Stop the coordinator's controller, then the others; True when all have ended."""
        first = [self.coordinator_controller] if self.coordinator_controller else []
        ended = [controller.stop(timeout=left()) for controller in
                 [*first, *reversed(self.controllers)]]
        return all(ended)

    def _unregister(self) -> bool:
        """Record the stop in the cluster; True once it is."""
        if self.registered and self.client.connected:
            try:  # health is null while the node is not running
                self.health_writer.clear()
            except PvcError as exc:
                log.warning("event=health-clear-failed node=%s error=%s", self.name, exc)
            self._write_state("stop")
            self.store.commit([Op.delete(self.paths.node_alive(self.name))])
            return True
        return False

    def _release(self, detail: str = "", deadline: float | None = None) -> None:
        """Let go of the cache, the plugins' services, libvirt and ZooKeeper (each safe if
        never started), then say the daemon has stopped. Closing the session waits for kazoo's
        connection thread, which may sit in a connection attempt to an unanswering server: it
        gets what is left of `deadline` (at least a second), then the process's exit closes
        the socket."""
        self.registered = False
        # what is queued of this node's log, written one last time (ZooKeeper reachable)
        left = 10.0 if deadline is None else max(1.0, deadline - time.monotonic())
        _bounded("node-log", lambda: self.node_log.stop(left / 2), left / 2)
        self.console.close()
        self.cache.close()
        for service in reversed(self.plugins.services):
            service.stop()
        self.libvirt.close()
        left = 10.0 if deadline is None else max(1.0, deadline - time.monotonic())
        if _bounded("session-close", self._close_session, left):
            detail += " session=closed"
        self.stopped.set()
        log.info("event=daemon-stopped node=%s%s", self.name, detail)

    def _close_session(self) -> None:
        self.client.stop()
        self.client.close()


def _address(interface: str | None) -> str | None:
    """The address of an `address/prefix` (None stays None)."""
    return interface.split("/")[0] if interface else None


# records under vms/<uuid>/ that no VM or node controller acts on: their writes enqueue
# nothing (snapshot records, extensions.md §5.1; the console buffer its node rewrites every
# second, §7)
_NOT_ACTED_ON = ("snapshots", "console")


def _vm_key_of(vms: str, path: str) -> str | None:
    """The VM controller's key for a change of `path` under `vms` (`<root>/vms/`), or None
    for a record nothing on the node acts on (`_NOT_ACTED_ON`)."""
    uuid, _, child = path[len(vms):].partition("/")
    return None if child.split("/", 1)[0] in _NOT_ACTED_ON else vm_key(uuid)


def _bounded(step: str, action: Callable[[], object], timeout: float) -> bool:
    """Run `action` on a thread of its own, waiting at most `timeout` s for it: True when it
    finished (an exception is logged), False when it is still running and left behind."""
    def run() -> None:
        try:
            action()
        except Exception:
            log.exception("event=shutdown-error step=%s", step)

    thread = threading.Thread(target=run, name=f"shutdown-{step}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        log.warning("event=shutdown-step-abandoned step=%s after=%.1f", step, timeout)
        return False
    return True
