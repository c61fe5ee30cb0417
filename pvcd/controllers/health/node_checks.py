"""The checks that read the node's own software (extensions.md §8.3): `load`, `lbvt`, `zkpr`,
`zkcn`, `gway`, `ceph`, and the operator's commands. Each is a small class whose `run()`
returns a `Finding`; what it reads comes in through its constructor.

`zkcn` and `gway` remember the previous round: a session that was suspended and came back, or
a dnsmasq that died and that the gateway controller restarted (it polls every 0.5 s, far inside
any interval), are faults of the interval even when the round itself finds everything in place.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pvcd.controllers.gateway import gateway_addresses
from pvcd.controllers.health.rounds import Finding
from pvcd.domain.errors import PvcError
from pvcd.domain.health_checks import (
    CEPH,
    DELTAS,
    GWAY,
    LBVT,
    LOAD,
    NOT_APPLICABLE,
    TIMED_OUT,
    TIMED_OUT_DELTA,
    ZKCN,
    ZKPR,
    command_delta,
)
from pvcd.drivers.dnsmasq import DnsmasqConfig, DnsmasqInstance
from pvcd.drivers.host import parent_pid
from pvcd.drivers.host_commands import CommandRunner
from pvcd.drivers.ifnames import bridge_name
from pvcd.drivers.netlink import NetlinkDriver
from pvcd.drivers.zookeeper_server import four_letter, serving_mode
from pvcd.state.store import Store
from pvcd.state.view import ClusterView

log = logging.getLogger(__name__)

ZKCN_ROUND_TRIP = 1.0  # seconds a ZooKeeper read may take before `zkcn` counts it
ZKPR_TIMEOUT = 2.0  # seconds the local ZooKeeper server has to answer `srvr`


class LoadCheck:
    """`load`: the 1-minute load average exceeds the CPU count."""

    def __init__(self, load: Callable[[], float] = lambda: os.getloadavg()[0],
                 cpus: Callable[[], int] = lambda: os.cpu_count() or 1) -> None:
        self.load, self.cpus = load, cpus

    def run(self) -> Finding:
        load, cpus = self.load(), self.cpus()
        data = {"load": round(load, 2), "cpus": cpus}
        if load > cpus:
            return Finding(DELTAS[LOAD], f"load {load:.2f} exceeds {cpus} CPUs", data)
        return Finding(0, f"load {load:.2f} on {cpus} CPUs", data)


class LibvirtCheck:
    """`lbvt`: libvirt answers (the round gives it `LBVT_LIMIT` seconds)."""

    def __init__(self, host_info: Callable[[], object]) -> None:
        self.host_info = host_info

    def run(self) -> Finding:
        try:
            self.host_info()
        except PvcError as exc:
            return Finding(DELTAS[LBVT], f"libvirt does not answer: {exc}")
        return Finding(0, "libvirt answers")


class ZookeeperServerCheck:
    """`zkpr` (coordinators): the local ZooKeeper server serves (a `Mode:` in its `srvr`
    answer; a server without quorum answers but does not serve)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def run(self) -> Finding:
        where = f"{self.host}:{self.port}"
        mode = serving_mode(four_letter(self.host, self.port, "srvr", ZKPR_TIMEOUT))
        if not mode:
            return Finding(DELTAS[ZKPR], f"the local ZooKeeper at {where} is not serving",
                           {"server": where})
        return Finding(0, f"the local ZooKeeper at {where} serves ({mode})",
                       {"server": where, "mode": mode})


class SessionEvents:
    """What the ZooKeeper connection went through since it was last asked: fed by a kazoo
    state listener (on kazoo's thread), read by `zkcn`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[str] = []

    def note(self, state: str) -> None:
        if state in ("SUSPENDED", "LOST"):
            with self._lock:
                self._seen.append(state)

    def take(self) -> list[str]:
        with self._lock:
            seen, self._seen = self._seen, []
        return seen


class ZookeeperSessionCheck:
    """`zkcn`: the session was suspended or lost since the last round, or a read of this
    node's own record takes over a second."""

    def __init__(self, events: SessionEvents, store: Store, path: str) -> None:
        self.events, self.store, self.path = events, store, path

    def run(self) -> Finding:
        seen = self.events.take()
        started = time.monotonic()
        try:
            self.store.read_optional(self.path)
        except PvcError as exc:
            return Finding(DELTAS[ZKCN], f"ZooKeeper does not answer: {exc}")
        took = time.monotonic() - started
        data = {"round_trip_ms": round(took * 1000, 1), "events": seen}
        if seen:
            what = " and ".join(state.lower() for state in sorted(set(seen)))
            return Finding(DELTAS[ZKCN], f"the session was {what} since the last round", data)
        if took > ZKCN_ROUND_TRIP:
            return Finding(DELTAS[ZKCN], f"a ZooKeeper read took {took:.1f} s", data)
        return Finding(0, f"round trip {took * 1000:.1f} ms", data)


