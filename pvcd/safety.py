"""What keeps a node daemon from being the weak point, built from its own configuration: its
ZooKeeper client (credentials and TLS: `pvcd.state.client`), the fence targets a coordinator
uses for the other nodes (its own authority, never their records: docs/security.md), and its own
watchdog (`pvcd.controllers.self_fence`). Each is checked here, at start, so that a mistake is a
refusal to start, not a fence that fails when a node dies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kazoo.client import KazooClient

from pvcd.config import ClusterSection, Config
from pvcd.controllers.self_fence import SelfFence
from pvcd.domain.errors import ConfigError, InvalidValue
from pvcd.drivers.fence import FenceDriver, FenceTarget
from pvcd.drivers.watchdog import LinuxWatchdog, Watchdog
from pvcd.state.client import ZkCredentials, ZkTls, zookeeper_client

log = logging.getLogger(__name__)


def cluster_client(cluster: ClusterSection) -> KazooClient:
    """The daemon's ZooKeeper client, as `cluster` says (credentials, TLS); not started."""
    credentials = None
    if cluster.zookeeper_user is not None and cluster.zookeeper_password is not None:
        credentials = ZkCredentials(cluster.zookeeper_user, cluster.zookeeper_password)
    else:
        log.warning("event=zookeeper-unauthenticated reason=no cluster.zookeeper_user: anyone "
                    "who reaches ZooKeeper can change this cluster (docs/security.md)")
    tls = cluster.zookeeper_tls
    return zookeeper_client(cluster.coordinators, cluster.session_timeout, credentials,
                            ZkTls(tls.ca_file, tls.cert_file, tls.key_file, tls.verify)
                            if tls.enabled else None)


def fence_targets(config: Config, drivers: Callable[[str], FenceDriver]
                  ) -> dict[str, FenceTarget]:
    """How this coordinator fences each node: its own configuration, checked now (a driver
    this daemon lacks would make every fence of that node fail)."""
    targets = {}
    for index, section in enumerate(config.fencing.targets):
        try:
            drivers(section.driver)
        except InvalidValue:
            raise ConfigError(
                f"{config.path}: fencing.targets[{index}].driver: {section.driver!r} is not "
                "available to this daemon (the lab's fence drivers are only in lab node "
                "daemons, python -m pvcd.lab.node)") from None
        params: dict[str, object] = {"keepalive_interval": config.timing.keepalive_interval}
        for key in ("ipmi_host", "ipmi_user", "ipmi_password", "watchdog_timeout"):
            if getattr(section, key) is not None:
                params[key] = getattr(section, key)
        targets[section.node] = FenceTarget(section.node, section.driver, params)
    return targets


def self_fence(config: Config, opener: Callable[[str], Watchdog] | None) -> SelfFence:
    """This node's watchdog (none without `fencing.watchdog_device`); `opener`: how to open the
    device instead of the kernel's API (the lab's fake)."""
    fencing, interval = config.fencing, config.timing.keepalive_interval
    watchdog: Watchdog | None = None
    if fencing.watchdog_device is not None:
        if fencing.watchdog_timeout < 3 * interval:
            raise ConfigError(
                f"{config.path}: fencing.watchdog_timeout: {fencing.watchdog_timeout} s "
                f"is less than 3 keepalive intervals ({3 * interval:g} s): a node would "
                "reset itself over one slow keepalive")
        watchdog = (opener or LinuxWatchdog)(fencing.watchdog_device)
    return SelfFence(config.node.name, watchdog, fencing.watchdog_timeout, interval)
