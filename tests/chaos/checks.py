"""The chaos test's end checks: what the cluster holds once the faults have stopped, compared
with the ledger of acknowledged requests and with what every node's libvirt runs.

Three sources, read independently: the API (`GET /vm`), ZooKeeper (read directly with kazoo at
the lab's root, not through any pvcd code that could share a bug) and each node's libvirt (the
lab agent). `Cluster.read` takes one picture of all three; `verdict` judges a picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests
from kazoo.exceptions import NoNodeError

from pvcd.lab.lab import Lab
from pvcd.state.codec import decode
from tests.chaos.load import Op

SETTLED_STATES = ("start", "stop", "shutdown", "disable", "failed")


@dataclass
class Picture:
    api: dict[str, dict[str, Any]]  # uuid → the API's VM object
    specs: dict[str, dict[str, Any]]  # uuid → the spec document in ZooKeeper
    statuses: dict[str, dict[str, Any]]  # uuid → its status document
    domains: dict[str, dict[str, dict[str, str]]]  # node → uuid → libvirt domain

    def running_on(self, uuid: str) -> list[str]:
        return sorted(n for n, d in self.domains.items()
                      if d.get(uuid, {}).get("state") == "running")

    def defined_on(self, uuid: str) -> list[str]:
        return sorted(n for n, d in self.domains.items() if uuid in d)


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)  # acknowledged define, never deleted, gone
    lost_modify: list[str] = field(default_factory=list)  # last acked memory not what is kept
    ghosts: list[str] = field(default_factory=list)  # acknowledged delete, still somewhere
    orphans: list[str] = field(default_factory=list)  # in a libvirt, unknown to ZooKeeper
    mismatch: list[str] = field(default_factory=list)  # API list ≠ ZooKeeper
    stuck: list[str] = field(default_factory=list)  # not at its desired state

    @property
    def clean(self) -> bool:
        return not (self.lost or self.lost_modify or self.ghosts or self.orphans
                    or self.mismatch or self.stuck)

    def lines(self) -> list[str]:
        return [f"{name}: {item}" for name in ("lost", "lost_modify", "ghosts", "orphans",
                                               "mismatch", "stuck")
                for item in getattr(self, name)]


class Cluster:
    """Reads a lab's VMs from its three sources."""

    def __init__(self, lab: Lab, nodes: list[str]) -> None:
        info = lab.info or lab.load()
        self.lab = lab
        self.nodes = nodes
        self.root = info.zk_root.rstrip("/")
        self.api = info.api
        self.session = requests.Session()
        self.session.headers["X-Api-Key"] = info.token
        self.zk = info.zookeeper_client(timeout=10)
        self.zk.start(timeout=30)

    def close(self) -> None:
        self.zk.stop()
        self.zk.close()

    def read(self) -> Picture:
        response = self.session.get(f"{self.api}/vm", timeout=10)
        response.raise_for_status()
        api = {v["uuid"]: v for v in response.json()}
        specs: dict[str, dict[str, Any]] = {}
        statuses: dict[str, dict[str, Any]] = {}
        for uuid in self.zk.get_children(f"{self.root}/vms"):
            try:
                raw, _ = self.zk.get(f"{self.root}/vms/{uuid}")
            except NoNodeError:
                continue
            specs[uuid] = decode(raw) or {}
            try:
                raw, _ = self.zk.get(f"{self.root}/vms/{uuid}/status")
                statuses[uuid] = decode(raw) or {}
            except NoNodeError:
                pass
        domains = {node: self.lab.domains(node) for node in self.nodes}
        return Picture(api, specs, statuses, domains)


