"""The dashboard's live updates: cache changes coalesced into a few events per second.

The watch-fed cache (`pvcd.state.cache`) reports every changed path, on its watch thread. At
10,000 VMs a flush or a restore changes thousands of paths in a second; a browser must not get
one event each. `ChangeFeed` subscribes to the cache once for all its clients (only while it has
any) and only *marks* on the watch thread what changed: the kind of object and its key
(`classify`). On the API's event loop it then sends at most one event per `interval` seconds,
the same encoded bytes to every client: the current documents of the VMs and nodes that changed
(rendered from the API's own cached fragments, so the page needs no round trip), or, when more
than `max_items` of a kind changed, only that the kind must be reloaded; for the other kinds
(networks, storage, tasks, the cluster, and the hooks `health` and `console`) only that they
changed, which the page answers by reading the API.

Each client has a bounded queue (`buffer` events). A client that does not read its socket fills
its queue and is dropped (`Subscriber.on_drop` closes its connection); the loop never waits for
it. The page's `EventSource` reconnects by itself, and reloads everything when it does.

Races named: (1) a change marked while a flush runs is not lost: the flush swaps the pending set
out under the lock first, and a mark after the swap schedules the next flush. (2) The loop is
closed (the API stopped on a handover) while the watch thread marks: the mark finds the loop
closed and does nothing. (3) `pvcd.api.dashboard` makes one feed per application, i.e. per run
of the API; a feed attached from a new loop all the same (a run after a handover away and back)
forgets the clients and the scheduled flush of the old one, whose coroutines never ran to
`detach`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pvcd.api.render import FragmentRenderer
from pvcd.state.view import ClusterView

INTERVAL = 0.25  # seconds between two events at most: ≤ 4 events per second per client
MAX_ITEMS = 200  # changed objects of one kind sent in one event; more: "reload"
BUFFER = 32  # events queued for one client before it is dropped as too slow
RELOAD = "reload"

# the first path segment below the root → the kind the page knows it by; the `vm` and `node`
# kinds carry the object's key (the second segment), the others only say "changed"
_KINDS = {"vms": "vm", "nodes": "node", "networks": "network", "storage": "storage",
          "tasks": "task", "coordinator": "cluster", "cluster": "cluster", "faults": "health",
          "fencing": "cluster", "logs": "log"}
# a child of an object that is a kind of its own (extension panels plug in here)
_CHILD_KINDS = {("vms", "console"): "console", ("nodes", "health"): "health"}


def classify(relative: str) -> tuple[str, str | None] | None:
    """The kind and key of a changed path relative to the cluster's root (`vms/<uuid>/status`
    → ("vm", uuid)); None for what the page does not show (sessions, the name indexes)."""
    parts = relative.split("/")
    kind = _KINDS.get(parts[0])
    if kind is None:
        return None
    if len(parts) >= 3 and (parts[0], parts[2]) in _CHILD_KINDS:
        return _CHILD_KINDS[(parts[0], parts[2])], parts[1]
    if kind in ("vm", "node", "log"):  # logs/<node>: that node's log
        return (kind, parts[1]) if len(parts) >= 2 else None
    return kind, None


@dataclass(eq=False)
class Subscriber:
    """One event-stream client: its queue of encoded events and how to end it."""

    on_drop: Callable[[], None]
    buffer: int = BUFFER
    queue: deque[bytes] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: bool = False

    def offer(self, event: bytes) -> None:
        if self.dropped:
            return
        if len(self.queue) >= self.buffer:
            self.dropped = True
            self.queue.clear()
            self.ready.set()
            self.on_drop()
            return
        self.queue.append(event)
        self.ready.set()


class ChangeFeed:
    def __init__(self, view: ClusterView, vm_list: FragmentRenderer,
                 node_list: FragmentRenderer, interval: float = INTERVAL,
                 max_items: int = MAX_ITEMS, buffer: int = BUFFER) -> None:
        self.view = view
        self.vm_list = vm_list
        self.node_list = node_list
        self.interval = interval
        self.max_items = max_items
        self.buffer = buffer
        self._prefix = view.paths.root.rstrip("/") + "/"
        self._lock = threading.Lock()
        self._pending: dict[str, set[str] | None] = {}  # kind → keys (None: keyless kind)
        self._scheduled = False
        self._subscribers: list[Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listening = False  # subscribed to the cache (while it has clients)
        self.events_sent = 0  # events encoded (each sent to every client)

    # clients, on the loop
    def attach(self, on_drop: Callable[[], None]) -> Subscriber:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # the first client, or the API runs again on a new loop (the primary role came
            # back): the old loop's clients and its scheduled flush died with it
            self._subscribers = []
            with self._lock:
                self._pending.clear()
                self._scheduled = False
            self._loop = loop
        if not self._listening:
            self.view.cache.subscribe(self._changed)
            self._listening = True
        subscriber = Subscriber(on_drop, self.buffer)
        self._subscribers.append(subscriber)
        return subscriber

    def detach(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
        if not self._subscribers and self._listening:
            self.view.cache.unsubscribe(self._changed)
            self._listening = False
            with self._lock:
                self._pending.clear()

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    # the cache's watch thread (or a store callback): mark only
    def _changed(self, path: str) -> None:
        if not path.startswith(self._prefix):
            return
        found = classify(path[len(self._prefix):])
        if found is None:
            return
        kind, key = found
        with self._lock:
            keys = self._pending.setdefault(kind, None if key is None else set())
            if keys is not None and key is not None and len(keys) <= self.max_items:
                keys.add(key)
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._schedule)
        except RuntimeError:  # closed meanwhile: no client is left to tell
            pass

    # the loop
    def _schedule(self) -> None:
        assert self._loop is not None
        self._loop.call_later(self.interval, self._flush)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._scheduled = False
        if not pending or not self._subscribers:
            return
        event = self.encode(pending)
        self.events_sent += 1
        for subscriber in list(self._subscribers):
            subscriber.offer(event)

    def encode(self, pending: dict[str, set[str] | None]) -> bytes:
        """One server-sent event `change` for what is pending: {"vm": {uuid: doc or null} or
        "reload", "node": {...}, "<kind>": true, ...}."""
        parts = []
        for kind, keys in sorted(pending.items()):
            renderer = {"vm": self.vm_list, "node": self.node_list}.get(kind)
            if renderer is None or keys is None:
                value = "true" if keys is None else json.dumps(sorted(keys))
            elif len(keys) > self.max_items:
                value = json.dumps(RELOAD)
            else:
                value = "{" + ",".join(
                    f"{json.dumps(key)}:{(renderer.fragment(key) or b'null').decode()}"
                    for key in sorted(keys)) + "}"
            parts.append(f"{json.dumps(kind)}:{value}")
        return b"event: change\ndata: {" + ",".join(parts).encode() + b"}\n\n"
