"""The chaos test's faults, on a schedule: node daemons SIGKILLed, the primary killed once,
ZooKeeper restarted once.

A killed daemon comes back as on a real node: systemd restarts it (`systemd/pvcd.service`:
Restart=on-failure, RestartSec=2s), which the harness plays (`Lab.start_node` 2 s after the
process is gone), unless the lab's fence (fencing "lab": the primary finds it dead, fences it
and powers it on again, recovering its VMs elsewhere meanwhile) has started it first. Without
the restart three kills in a row leave no node to fence the others, and the cluster is gone for
good (a lab artefact: no real cluster runs without systemd). `wait_all_running` is how the end
of a run waits for every node.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from pvcd.drivers.host import pid_alive, pids_where
from pvcd.lab.info import LabInfo
from pvcd.lab.lab import Lab
from pvcd.lab.zookeeper import server_doc


@dataclass
class FaultPlan:
    kill_every: float | None = None  # seconds between daemon SIGKILLs (None: none)
    kill_primary: bool = False  # once, at half time
    restart_zookeeper: bool = False  # once, at a third of the time
    fencing: str = "lab"  # the lab's fence driver: "lab" (power cycle) or "none"
    restart_after: float | None = 2.0  # systemd's RestartSec; None: no restart by "systemd"


@dataclass
class Event:
    at: float  # seconds since the load began
    what: str
    detail: str = ""


@dataclass
class Faults:
    lab: Lab
    nodes: list[str]
    plan: FaultPlan
    seconds: float
    seed: int = 0
    events: list[Event] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _began: float = 0.0

    def schedule(self) -> list[tuple[float, str]]:
        """(second, fault) pairs within the run; none in its last second."""
        plan: list[tuple[float, str]] = []
        if self.plan.kill_every:
            t = self.plan.kill_every
            while t < self.seconds - 1:
                plan.append((t, "kill"))
                t += self.plan.kill_every
        if self.plan.restart_zookeeper:
            plan.append((self.seconds / 3, "zookeeper"))
        if self.plan.kill_primary:
            plan.append((self.seconds / 2 + 0.5, "primary"))
        return sorted(plan)

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="chaos-faults", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)

    def _note(self, what: str, detail: str = "") -> None:
        self.events.append(Event(round(time.monotonic() - self._began, 2), what, detail))

    def _run(self) -> None:
        rng = random.Random(self.seed)
        for at, fault in self.schedule():
            if self._stop.wait(max(0.0, self._began + at - time.monotonic())):
                return
            for node in ready_flushed(self.lab):
                self._note("ready", node)
            try:
                if fault == "zookeeper":
                    self.restart_zookeeper()
                elif fault == "primary":
                    primary = self.primary()
                    if primary is None:
                        self._note("primary-kill-skipped", "no primary known")
                    else:
                        self.kill(primary, "kill-primary")
                else:
                    live = [n for n in self.nodes if pid_alive(self.pid(n))]
                    if live:
                        self.kill(rng.choice(live), "kill")
            except Exception as exc:  # a fault that could not be injected is reported
                self._note(f"{fault}-error", repr(exc))

    def pid(self, node: str) -> int:
        self.lab.refresh_pids()  # a lab fence starts a node under a new pid
        return _info(self.lab).node(node).pid

    def primary(self, timeout: float = 20.0) -> str | None:
        """The primary, once the API names one (a handover may be under way)."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                nodes: list[dict[str, Any]] = self.lab.api_get("/node", timeout=3)
                primary = next((n["name"] for n in nodes
                                if n.get("coordinator_state") == "primary"), None)
                if primary is not None:
                    return primary
            except (OSError, ValueError):
                pass
            self._stop.wait(0.2)
        return None

    def kill(self, node: str, what: str) -> None:
        pid = self.pid(node)
        self.lab.signal_node(node, signal.SIGKILL)
        self._note(what, f"{node} pid {pid}")
        if self.plan.restart_after is None or not self.lab.wait_node_exit(node):
            return
        self._stop.wait(self.plan.restart_after)  # at the end of the run: at once
        if self.pid(node) == pid:  # the fence has not powered it on meanwhile
            self.lab.start_node(node)
            self._note("systemd-restart", f"{node} pid {self.pid(node)}")

    def restart_zookeeper(self) -> None:
        ensemble = self.lab.zookeeper
        if ensemble is None:
            raise RuntimeError("the lab's ZooKeeper was not started by this process")
        server = ensemble.servers[0]
        ensemble.kill(server)
        self._note("zookeeper-kill", f"pid {server.pid}")
        ensemble.start_server(server)
        ensemble.wait_ready(60)
        info = _info(self.lab)
        info.zookeeper_servers = [server_doc(s) for s in ensemble.servers]
        self.lab.save()
        self._note("zookeeper-up", f"pid {server.pid}")


def wait_all_running(lab: Lab, nodes: list[str], timeout: float) -> float | None:
    """Seconds until every node's daemon runs and the API answers with a primary; None when
    that did not happen within `timeout`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            lab.refresh_pids()
            answer = {n["name"]: n for n in lab.api_get("/node", timeout=3)}
            if all(pid_alive(_info(lab).node(n).pid) for n in nodes) and \
                    all(answer.get(n, {}).get("daemon_state") == "run" for n in nodes) and \
                    any(n.get("coordinator_state") == "primary" for n in answer.values()):
                return time.monotonic() - began
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    return None


def ready_flushed(lab: Lab) -> list[str]:
    """As an operator does once a fenced node is back (it rejoins flushed, docs/ha.md): `ready`
    every running node that is flushed; the nodes readied. Without it a few kills leave every
    node flushed and the cluster refuses every define and migration."""
    readied = []
    try:
        for node in lab.api_get("/node", timeout=3):
            if node.get("daemon_state") == "run" and node.get("domain_state") == "flushed":
                info = _info(lab)
                response = requests.post(f"{info.api}/node/{node['name']}/domain-state",
                                         data={"domain-state": "ready"},
                                         headers={"X-Api-Key": info.token}, timeout=5)
                if response.status_code == 200:
                    readied.append(str(node["name"]))
    except (OSError, ValueError, requests.RequestException):
        pass  # the API is moving: the next tick tries again
    return readied


def duplicate_daemons(lab: Lab, nodes: list[str]) -> list[str]:
    """Nodes with more than one daemon process (a fence and a restart that crossed)."""
    found = []
    for node in nodes:
        config = _info(lab).node(node).config
        pids = pids_where(lambda argv, c=config: c in argv and "pvcd.lab.node" in argv)
        if len(pids) > 1:
            found.append(f"{node}: daemons {sorted(pids)}")
    return found


def _info(lab: Lab) -> LabInfo:
    return lab.info or lab.load()
