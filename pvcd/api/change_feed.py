"""The dashboard's live updates: cache changes coalesced into a few events per second.

The watch-fed cache (`pvcd.state.cache`) reports every changed path, on its watch thread. At
10,000 VMs a flush or a restore changes thousands of paths in a second; a browser must not get
one event each. `ChangeFeed` subscribes to the cache once for all its clients (only while it has
any) and only *marks* on the watch thread what changed: the kind of object and its key
(`classify`). On the API's event loop it then sends at most one event per `interval` seconds,
the same encoded bytes to every client (but for the followed kinds, below): the current
documents of the VMs and nodes that changed (rendered from the API's own cached fragments, so
the page needs no round trip), or, when more than `max_items` of a kind changed, only that the
kind must be reloaded; for the other kinds (networks, storage, tasks, the cluster, `health`)
only that they changed, which the page answers by reading the API. A node's health
(`nodes/<n>/health`) is part of its document: it is a `node` change as well as a `health` one.

The *followed* kinds (`log`: a node's log, `console`: a VM's console, keyed by node name and VM
uuid) change every second somewhere in a busy cluster, and a page shows one or two of them at a
time. They are sent only to the clients that follow them, and only for the keys followed
(`/events?follow=log:node1&follow=console:<uuid>`, `parse_follows`): the watch thread drops the
change of a log or console no client follows before it is even marked. A flush then encodes
the common part once and one event per distinct selection of followed keys.

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
from pvcd.domain.errors import InvalidValue
from pvcd.state.view import ClusterView

INTERVAL = 0.25  # seconds between two events at most: ≤ 4 events per second per client
MAX_ITEMS = 200  # changed objects of one kind sent in one event; more: "reload"
BUFFER = 32  # events queued for one client before it is dropped as too slow
RELOAD = "reload"
FOLLOWED_KINDS = ("log", "console")  # sent only to clients that follow them, by key
EVERY = "*"  # follow every key of a kind (`follow=log:*`)
MAX_FOLLOWS = 64  # keys one client may follow
MAX_KEY = 128

# kind → the keys followed (EVERY: all of them)
Follows = dict[str, frozenset[str]]

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


def parse_follows(values: list[str]) -> Follows:
    """The `follow` values of `/events` (`<kind>:<key>`, kind `log` or `console`, key a node's
    name, a VM's uuid or `*`) as `Follows`; InvalidValue says what is wrong and what is allowed."""
    if len(values) > MAX_FOLLOWS:
        raise InvalidValue(f"at most {MAX_FOLLOWS} follow values are allowed, not {len(values)}")
    follows: dict[str, set[str]] = {}
    for raw in values:
        kind, sep, key = raw.partition(":")
        if not sep or kind not in FOLLOWED_KINDS or not key or len(key) > MAX_KEY \
                or not key.isprintable() or "/" in key:
            raise InvalidValue(f"invalid follow '{raw[:MAX_KEY]}'; give <kind>:<key> with kind "
                               f"{' or '.join(FOLLOWED_KINDS)} and key a node's name (log), a "
                               f"VM's uuid (console) or {EVERY} (every one)")
        follows.setdefault(kind, set()).add(key)
    return {kind: frozenset(keys) for kind, keys in follows.items()}


@dataclass(eq=False)
class Subscriber:
    """One event-stream client: its queue of encoded events and how to end it."""

    on_drop: Callable[[], None]
    buffer: int = BUFFER
    follows: Follows = field(default_factory=dict)
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

    def selection(self, followed: dict[str, set[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """What of the changed followed kinds (kind → keys) this client follows."""
        chosen = []
        for kind, keys in sorted(followed.items()):
            mine = self.follows.get(kind, frozenset())
            picked = keys if EVERY in mine else keys & mine
            if picked:
                chosen.append((kind, tuple(sorted(picked))))
        return tuple(chosen)


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
        # followed kind → key → clients following it (read on the watch thread, under the lock)
        self._followed: dict[str, dict[str, int]] = {kind: {} for kind in FOLLOWED_KINDS}
        self.events_sent = 0  # events encoded (each sent to every client)

    # clients, on the loop
    def attach(self, on_drop: Callable[[], None], follows: Follows | None = None
               ) -> Subscriber:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # the first client, or the API runs again on a new loop (the primary role came
            # back): the old loop's clients and its scheduled flush died with it
            self._subscribers = []
            with self._lock:
                self._pending.clear()
                self._scheduled = False
                self._followed = {kind: {} for kind in FOLLOWED_KINDS}
            self._loop = loop
        if not self._listening:
            self.view.cache.subscribe(self._changed)
            self._listening = True
        subscriber = Subscriber(on_drop, self.buffer, follows or {})
        self._count_follows(subscriber, 1)
        self._subscribers.append(subscriber)
        return subscriber

    def detach(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
            self._count_follows(subscriber, -1)
        if not self._subscribers and self._listening:
            self.view.cache.unsubscribe(self._changed)
            self._listening = False
            with self._lock:
                self._pending.clear()

    def _count_follows(self, subscriber: Subscriber, step: int) -> None:
        with self._lock:
            for kind, keys in subscriber.follows.items():
                counts = self._followed[kind]
                for key in keys:
                    counts[key] = counts.get(key, 0) + step
                    if counts[key] <= 0:
                        del counts[key]

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
            if kind in FOLLOWED_KINDS:
                followed = self._followed[kind]
                if key is None or (key not in followed and EVERY not in followed):
                    return  # no client follows it: nothing to send
                keys = self._pending.setdefault(kind, set())
                if keys is not None:
                    keys.add(key)  # (unbounded, yet only the keys clients follow)
            else:
                self._mark(kind, key)
                if kind == "health" and key is not None:  # a node's health is in its document
                    self._mark("node", key)
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

    def _mark(self, kind: str, key: str | None) -> None:
        keys = self._pending.setdefault(kind, None if key is None else set())
        if keys is not None and key is not None and len(keys) <= self.max_items:
            keys.add(key)

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
        followed = {kind: keys for kind, keys in pending.items()
                    if kind in FOLLOWED_KINDS and keys}
        common = self.parts({kind: keys for kind, keys in pending.items()
                             if kind not in FOLLOWED_KINDS})
        events: dict[tuple[tuple[str, tuple[str, ...]], ...], bytes] = {}
        for subscriber in list(self._subscribers):
            selection = subscriber.selection(followed)
            if not common and not selection:
                continue
            event = events.get(selection)
            if event is None:
                event = events[selection] = self.encode(
                    common + [f"{json.dumps(kind)}:{json.dumps(keys)}"
                              for kind, keys in selection])
                self.events_sent += 1
            subscriber.offer(event)

    @staticmethod
    def encode(parts: list[str]) -> bytes:
        """One server-sent event `change` made of `parts` (members of its JSON object)."""
        return b"event: change\ndata: {" + ",".join(sorted(parts)).encode() + b"}\n\n"

    def parts(self, pending: dict[str, set[str] | None]) -> list[str]:
        """What is pending as the members of a `change` event: "vm": {uuid: doc or null} or
        "reload", "node": {...}, "<kind>": true (or its changed keys), ..."""
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
        return parts
