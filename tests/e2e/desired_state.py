"""The oracle for "a refused request changes nothing": snapshots of the cluster's desired state.

Desired state is what the API writes (docs/zookeeper-layout.md): node specs, VM specs and
their name index, networks with their static leases, ACLs and description index, API
sessions, the maintenance flag, a coordinator handover, the provisioner's objects (templates,
userdata, OVAs, profiles), and storage requests (the API's only way to reach Ceph).
Everything the daemons write on their own is left out, or every snapshot would differ:
`status`, `alive` and `owner` children, DHCP leases, fence records, the primary lock, and the
storage mirrors (pools, volumes, snapshots, OSDs: what Ceph confirmed, refreshed by the
primary). A storage request counts by its existence: its executor writes progress and result
into it after the API answered.

A snapshot is every desired-state document's path with its `mzxid` (ZooKeeper's own record of
the last write, so rewriting identical bytes is a change too), read in three pipelined rounds
of asynchronous reads (lists, then documents, then the networks' leases and ACLs): ≈ 10 ms.
Each read leaves watches, and `DesiredState.current()` reads again only once one fired (a
`sync` is the barrier), so a call that changed nothing costs one round trip (≈ 1 ms).

Concurrency, the reason for `RefusalGuard.before`: the daemons do change desired state on
their own, but only to carry out an earlier request: a flush or ready moves VMs (their specs),
a removed VM's node deletes its spec and name and creates the requests that remove its disks,
the new primary deletes a handover. So before each call the guard waits until none of that is
pending (every node's domain request settled, no VM being removed, no storage request pending
or running, no handover): from then on nothing but the one request in flight (the fuzzer runs
one worker) can write desired state, so any change seen across a refused call is that call's.
If the cluster does not get quiet in time the call is still made, and a change across it is
reported as `unattributable` instead of a violation (counted, never silently passed).

One change is not a violation: a storage request the call created and its executor then
refused for the cluster's state or Ceph's (`BACKEND_REFUSALS`: "cannot remove osd.0: only 1
other OSD is up"). The API validates everything it can before writing the request; what only
the executor can judge is carried out and answered 510 with the executor's message, and the
failed request stays as the record (`failed-in-backend`, counted and listed by the test).

Not watched: the requests schemathesis' own checks send without the hooks (their auth probes,
the content-type controls). A watch-and-barrier bug would show as a missed change: the fast
test (tests/fast/test_fuzz_oracle.py) reads through `current()` from a session of its own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import Callback, WatchedEvent

from pvcd.domain.provisioner import KINDS as PROVISIONER_KINDS
from pvcd.domain.records import NodeSpec, NodeStatus, from_dict
from pvcd.domain.settled import node_domain_settled
from pvcd.state.schema import Paths

FINISHED_REQUEST_STATES = ("done", "failed")  # final: `StorageRequest.finished_state`
# How an executor refuses a request the API had to pass on: the cluster's state (an OSD that
# cannot go yet) or Ceph itself. InvalidValue and NotFound are the API's to find before writing.
BACKEND_REFUSALS = ("Conflict", "BackendError")


@dataclass(frozen=True)
class Snapshot:
    versions: dict[str, int]  # desired-state path → mzxid (storage requests: 0)
    busy: tuple[str, ...] = ()  # background work pending that writes desired state


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """What differs, in words: `created <path>`, `changed <path>`, `deleted <path>`."""
    found = [f"created {p}" for p in after.versions.keys() - before.versions.keys()]
    found += [f"deleted {p}" for p in before.versions.keys() - after.versions.keys()]
    found += [f"changed {p}" for p in before.versions.keys() & after.versions.keys()
              if before.versions[p] != after.versions[p]]
    return sorted(found)


@dataclass
class _Round:
    """One round of pipelined reads, each leaving a watch (`watch`): submit them all, then
    wait for each."""
    client: KazooClient
    watch: Callable[[WatchedEvent], None] | None
    pending: list[tuple[str, str, Any]] = field(default_factory=list)

    def children(self, path: str) -> None:
        self.pending.append(("children", path, self.client.get_children_async(
            path, watch=self.watch, include_data=True)))

    def get(self, path: str, watch: bool = True) -> None:
        self.pending.append(("get", path, self.client.get_async(
            path, watch=self.watch if watch else None)))

    def exists(self, path: str) -> None:
        self.pending.append(("exists", path, self.client.exists_async(path, watch=self.watch)))

    def results(self) -> Iterable[tuple[str, str, Any]]:
        for kind, path, result in self.pending:
            try:
                found = result.get()
            except NoNodeError:
                continue  # gone between the list and the read: absent
            if found is not None:
                yield kind, path, found


class DesiredState:
    """Snapshots of one cluster's desired state (`paths`) read through `client` (a client with
    the cluster's credentials: the tree is readable by nobody else).

    `current()` reads ZooKeeper again only when something may have changed: every read leaves
    a watch on each list and document it read (not on node status, which changes with every
    keepalive and is only read to judge a flush), and `_barrier` makes sure every watch a change
    made before the call would fire has fired. Between changes a snapshot costs one round trip.
    """

    def __init__(self, client: KazooClient, paths: Paths, barrier_timeout: float = 10.0
                 ) -> None:
        self.client, self.paths, self.barrier_timeout = client, paths, barrier_timeout
        self._finished: set[str] = set()  # storage requests seen done or failed (final)
        self._dirty = True
        self._last: Snapshot | None = None
        client.add_listener(self._on_connection)

    def current(self) -> Snapshot:
        """Desired state as of now; read again only when a watch fired since the last read (or
        the last one was busy: node status carries no watch)."""
        self._barrier()
        if self._dirty or self._last is None or self._last.busy:
            self._dirty = False  # (before the read: a change during it fires a new watch)
            self._last = self.read()
        return self._last

    def _changed(self, event: WatchedEvent | None = None) -> None:
        self._dirty = True

    def _on_connection(self, state: str) -> None:
        self._dirty = True  # (a new session has none of our watches)

    def _barrier(self) -> None:
        """Once this returns, every change committed before it was called has run our watch
        callback: `sync` has the server catch up with the leader, which sends the change's
        notification before the sync's answer on this session's ordered stream; kazoo runs watch
        callbacks in order on one thread, so a marker queued behind them runs after them."""
        self.client.sync(self.paths.root)
        ran = threading.Event()
        self.client.handler.dispatch_callback(Callback("watch", ran.set, ()))
        if not ran.wait(self.barrier_timeout):
            raise TimeoutError("kazoo's callback thread did not run a marker")

    def read(self) -> Snapshot:
        p = self.paths
        versions: dict[str, int] = {}
        busy: list[str] = []
        lists, docs, leaves = (_Round(self.client, self._changed) for _ in range(3))
        for path in (p.nodes, p.vms, p.vm_names, p.networks, p.network_names, p.sessions,
                     p.cluster, p.storage_requests,
                     *(p.provisioner_kind(kind) for kind in PROVISIONER_KINDS)):
            lists.children(path)
        lists.exists(p.schema_version)
        lists.exists(p.handover)
        for kind, path, result in lists.results():  # round 1: the lists
            if kind == "exists":
                versions[path] = result.mzxid
                if path == p.handover:
                    busy.append("a coordinator handover is pending")
                continue
            for name in result[0]:
                child = f"{path}/{name}"
                if path == p.storage_requests and name in self._finished:
                    versions[child] = 0
                    continue
                docs.get(child)
                if path == p.nodes:
                    docs.get(p.node_status(name), watch=False)
                elif path == p.networks:
                    for container in p.network_containers(name):
                        if container != p.network_leases(name):
                            docs.children(container)
        nodes: dict[str, tuple[Any, Any]] = {}
        for kind, path, result in docs.results():  # round 2: the documents
            if kind == "children":
                versions[path] = result[1].mzxid
                if not path.endswith("/acl"):  # (its children are the two directions)
                    for name in result[0]:
                        leaves.get(f"{path}/{name}")
                continue
            raw, stat = result
            doc = _json(raw)
            parent, name = path.rsplit("/", 1)
            if parent == p.storage_requests:
                versions[path] = 0
                busy += self._storage_request(name, doc)
            elif name == "status" and parent.startswith(p.nodes + "/"):
                node = parent.rsplit("/", 1)[1]
                nodes[node] = (nodes.get(node, (None, None))[0], doc)
            else:
                versions[path] = stat.mzxid
                if parent == p.nodes:
                    nodes[name] = (doc, nodes.get(name, (None, None))[1])
                elif parent == p.vms and isinstance(doc, dict) and doc.get("remove"):
                    busy.append(f"VM {doc.get('name')} is being removed")
        for _, path, (_, stat) in leaves.results():  # round 3: static leases and ACLs
            versions[path] = stat.mzxid
        busy += _unsettled_nodes(nodes)
        return Snapshot(versions, tuple(busy))

    def failed_in_backend(self, change: str) -> bool:
        """`change` created a storage request that its executor then refused (a
        `BACKEND_REFUSALS` error): the record of a request carried out, not the write of a
        refused one (the API answers 510 with the executor's message and keeps the record at
        /storage/ceph/request/<id>)."""
        kind, _, path = change.partition(" ")
        if kind != "created" or path.rsplit("/", 1)[0] != self.paths.storage_requests:
            return False
        try:
            doc = _json(self.client.get(path)[0])
        except NoNodeError:
            return False
        return isinstance(doc, dict) and doc.get("state") == "failed" and \
            doc.get("error") in BACKEND_REFUSALS

    def _storage_request(self, request_id: str, doc: Any) -> list[str]:
        """A storage request counts by its existence (its executor writes into it later);
        one that is not finished yet is background work."""
        state = doc.get("state") if isinstance(doc, dict) else None
        if state in FINISHED_REQUEST_STATES:
            self._finished.add(request_id)
            return []
        return [f"storage request {request_id} is {state}"]


def _unsettled_nodes(nodes: dict[str, tuple[Any, Any]]) -> list[str]:
    """The nodes whose flush or ready is still moving VMs (spec, status documents)."""
    busy = []
    for name, (spec, status) in sorted(nodes.items()):
        if spec is None or status is None:
            continue  # (a node registering: its spec and status come together)
        verdict = node_domain_settled(from_dict(NodeSpec, spec), from_dict(NodeStatus, status))
        if not verdict.settled:
            busy.append(f"node {name}: {verdict.seen}")
    return busy


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode()) if raw else None
    except (UnicodeDecodeError, ValueError):
        return None


def refused(status: int) -> bool:
    """Any answer but success: a 4xx, the API's 510, or (a crash, failed on its own) a 5xx."""
    return status >= 400


