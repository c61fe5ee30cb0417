"""The double-run sampler: asks every node's own libvirt (the lab agent), not ZooKeeper, what runs.

A sweep asks each node twice in a row (pass 1: every node, in parallel; pass 2: the same
again). The answers of one pass are not one instant, so a VM that migrates from A to B between
the ask of A and the ask of B shows on both in *one* pass without ever running twice; that is
only a `suspect`. A VM seen running on the same two nodes in *both* passes ran on both at once
(else it would have moved A→B→A→B within a few milliseconds): a double-run. Consecutive
sweeps that see the same VM double-running are one episode, with its first and last sighting.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pvcd.lab.lab import Lab


@dataclass
class Episode:
    uuid: str
    nodes: tuple[str, ...]
    first: float  # time.monotonic() of the first sweep that saw it
    last: float
    sweeps: int = 1

    @property
    def seconds(self) -> float:
        return self.last - self.first


@dataclass
class DoubleRunSampler:
    lab: Lab
    nodes: list[str]
    interval: float = 0.2
    sweeps: int = 0
    suspects: int = 0  # seen twice in one pass only
    max_gap: float = 0.0  # the longest time between two sweep starts
    episodes: list[Episode] = field(default_factory=list)
    _open: dict[str, Episode] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pool: ThreadPoolExecutor = field(init=False)
    _gaps: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(len(self.nodes), thread_name_prefix="chaos-ask")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown()

    def gap_percentile(self, fraction: float) -> float:
        """The time between two sweep starts that `fraction` of the gaps do not exceed."""
        gaps = sorted(self._gaps)
        return gaps[min(len(gaps) - 1, int(len(gaps) * fraction))] if gaps else 0.0

    def _run(self) -> None:
        previous: float | None = None
        while not self._stop.is_set():
            began = time.monotonic()
            if previous is not None:
                self._gaps.append(began - previous)
                self.max_gap = max(self.max_gap, began - previous)
            previous = began
            self.sweep()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))
        self.close_episodes()

    def close_episodes(self) -> None:
        """End the episodes still open (the last sweep saw them)."""
        self.episodes.extend(self._open.values())
        self._open.clear()

    def running(self) -> dict[str, set[str]]:
        """One pass: VM UUID → the nodes whose libvirt runs it (a dead node answers nothing)."""
        found: dict[str, set[str]] = {}
        for node, domains in zip(self.nodes, self._pool.map(self._ask, self.nodes),
                                 strict=True):
            for uuid, domain in domains.items():
                if domain.get("state") == "running":
                    found.setdefault(uuid, set()).add(node)
        return found

    def _ask(self, node: str) -> dict[str, dict[str, str]]:
        try:
            return self.lab.domains(node)
        except (OSError, RuntimeError, ValueError, KeyError):
            return {}

    def sweep(self) -> None:
        first, second = self.running(), self.running()
        now = time.monotonic()
        self.sweeps += 1
        double: dict[str, tuple[str, ...]] = {}
        for uuid in first.keys() | second.keys():
            both = first.get(uuid, set()) & second.get(uuid, set())
            if len(both) >= 2:
                double[uuid] = tuple(sorted(both))
            elif len(first.get(uuid, ())) >= 2 or len(second.get(uuid, ())) >= 2:
                self.suspects += 1
        for uuid in list(self._open):
            if uuid not in double:
                self.episodes.append(self._open.pop(uuid))
        for uuid, nodes in double.items():
            episode = self._open.get(uuid)
            if episode is None:
                self._open[uuid] = Episode(uuid, nodes, now, now)
            else:
                episode.last, episode.sweeps = now, episode.sweeps + 1
