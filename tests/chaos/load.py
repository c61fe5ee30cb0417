"""The chaos test's clients: N threads of mixed VM operations, and the ledger of what each got.

Every request is one `Op` in the `Ledger`: what was asked, on which VM (by UUID, so an
acknowledgement names one incarnation of a VM for good: UUIDs are random per define and never
come back), when it was sent and answered, and the answer. The end checks reason only from the
ledger: an acknowledged define whose UUID no client ever tried to delete must still be there; an
acknowledged delete must be gone everywhere. A connection error or timeout is an *uncertain*
outcome (the primary may be moving): counted, never a failure, and never taken as proof.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from pvcd.lab.guest import tiny_guest_xml

# (kind, weight): reads, lifecycle requests, moves, definition changes
MIX: tuple[tuple[str, int], ...] = (
    ("list", 12), ("get", 10), ("start", 10), ("stop", 7), ("shutdown", 6), ("restart", 7),
    ("migrate", 8), ("migrate-to", 8), ("modify", 10), ("delete", 8), ("define", 14),
    ("flash", 4),  # a define and, once acknowledged, at once a delete of that VM
)
MEMORIES = tuple(range(32, 96))  # MiB: a write's memory tells which write the VM kept
REQUEST_TIMEOUT = 10.0
# DELETE waits for the VM's node to take it down (up to a minute while that node is dead)
DELETE_TIMEOUT = 20.0
UUID_IN_MESSAGE = re.compile(r"\(([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\)")


@dataclass
class Op:
    client: int
    kind: str
    target: str  # a VM name (define), a UUID (everything else), or "" (list)
    sent: float  # time.monotonic()
    answered: float
    status: int | None  # None: connection error or timeout (outcome unknown)
    message: str = ""
    uuid: str | None = None  # the VM this op is about (a define: the UUID it got)
    memory: int | None = None  # define, modify: the memory it writes

    @property
    def acked(self) -> bool:
        return self.status == 200

    @property
    def failure(self) -> bool:
        """A server error: anything ≥ 500 except 510, pvcd's refusal."""
        return self.status is not None and self.status >= 500 and self.status != 510

    @property
    def uncertain(self) -> bool:
        """The write may or may not have happened."""
        return self.status is None or self.failure


@dataclass
class Ledger:
    ops: list[Op] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def snapshot(self) -> list[Op]:
        with self.lock:
            return list(self.ops)

    def by_status(self) -> Counter[str]:
        return Counter("conn" if o.status is None else str(o.status) for o in self.snapshot())

    def refusals(self) -> Counter[str]:
        """510 answers by kind and the start of their message (what the API refused, and why)."""
        return Counter(f"{o.kind}: {_gist(o.message)}" for o in self.snapshot()
                       if o.status == 510)


def _gist(message: str) -> str:
    """A refusal's message without the names and UUIDs in it, to group refusals."""
    text = re.sub(r"'[^']*'", "'…'", message)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<uuid>", text)
    return re.sub(r"node\d+", "nodeN", text)[:90]


