"""One chaos run against a real lab (issue 12): N clients of mixed VM operations for T seconds on
a pool of M VM names, faults on a schedule, a double-run sampler on every node's libvirt, and
the end checks once the faults have stopped. Used by `tests/chaos/test_chaos.py` (short form)
and `bench/chaos.py` (long form, repeated runs).

A run: the lab defines M VMs, the sampler starts, the clients and the faults run for T seconds
and stop; the harness waits until every node's daemon runs again, then polls (up to
`converge_timeout`) until the cluster is at rest — every VM at its desired state, the API's list
equal to ZooKeeper's, every acknowledged write there and every acknowledged delete gone — and
judges the last picture. `ChaosResult.problems()` is empty when the run passed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from tests.chaos.checks import Cluster, Picture, Verdict, verdict
from tests.chaos.faults import (
    Event,
    FaultPlan,
    Faults,
    duplicate_daemons,
    ready_flushed,
    wait_all_running,
)
from tests.chaos.load import UUID_IN_MESSAGE, Client, Ledger, Op
from tests.chaos.sampler import DoubleRunSampler, Episode

NODES = ["node1", "node2", "node3"]
DEFAULT_MEMORY = 64  # MiB: tiny_guest_xml's
# a session that outlives a ZooKeeper restart; a killed daemon is found dead after 3 x 1 s
LAB_OPTIONS: dict[str, Any] = {"nodes": 3, "session_timeout": 10.0, "keepalive_interval": 1.0,
                               "dead_threshold": 3}


@dataclass
class ChaosConfig:
    clients: int = 8
    seconds: float = 20.0
    vms: int = 20
    faults: FaultPlan = field(default_factory=FaultPlan)
    converge_timeout: float = 30.0
    nodes_timeout: float = 90.0  # for every daemon to run again after the faults
    sample_interval: float = 0.1  # a sweep begins every 100 ms, or when the last one ends
    seed: int = 0


@dataclass
class ChaosResult:
    config: ChaosConfig
    ledger: Ledger
    sampler: DoubleRunSampler
    events: list[Event]
    verdict: Verdict
    nodes_back: float | None  # seconds after the load until every daemon ran again
    converged: float | None  # seconds after that until the cluster was at rest
    vm_count: int | None  # VMs in ZooKeeper at the end (None: the cluster could not be read)
    read_error: str = ""  # the last error reading the cluster at the end
    duplicates: list[str] = field(default_factory=list)  # nodes running two daemons

    @property
    def double_runs(self) -> list[Episode]:
        return self.sampler.episodes

    @property
    def failures(self) -> list[str]:
        return [f"{o.kind} {o.target}: {o.status} {o.message}" for o in self.ledger.snapshot()
                if o.failure]

    def problems(self) -> list[str]:
        found = [f"double-run: {e.uuid} on {', '.join(e.nodes)} for ≥{e.seconds * 1000:.0f} ms "
                 f"({e.sweeps} sweeps)" for e in self.double_runs]
        found += [f"5xx: {f}" for f in self.failures]
        found += self.verdict.lines()
        found += [f"two daemons: {d}" for d in self.duplicates]
        if self.nodes_back is None:
            found.append(f"nodes: not every daemon ran within {self.config.nodes_timeout:g} s")
        if self.vm_count is None:
            found.append(f"unreadable: the cluster could not be read at the end: "
                         f"{self.read_error}")
        elif self.converged is None:
            found.append(f"convergence: not at rest within {self.config.converge_timeout:g} s")
        return found

    def figures(self) -> dict[str, Any]:
        by_status = self.ledger.by_status()
        return {
            "requests": sum(by_status.values()),
            "by_status": dict(sorted(by_status.items())),
            "acked_writes": sum(1 for o in self.ledger.snapshot()
                                if o.acked and o.kind not in ("list", "get")),
            "sweeps": self.sampler.sweeps,
            "sweep_gap_p50_ms": round(self.sampler.gap_percentile(0.5) * 1000),
            "sweep_gap_p99_ms": round(self.sampler.gap_percentile(0.99) * 1000),
            "max_sweep_gap_ms": round(self.sampler.max_gap * 1000),
            "suspects": self.sampler.suspects,
            "double_runs": len(self.double_runs),
            "ghosts": len(self.verdict.ghosts),
            "orphans": len(self.verdict.orphans),
            "lost": len(self.verdict.lost) + len(self.verdict.lost_modify),
            "mismatch": len(self.verdict.mismatch),
            "stuck": len(self.verdict.stuck),
            "5xx": len(self.failures),
            "nodes_back_s": None if self.nodes_back is None else round(self.nodes_back, 2),
            "converged_s": None if self.converged is None else round(self.converged, 2),
            "vms_at_end": self.vm_count,
        }

    def summary(self) -> str:
        figures = self.figures()
        lines = ["  ".join(f"{k}={v}" for k, v in figures.items())]
        lines += [f"  fault at {e.at:>6.2f} s: {e.what} {e.detail}" for e in self.events]
        errors = Counter(o.message for o in self.ledger.snapshot() if o.status is None)
        lines += [f"  no answer x{n}: {error}" for error, n in errors.most_common()]
        lines += [f"  510 x{n}: {gist}" for gist, n in self.ledger.refusals().most_common(8)]
        lines += [f"  PROBLEM {p}" for p in self.problems()]
        return "\n".join(lines)


def chaos_lab(workdir: Path, fencing: str = "lab") -> Lab:
    lab = Lab(workdir)
    lab.up(**LAB_OPTIONS, fencing=fencing)
    return lab


def define_pool(lab: Lab, names: list[str], ledger: Ledger) -> None:
    """Define the pool's VMs before the load; their acknowledgements go to the ledger too."""
    info = lab.info or lab.load()
    session = requests.Session()
    session.headers["X-Api-Key"] = info.token
    for name in names:
        sent = time.monotonic()
        response = session.post(f"{info.api}/vm", data={"xml": tiny_guest_xml(name)},
                                timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"defining {name}: {response.status_code} {response.text}")
        message = response.json()["message"]
        found = UUID_IN_MESSAGE.search(message)
        ledger.add(Op(-1, "define", name, sent, time.monotonic(), 200, message,
                      found.group(1) if found else None, DEFAULT_MEMORY))