@dataclass(frozen=True)
class Verdict:
    kind: str  # accepted | unchanged | violation | unattributable | failed-in-backend
    changes: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()


class RefusalGuard:
    """Wraps one call at a time: `before()` right before it is sent, `after(status)` once its
    answer is in."""

    def __init__(self, state: DesiredState, quiet_timeout: float = 30.0,
                 poll_interval: float = 0.05,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.state, self.quiet_timeout, self.poll_interval = state, quiet_timeout, poll_interval
        self.clock, self.sleep = clock, sleep
        self._before: Snapshot | None = None

    def before(self) -> tuple[float, tuple[str, ...]]:
        """Wait until no background work can write desired state, then take the snapshot;
        return how long the wait took (s) and what the cluster was busy with at first."""
        start = self.clock()
        snapshot = self.state.current()
        first = snapshot.busy
        while snapshot.busy and self.clock() < start + self.quiet_timeout:
            self.sleep(self.poll_interval)
            snapshot = self.state.current()
        self._before = snapshot
        return self.clock() - start, first

    def after(self, status: int) -> Verdict:
        before, self._before = self._before, None
        if not refused(status):
            return Verdict("accepted")
        if before is None:
            raise RuntimeError("RefusalGuard.after without before")
        found = tuple(changes(before, self.state.current()))
        if not found:
            return Verdict("unchanged")
        if before.busy:
            return Verdict("unattributable", found, before.busy)
        if all(self.state.failed_in_backend(change) for change in found):
            return Verdict("failed-in-backend", found)
        return Verdict("violation", found)
