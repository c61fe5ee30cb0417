"""One ordered stream of a ZooKeeper subtree's changes: a persistent recursive watch (3.6+).

kazoo 2.11 has no `addWatch`, so this module adds the request (opcode 106, mode
PERSISTENT_RECURSIVE) and taps kazoo's connection thread for the events it brings. One watch
on the cluster's root reports every create, data change and delete below it, one event per
znode: unlike kazoo's `TreeCache`, which re-lists every child of `vms/` on each create (10,000
names at 10,000 VMs) and holds a tree node, a stat and a copy of the bytes per znode.

Why a stream and not callbacks: ZooKeeper sends a session's watch events and the answers to
its requests in one order, the order in which the server applied them. kazoo hands events to
one thread and answers to another, so their order is lost there (the ghost VMs of issue 12
were that race). Here both are put, on kazoo's connection thread as it reads them, into one
queue: the watch events of the tapped roots (`EventTap`) and the answers to requests made
with an `Answer` (reads of the cache, writes of the store). The consumer of the queue
(`pvcd.state.cache.StateCache`) therefore sees exactly what the server did, in its order: a
read answered before a delete comes before that delete's event, a write's own events come
before its answer.

A watch is tied to its connection: after a reconnect (same session or a new one) it is gone
and must be added again, and what changed meanwhile is read again (the consumer's resync).
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections import namedtuple
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.protocol.paths import _prefix_root
from kazoo.protocol.serialization import GetChildren, GetData, Watch, int_struct, write_string

log = logging.getLogger(__name__)

CREATED, DELETED, CHANGED = 1, 2, 3  # ZooKeeper's event types (NodeChildrenChanged: not ours)
PERSISTENT_RECURSIVE = 1


class AddWatch(namedtuple("AddWatch", "path mode")):
    """ZooKeeper 3.6's `addWatch` request (its answer has no body)."""

    type = 106

    def serialize(self) -> bytearray:
        data = bytearray()
        data.extend(write_string(self.path))
        data.extend(int_struct.pack(self.mode))
        return data

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> bool:
        return True


Sink = Callable[[int, str], None]


class EventTap:
    """Installed once per client: gives each tapped root's events to its sink on kazoo's
    connection thread, in the order read, then lets kazoo handle the event as before (its own
    one-shot watchers of the same paths still fire)."""

    def __init__(self, client: KazooClient) -> None:
        self._client = client
        self._sinks: tuple[tuple[str, Sink], ...] = ()  # (chrooted root/, sink), replaced
        connection = client._connection
        self._kazoo_read = connection._read_watch_event
        connection._read_watch_event = self._read

    def add(self, root: str, sink: Sink) -> None:
        chrooted = _prefix_root(self._client.chroot, root).rstrip("/") + "/"
        self._sinks = (*self._sinks, (chrooted, sink))

    def remove(self, sink: Sink) -> None:
        self._sinks = tuple(pair for pair in self._sinks if pair[1] != sink)

    def _read(self, buffer: bytes, offset: int) -> None:
        try:
            watch, _ = Watch.deserialize(buffer, offset)
            if watch.type in (CREATED, DELETED, CHANGED):
                below = watch.path + "/"
                for root, sink in self._sinks:  # (one per cache: a handful at most)
                    if below.startswith(root):
                        sink(watch.type, self._client.unchroot(watch.path))
        except Exception:  # never break kazoo's connection thread
            log.exception("event=tree-watch-tap-error")
        self._kazoo_read(buffer, offset)


_TAPS: weakref.WeakKeyDictionary[KazooClient, EventTap] = weakref.WeakKeyDictionary()
_TAPS_LOCK = threading.Lock()


def tap(client: KazooClient) -> EventTap:
    with _TAPS_LOCK:
        found = _TAPS.get(client)
        if found is None:
            found = _TAPS[client] = EventTap(client)
        return found


class Answer:
    """Puts a request's answer into the stream on kazoo's connection thread, as it is read:
    `(kind, path, value, ok, epoch)`; `ok` False with the exception as value."""

    __slots__ = ("epoch", "kind", "path", "stream")

    def __init__(self, stream: queue.SimpleQueue[Any], kind: str, path: str,
                 epoch: int) -> None:
        self.stream = stream
        self.kind = kind
        self.path = path
        self.epoch = epoch

    def set(self, value: Any = None) -> None:
        self.stream.put((self.kind, self.path, value, True, self.epoch))

    def set_exception(self, exception: BaseException) -> None:
        self.stream.put((self.kind, self.path, exception, False, self.epoch))


def request_data(client: KazooClient, answer: Answer) -> None:
    client._call(GetData(_prefix_root(client.chroot, answer.path), None), answer)


def request_children(client: KazooClient, answer: Answer) -> None:
    client._call(GetChildren(_prefix_root(client.chroot, answer.path), None), answer)


def request_watch(client: KazooClient, answer: Answer) -> None:
    client._call(AddWatch(_prefix_root(client.chroot, answer.path), PERSISTENT_RECURSIVE),
                 answer)


class Hooked:
    """A kazoo async result whose answer first goes through `hook` on the connection thread
    (the store's writes: the cache applies them before anyone waiting on the result runs)."""

    __slots__ = ("hook", "result")

    def __init__(self, result: Any, hook: Callable[[Any], None]) -> None:
        self.result = result
        self.hook = hook

    def set(self, value: Any = None) -> None:
        try:
            self.hook(value)
        except Exception:  # never break kazoo's connection thread
            log.exception("event=tree-watch-write-hook-error")
        self.result.set(value)

    def set_exception(self, exception: BaseException) -> None:
        self.result.set_exception(exception)