class GatewayCheck:
    """`gway` (the primary): each managed network's gateway addresses are on its bridge and its
    dnsmasq runs, and did not die since the last round. A network is judged from the second
    round that sees it on this primary (the gateway controller needs a moment after a handover
    or a new network)."""

    def __init__(self, view: ClusterView, is_primary: Callable[[], bool], links: NetlinkDriver,
                 state_dir: str, netns: str | None) -> None:
        self.view, self.is_primary, self.links = view, is_primary, links
        self.state_dir, self.netns = state_dir, netns
        self._dnsmasq: dict[int, int] = {}  # network → its dnsmasq's pid in the last round

    def run(self) -> Finding:
        if not self.is_primary():
            self._dnsmasq.clear()
            return Finding(0, "not the primary")
        problems: list[str] = []
        judged = 0
        previous, self._dnsmasq = self._dnsmasq, {}
        for vni in self.view.network_vnis():
            spec = self.view.network(vni)
            if spec is None or spec.type != "managed":
                continue
            pid = self._dnsmasq_pid(vni) if spec.ip4_network or spec.ip6_network else 0
            self._dnsmasq[vni] = pid or 0
            if vni not in previous:
                continue
            judged += 1
            problem = self._judge(vni, gateway_addresses(spec), pid, previous[vni])
            if problem:
                problems.append(problem)
        data = {"networks": judged, "failing": problems}
        if problems:
            return Finding(DELTAS[GWAY] * len(problems), "; ".join(problems), data)
        return Finding(0, f"{judged} managed networks served", data)

    def _judge(self, vni: int, wanted: list[str], pid: int | None, before: int) -> str:
        bridge = bridge_name(vni)
        try:
            present = set(self.links.addresses(bridge)) if self.links.link_exists(bridge) \
                else set()
        except PvcError as exc:
            return f"{bridge}: cannot read its addresses: {exc}"
        missing = [address for address in wanted if address not in present]
        if missing:
            return f"{bridge}: gateway {', '.join(missing)} missing"
        if pid is None:
            return f"{bridge}: dnsmasq is not running"
        if before and pid and pid != before:
            return f"{bridge}: dnsmasq died and was restarted (pid {before} → {pid})"
        return ""

    def _dnsmasq_pid(self, vni: int) -> int | None:
        """The network's dnsmasq (not its lease-script helper, a fork with the same command
        line), found by the hosts directory only its command line names."""
        probe = DnsmasqInstance(DnsmasqConfig(interface=bridge_name(vni),
                                              state_dir=Path(self.state_dir) / str(vni),
                                              netns=self.netns))
        pids = probe.processes()
        main = [pid for pid in pids if parent_pid(pid) not in pids]
        return main[0] if main else None


class CephOsdCheck:
    """`ceph`: an OSD this node owns is down (the primary's mirror of Ceph's OSD map)."""

    def __init__(self, node: str, view: ClusterView) -> None:
        self.node, self.view = node, view

    def run(self) -> Finding:
        paths, cache = self.view.paths, self.view.cache
        owned, down = [], []
        for child in cache.children(paths.storage_osds):
            doc = cache.get(paths.storage_osd(child))
            if not isinstance(doc, dict) or doc.get("node") != self.node:
                continue
            owned.append(child)
            stats = doc.get("stats")
            if isinstance(stats, dict) and stats.get("up") is False:
                down.append(child)
        data = {"osds": sorted(owned, key=int), "down": sorted(down, key=int)}
        if down:
            return Finding(DELTAS[CEPH] * len(down),
                           f"OSD {', '.join(data['down'])} down", data)
        if not owned:
            return Finding(0, f"{NOT_APPLICABLE}: no OSD on this node", data)
        return Finding(0, f"{len(owned)} OSDs up", data)


class CommandCheck:
    """An operator's command (`health.commands`): exit 0 healthy, exit N costs min(N, 100);
    the first line of its output is the message."""

    def __init__(self, argv: Sequence[str], timeout: float, run: CommandRunner) -> None:
        self.argv, self.timeout, self.run_command = list(argv), timeout, run

    def run(self) -> Finding:
        result = self.run_command(self.argv, self.timeout)
        if result.timed_out:
            return Finding(TIMED_OUT_DELTA, TIMED_OUT, {"timeout": self.timeout})
        lines = (result.stdout or result.stderr).strip().splitlines()
        return Finding(command_delta(result.code), lines[0] if lines else "",
                       {"exit": result.code})