def run_chaos(lab: Lab, config: ChaosConfig) -> ChaosResult:
    """One run on a lab that is up (see `chaos_lab`), its VMs named c000…: defines the pool,
    runs the load with faults, and judges the end."""
    info = lab.info or lab.load()
    names = [f"c{i:03d}" for i in range(config.vms)]
    ledger = Ledger()
    define_pool(lab, names, ledger)
    stop = threading.Event()
    sampler = DoubleRunSampler(lab, NODES, config.sample_interval)
    faults = Faults(lab, NODES, config.faults, config.seconds, config.seed)
    clients = [Client(i, info.api, info.token, names, NODES, ledger, stop,
                      seed=config.seed * 1000 + i) for i in range(config.clients)]
    sampler.start()
    began = time.monotonic()
    faults.start()
    for client in clients:
        client.start()
    stop.wait(config.seconds)
    stop.set()
    faults.stop()
    for client in clients:
        client.join(60)
    nodes_back = wait_all_running(lab, NODES, config.nodes_timeout)
    events = faults.events + [Event(round(time.monotonic() - began, 2), "ready", node)
                              for node in ready_flushed(lab)]
    duplicates = duplicate_daemons(lab, NODES)
    cluster = Cluster(lab, NODES)
    try:
        converged, picture, judged, error = settle(cluster, ledger, config.converge_timeout)
    finally:
        cluster.close()
        sampler.stop()
    return ChaosResult(config, ledger, sampler, events, judged, nodes_back, converged,
                       len(picture.specs) if picture is not None else None, error, duplicates)


def settle(cluster: Cluster, ledger: Ledger, timeout: float
           ) -> tuple[float | None, Picture | None, Verdict, str]:
    """Poll until a picture passes every check (seconds taken), or `timeout`: (None, the last
    picture or None when none could be read, its verdict, the last read error)."""
    ops = ledger.snapshot()
    began = time.monotonic()
    picture: Picture | None = None
    judged = Verdict()
    error = ""
    while True:
        try:
            picture = cluster.read()
            judged = verdict(picture, ops)
            if judged.clean:
                return time.monotonic() - began, picture, judged, ""
        except (requests.RequestException, OSError, ValueError, RuntimeError) as exc:
            error = repr(exc)
        if time.monotonic() - began > timeout:
            return None, picture, judged, error
        time.sleep(0.2)
