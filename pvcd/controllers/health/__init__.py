"""Node health checks (extensions.md §8.3; docs/operations.md, "Node health checks").

`build_health` picks the checks that apply to this node (`health.checks` narrows them; the
operator's `health.commands` are added), and returns the `Wiring` of the controller that runs
them every `health.interval` (`rounds.HealthRounds`), with the `HealthWriter` the daemon clears
on a clean stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pvcd.config import Config
from pvcd.controllers.base import Controller, Wiring
from pvcd.controllers.health.hardware_checks import (
    DiskCheck,
    EdacCheck,
    IpmiCheck,
    NicsCheck,
    PowerSupplyCheck,
)
from pvcd.controllers.health.node_checks import (
    CephOsdCheck,
    CommandCheck,
    GatewayCheck,
    LibvirtCheck,
    LoadCheck,
    SessionEvents,
    ZookeeperServerCheck,
    ZookeeperSessionCheck,
)
from pvcd.controllers.health.rounds import Check, Finding, HealthRounds, HealthWriter
from pvcd.domain.health_checks import (
    CEPH,
    COORDINATOR_CHECKS,
    DELTAS,
    DISK,
    EDAC,
    GWAY,
    IPMI,
    LBVT,
    LOAD,
    NICS,
    NODE_CHECKS,
    PSUR,
    ZKCN,
    ZKPR,
)
from pvcd.drivers.fence import FenceTarget, IpmiFence
from pvcd.drivers.host import is_local_address
from pvcd.drivers.host_commands import CommandRunner, run_command
from pvcd.drivers.netlink import NetlinkDriver
from pvcd.state.store import Store
from pvcd.state.view import ClusterView

__all__ = ["Check", "Finding", "HealthRounds", "HealthSources", "HealthWriter",
           "SessionEvents", "build_health", "local_zookeeper"]

LBVT_LIMIT = 5.0  # seconds libvirt has to answer


@dataclass(frozen=True)
class HealthSources:
    """What the checks read, given by the daemon: libvirt, the session's events, whether this
    node is primary, its own fence target (IPMI), and the hardware sources (tests give
    recorded ones)."""

    host_info: Callable[[], object]
    session_events: SessionEvents
    is_primary: Callable[[], bool]
    fence_target: FenceTarget | None = None
    sysfs: Path = Path("/sys")
    run: CommandRunner = run_command


def local_zookeeper(config: Config, is_local: Callable[[str], bool] = is_local_address
                    ) -> tuple[str, int]:
    """The ZooKeeper server `zkpr` asks: `health.zookeeper`; else the `cluster.coordinators`
    entry whose host is this node's name, else the one entry whose address is this machine's;
    else 127.0.0.1:2181."""
    address = config.health.zookeeper
    if address is None:
        entries = config.cluster.coordinators
        named = [e for e in entries if _host(e).split(".")[0] == config.node.name]
        local = [e for e in entries if is_local(_host(e))]
        address = named[0] if named else local[0] if len(local) == 1 else "127.0.0.1:2181"
    return _host(address), int(address.rsplit(":", 1)[1])


def _host(entry: str) -> str:
    return entry.rsplit(":", 1)[0].strip("[]")


def _devices(config: Config) -> list[str]:
    """The node's configured network devices, for `nics`."""
    networks, driver = config.networks, config.drivers.network
    found = [networks.cluster.device, networks.upstream.device if networks.upstream else None,
             driver.underlay_device, driver.uplink_device]
    return list(dict.fromkeys(device for device in found if device))


def build_health(config: Config, view: ClusterView, store: Store,
                 sources: HealthSources, can_write: Callable[[], bool],
                 clock: Callable[[], float]) -> tuple[Wiring, HealthWriter]:
    """The health controller of this node, and its writer (the daemon clears it on stop)."""
    node, health = config.node.name, config.health
    target = sources.fence_target if sources.fence_target is not None and \
        sources.fence_target.driver == "ipmi" else None
    makers: dict[str, Callable[[], Check]] = {
        LOAD: lambda: Check(LOAD, LoadCheck().run),
        NICS: lambda: Check(NICS, NicsCheck(_devices(config), sources.sysfs).run),
        DISK: lambda: Check(DISK, DiskCheck(sources.run).run),
        EDAC: lambda: Check(EDAC, EdacCheck(sources.sysfs).run),
        LBVT: lambda: Check(LBVT, LibvirtCheck(sources.host_info).run, LBVT_LIMIT,
                            Finding(DELTAS[LBVT], f"libvirt did not answer within "
                                                  f"{LBVT_LIMIT:g} s")),
        ZKPR: lambda: Check(ZKPR, ZookeeperServerCheck(*local_zookeeper(config)).run),
        ZKCN: lambda: Check(ZKCN, ZookeeperSessionCheck(
            sources.session_events, store, view.paths.node_health(node)).run),
        GWAY: lambda: Check(GWAY, GatewayCheck(
            view, sources.is_primary, NetlinkDriver(config.drivers.network.netns),
            config.drivers.network.state_dir, config.drivers.network.netns).run),
        IPMI: lambda: Check(IPMI, _not_applicable("no IPMI fencing for this node")
                            if target is None else IpmiCheck(target, IpmiFence()).run),
        PSUR: lambda: Check(PSUR, _not_applicable("no IPMI fencing for this node")
                            if target is None else PowerSupplyCheck(target, IpmiFence()).run),
        CEPH: lambda: Check(CEPH, CephOsdCheck(node, view).run),
    }
    applies = {name for name in NODE_CHECKS
               if (config.node.coordinator or name not in COORDINATOR_CHECKS)
               and (name != CEPH or config.drivers.ceph.enabled)}
    wanted = applies if health.checks is None else applies & set(health.checks)
    checks = [makers[name]() for name in NODE_CHECKS if name in wanted]
    checks += [Check(command.name, CommandCheck(command.command, command.timeout,
                                                sources.run).run)
               for command in health.commands]
    writer = HealthWriter(store, view.paths.node_health(node))
    rounds = HealthRounds(node, checks, writer, health.interval, can_write, clock)
    controller = Controller("health", rounds.reconcile, rounds.keys,
                            resync_interval=max(health.interval, 60.0))
    wiring = Wiring()
    wiring.add(controller)
    return wiring, writer


def _not_applicable(why: str) -> Callable[[], Finding]:
    return lambda: Finding(0, f"not applicable: {why}")