def expectations(ops: list[Op]) -> tuple[set[str], set[str], dict[str, int]]:
    """From the ledger: UUIDs that must exist (an acknowledged define, and no delete of it ever
    sent), UUIDs that must be gone (an acknowledged delete), and the memory each must-exist VM
    must hold when its last memory write is known (acknowledged, and not overlapped by another
    write whose outcome is unknown or that ended later)."""
    defined = {o.uuid for o in ops if o.kind == "define" and o.acked and o.uuid}
    delete_sent = {o.uuid for o in ops if o.kind == "delete" and o.uuid}
    deleted = {o.uuid for o in ops if o.kind == "delete" and o.acked and o.uuid}
    present = defined - delete_sent
    memory: dict[str, int] = {}
    for uuid in present:
        writes = [o for o in ops if o.uuid == uuid and o.kind in ("define", "modify")
                  and (o.acked or o.uncertain)]
        # the last write: not followed by another one that began after it was answered
        last = [w for w in writes if not any(v.sent > w.answered for v in writes)]
        values = {w.memory for w in last}
        if last and all(w.acked for w in last) and len(values) == 1:
            memory[uuid] = int(values.pop() or 0)
    return present, deleted, memory


def verdict(picture: Picture, ops: list[Op]) -> Verdict:
    present, deleted, memory = expectations(ops)
    result = Verdict()
    for uuid in sorted(present):
        if uuid not in picture.specs or uuid not in picture.api:
            result.lost.append(f"{uuid} (in ZooKeeper: {uuid in picture.specs}, in the API: "
                               f"{uuid in picture.api})")
        elif uuid in memory and picture.specs[uuid].get("memory") != memory[uuid]:
            result.lost_modify.append(f"{uuid} memory {picture.specs[uuid].get('memory')}, "
                                      f"last acknowledged {memory[uuid]}")
    for uuid in sorted(deleted):
        where = [*(["api"] if uuid in picture.api else []),
                 *(["zookeeper"] if uuid in picture.specs else []),
                 *(f"libvirt:{n}" for n in picture.defined_on(uuid))]
        if where:
            name = (picture.api.get(uuid) or picture.specs.get(uuid) or {}).get("name")
            result.ghosts.append(f"{uuid} ({name}) acknowledged deleted, still in {where}; "
                                 f"{history(ops, uuid)}")
    for node, domains in picture.domains.items():
        for uuid, domain in domains.items():
            if uuid not in picture.specs and uuid not in deleted:
                result.orphans.append(f"{uuid} ({domain.get('name')}) {domain.get('state')} on "
                                      f"{node}, not in ZooKeeper")
    for uuid in sorted(picture.api.keys() ^ picture.specs.keys()):
        result.mismatch.append(f"{uuid} in the API: {uuid in picture.api}, in ZooKeeper: "
                               f"{uuid in picture.specs}; {history(ops, uuid)}")
    for uuid, spec in sorted(picture.specs.items()):
        problem = _not_settled(picture, uuid, spec)
        if problem:
            result.stuck.append(problem)
    return result


def history(ops: list[Op], uuid: str, last: int = 4) -> str:
    """The last requests about `uuid`: kind, status, send time and duration (ms, relative to
    the first request of the run)."""
    if not ops:
        return "no requests"
    zero = min(o.sent for o in ops)
    about = sorted((o for o in ops if o.uuid == uuid), key=lambda o: o.sent)[-last:]
    return "requests: " + ", ".join(
        f"{o.kind} {o.status or 'no answer'} at {(o.sent - zero) * 1000:.0f}"
        f"+{(o.answered - o.sent) * 1000:.0f} ms" for o in about) if about else "no requests"


def _not_settled(picture: Picture, uuid: str, spec: dict[str, Any]) -> str | None:
    running = picture.running_on(uuid)
    api_state = picture.api.get(uuid, {}).get("state")
    wanted = [spec.get("node")] if spec.get("state") == "start" else []
    if running == wanted and (api_state is None or api_state in SETTLED_STATES) and \
            not spec.get("remove"):
        return None
    return (f"{uuid} ({spec.get('name')}): wants {spec.get('state')} on {spec.get('node')}, "
            f"runs on {running}, API state {api_state}, migration {spec.get('migration')}, "
            f"remove {spec.get('remove')}, status {picture.statuses.get(uuid)}")