class Client(threading.Thread):
    """One API client with its own HTTP session: random operations from MIX until `stop`."""

    def __init__(self, index: int, api: str, token: str, names: list[str], nodes: list[str],
                 ledger: Ledger, stop: threading.Event, seed: int) -> None:
        super().__init__(name=f"chaos-client-{index}", daemon=True)
        self.index = index
        self.api = api
        self.names = names
        self.nodes = nodes
        self.ledger = ledger
        self.stop_event = stop
        self.rng = random.Random(seed)
        self.session = requests.Session()
        self.session.headers["X-Api-Key"] = token
        self.known: dict[str, str] = {}  # uuid → name, from this client's last list

    def run(self) -> None:
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        self.list_vms()
        while not self.stop_event.is_set():
            kind = self.rng.choices(kinds, weights)[0]
            if kind == "list":
                self.list_vms()
            elif kind == "define":
                self.define()
            elif kind == "flash":
                uuid = self.define()
                if uuid is not None:
                    self.on_vm("delete", uuid)
            elif not self.known:
                self.list_vms()
            else:
                self.on_vm(kind, self.rng.choice(sorted(self.known)))

    def request(self, kind: str, target: str, method: str, path: str,
                uuid: str | None = None, memory: int | None = None,
                timeout: float = REQUEST_TIMEOUT, **kwargs: object) -> Op:
        sent = time.monotonic()
        try:
            response = self.session.request(method, self.api + path, timeout=timeout,
                                            **kwargs)  # type: ignore[arg-type]
            status: int | None = response.status_code
            message = _message(response)
        except requests.RequestException as exc:
            status, message = None, type(exc).__name__
            response = None
        op = Op(self.index, kind, target, sent, time.monotonic(), status, message, uuid, memory)
        self.ledger.add(op)
        if status is None:  # the API is moving with the primary: not a hot loop meanwhile
            self.stop_event.wait(0.1)
        return op

    def list_vms(self) -> None:
        sent = time.monotonic()
        try:
            response = self.session.get(self.api + "/vm", timeout=REQUEST_TIMEOUT)
            status: int | None = response.status_code
            if status == 200:
                self.known = {v["uuid"]: v["name"] for v in response.json()}
            message = "" if status == 200 else _message(response)
        except (requests.RequestException, ValueError) as exc:
            status, message = None, type(exc).__name__
        self.ledger.add(Op(self.index, "list", "", sent, time.monotonic(), status, message))
        if status is None:
            self.stop_event.wait(0.1)

    def define(self) -> str | None:
        """Define a VM of a free name; its UUID when acknowledged."""
        taken = set(self.known.values())
        free = [n for n in self.names if n not in taken]
        name = self.rng.choice(free or self.names)
        memory = self.rng.choice(MEMORIES)
        data = {"xml": tiny_guest_xml(name, memory_mib=memory)}
        if self.rng.random() < 0.3:
            data["node"] = self.rng.choice(self.nodes)
        op = self.request("define", name, "POST", "/vm", memory=memory, data=data)
        if op.acked:
            found = UUID_IN_MESSAGE.search(op.message)
            op.uuid = found.group(1) if found else None
            if op.uuid:
                self.known[op.uuid] = name
        return op.uuid

    def on_vm(self, kind: str, uuid: str) -> None:
        if kind == "get":
            self.request(kind, uuid, "GET", f"/vm/{uuid}", uuid=uuid)
        elif kind in ("start", "stop", "shutdown", "restart"):
            self.request(kind, uuid, "POST", f"/vm/{uuid}/state", uuid=uuid,
                         data={"state": kind})
        elif kind in ("migrate", "migrate-to"):
            data = {"action": "migrate", "force": ""}
            if kind == "migrate-to":
                data["node"] = self.rng.choice(self.nodes)
            op = self.request(kind, uuid, "POST", f"/vm/{uuid}/node", uuid=uuid, data=data)
            if op.acked and self.rng.random() < 0.3:  # a second one right after the first
                self.request(kind, uuid, "POST", f"/vm/{uuid}/node", uuid=uuid, data=data)
        elif kind == "modify":
            memory = self.rng.choice(MEMORIES)
            data = {"xml": tiny_guest_xml(self.known[uuid], memory_mib=memory)}
            if self.rng.random() < 0.3:
                data["restart"] = ""
            self.request(kind, uuid, "PUT", f"/vm/{uuid}", uuid=uuid, memory=memory, data=data)
        elif kind == "delete":
            op = self.request(kind, uuid, "DELETE", f"/vm/{uuid}", uuid=uuid,
                              timeout=DELETE_TIMEOUT)
            if op.acked:
                self.known.pop(uuid, None)
        else:
            raise ValueError(f"unknown operation {kind!r}")


def _message(response: requests.Response) -> str:
    try:
        doc = response.json()
    except ValueError:
        return response.text[:200]
    return str(doc.get("message", "")) if isinstance(doc, dict) else ""
