"""A watch-fed, in-memory cache of the cluster's ZooKeeper tree.

The API and the controllers read from here, never from per-request ZooKeeper round trips. For
each znode below the root the cache keeps its *decoded* JSON document, its version (the base of
compare-and-set writes) and a children index, so a list read is a dict walk.

**The stream.** One persistent recursive watch on the root (`pvcd.state.tree_watch`) reports
every create, data change and delete below it. Its events, the answers to the cache's reads
and the answers to this process's writes arrive in one queue in the order ZooKeeper applied
them, and one thread (`cache-stream`) consumes it in that order:
- a create or a data change marks the path; at the end of the batch at hand the cache reads
  each marked path once (the answer holds the znode as of then, or NoNode);
- an answer is applied unless the cache holds a newer one (a greater mzxid) already;
- a delete removes the path at once: any read answered before it came before it.
Because the order is ZooKeeper's, the state built from the stream is the server's state at
some point of its history, never a mix, and a delete is final (no ghost of issue 12 can come
back: a late answer does not exist in this order).

**Resync.** A watch lives as long as its connection. After every (re)connection — and at
start — the cache adds the watch again and then walks the whole tree (read each znode; list
the children of those that have any): everything changed meanwhile is read again, and what
the walk did not find (and no event brought since it began) is removed. A walk that a lost
connection cut short is not trusted: the next connection's walk replaces it.

**Read-your-writes.** The store hands its writes' answers to the cache on kazoo's connection
thread, as they are read (`written`): the written documents are visible at once, before the
writer runs again, as an *overlay* over the stream's state. Since a write's own events come
before its answer, the stream has seen them by the time it reaches the write's marker; the
overlay is dropped once the reads those events caused are answered (the stream then holds the
write or something newer). A read lost with the connection keeps the overlay until the next
resync has read the path again.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    NoNodeError,
    SessionExpiredError,
    UnimplementedError,
)

from pvcd.domain.errors import BackendError
from pvcd.state.codec import decode_shared as decode
from pvcd.state.tree_watch import (
    DELETED,
    Answer,
    request_children,
    request_data,
    request_watch,
    tap,
)

log = logging.getLogger(__name__)

Listener = Callable[[str], None]
WALK_WINDOW = 1000  # reads a resync keeps in flight
# stream items: (kind, ...); answers are (kind, path, value, ok, epoch)
EVENT, READ, WALK_READ, WALK_LIST, WATCHED, WRITTEN, RESYNC, STOP = (
    "event", "read", "walk-read", "walk-list", "watched", "written", "resync", "stop")
CONNECTION_GONE = (ConnectionLoss, ConnectionClosedError, SessionExpiredError)


@dataclass(frozen=True, slots=True)
class Entry:
    doc: Any
    version: int
    mzxid: int | None  # None: this process's create, before the stream brought its stat
    czxid: int | None
    ephemeral_owner: int


@dataclass(slots=True)
class _Walk:
    epoch: int
    todo: deque[str]
    outstanding: int = 0
    seen: set[str] = field(default_factory=set)
    broken: bool = False  # a read was lost with the connection: the next walk replaces it


class StateCache:
    """The decoded tree below `root`; thread-safe for readers, fed by one stream thread."""

    def __init__(self, client: KazooClient, root: str) -> None:
        self._client = client
        self._root = root
        self._lock = threading.RLock()
        # what readers see: the stream's state with this process's unconfirmed writes on top
        self._entries: dict[str, Entry] = {}
        self._children: dict[str, set[str]] = {}
        self._sorted: dict[str, list[str]] = {}  # memo of sorted children, dropped on change
        self._overlay: dict[str, int] = {}  # path -> number of the write shown over the stream
        self._shadow: dict[str, Entry | None] = {}  # path -> the stream's state under it
        self._writes = 0
        self._listeners: list[Listener] = []
        self._ready = threading.Event()
        self._failure: Exception | None = None
        # the stream thread's own bookkeeping
        self._stream: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[str, int] = {}  # path -> reads asked and not answered yet
        self._dirty: set[str] = set()  # paths an event marked, to read at the batch's end
        self._waiting: dict[str, int] = {}  # path -> write whose overlay waits for reads
        self._lost: set[str] = set()  # paths whose read the connection lost
        self._held: dict[str, int] = {}  # overlays kept until the next resync
        self._epoch = 0
        self._walk: _Walk | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="cache-stream")
        self._thread.start()
        tap(self._client).add(self._root, self._on_event)
        self._client.add_listener(self._on_state)
        self._stream.put((RESYNC,))
        if not self._ready.wait(timeout):
            raise TimeoutError(f"state cache of {self._root} not initialised after {timeout}s")
        if self._failure is not None:
            raise self._failure

    def close(self) -> None:
        tap(self._client).remove(self._on_event)
        self._client.remove_listener(self._on_state)
        self._stream.put((STOP,))
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(path)` after every change of a cached path (from any thread; it must
        not block: it may run on kazoo's connection thread)."""
        with self._lock:  # copy on write: a notification in progress keeps its own list
            self._listeners = [*self._listeners, listener]

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling `listener`; a notification already in progress may still call it."""
        with self._lock:
            self._listeners = [other for other in self._listeners if other is not listener]

    # reads
    def get(self, path: str) -> Any:
        entry = self._entries.get(path)
        return None if entry is None else entry.doc

    def entry(self, path: str) -> Entry | None:
        return self._entries.get(path)

    def exists(self, path: str) -> bool:
        return path in self._entries

    def children(self, path: str) -> list[str]:
        """Sorted child names; the returned list is shared: do not modify it."""
        memo = self._sorted.get(path)
        if memo is not None:
            return memo
        with self._lock:
            memo = sorted(self._children.get(path, ()))
            self._sorted[path] = memo
            return memo

    def subtrees(self, paths: Iterable[str]) -> dict[str, Entry]:
        """Every cached znode below each of `paths` (not the paths themselves), by path, copied
        at one point: no change is applied while the copy is taken, so it is a state the cache
        did hold, never a mix of before and after a change (`pvcd.state.cluster_backup`)."""
        found: dict[str, Entry] = {}
        with self._lock:
            pending = list(paths)
            while pending:
                parent = pending.pop()
                for name in self._children.get(parent, ()):
                    child = f"{parent.rstrip('/')}/{name}"
                    entry = self._entries.get(child)
                    if entry is not None:
                        found[child] = entry
                    pending.append(child)
        return found

    # this process's writes
    def written(self, changes: Iterable[tuple[str, Entry | None]]) -> None:
        """Show a committed write of this process at once (None: deleted). Called on kazoo's
        connection thread as the write's answer is read (`pvcd.state.tree_watch.Hooked`), so
        every event of the write is in the stream before the marker put here."""
        marks = []
        shown = []
        with self._lock:
            for path, entry in changes:
                self._writes += 1
                if path not in self._overlay:
                    self._shadow[path] = self._entries.get(path)
                self._overlay[path] = self._writes
                marks.append((path, self._writes))
                if self._show(path, entry):
                    shown.append(path)
        self._stream.put((WRITTEN, marks))
        for path in shown:
            self._notify(path)

    # the stream's producers (kazoo's connection thread)
    def _on_event(self, kind: int, path: str) -> None:
        self._stream.put((EVENT, kind, path))

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:  # a new connection: the watch must be added again
            self._stream.put((RESYNC,))

    # the stream's consumer
    def _run(self) -> None:
        stream = self._stream
        while True:
            batch = [stream.get()]
            while True:
                try:
                    batch.append(stream.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                if item[0] == STOP:
                    return
                try:
                    self._handle(item)
                except Exception:  # one bad item must not stop the cache
                    log.exception("event=cache-stream-error item=%r", item[:3])
            for path in self._dirty:
                self._read(path, READ, self._epoch)
            self._dirty.clear()

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == EVENT:
            _, event, path = item
            if event == DELETED:
                self._dirty.discard(path)
                self._from_stream(path, None)
                self._settle(path)
            else:
                self._dirty.add(path)
        elif kind in (READ, WALK_READ):
            self._answered(*item)
        elif kind == WALK_LIST:
            self._listed(*item)
        elif kind == WRITTEN:
            for path, number in item[1]:
                self._waiting[path] = number
                self._settle(path)
        elif kind == RESYNC:
            self._resync()
        elif kind == WATCHED:
            _, path, value, ok, _epoch = item
            if not ok and isinstance(value, UnimplementedError):
                self._failure = BackendError(
                    "ZooKeeper refused a persistent recursive watch (addWatch): pvcd needs "
                    "ZooKeeper 3.6 or newer")
                log.critical("event=cache-watch-refused root=%s", path)
                self._ready.set()
            elif not ok:  # the connection went: its successor's resync adds it again
                log.warning("event=cache-watch-lost root=%s error=%r", path, value)

    def _read(self, path: str, kind: str, epoch: int) -> None:
        self._pending[path] = self._pending.get(path, 0) + 1
        try:
            request_data(self._client, Answer(self._stream, kind, path, epoch))
        except Exception as exc:  # (kazoo answers a closed client through the result)
            self._stream.put((kind, path, exc, False, epoch))

    def _answered(self, kind: str, path: str, value: Any, ok: bool, epoch: int) -> None:
        left = self._pending.get(path, 1) - 1
        if left > 0:
            self._pending[path] = left
        else:
            self._pending.pop(path, None)
        walk = self._walk
        mine = walk if walk is not None and kind == WALK_READ and epoch == walk.epoch else None
        if ok:
            raw, stat = value
            self._from_stream(path, (raw, stat))
            if walk is not None:
                walk.seen.add(path)
            if mine is not None and stat.numChildren:
                self._list(mine, path)
        elif isinstance(value, CONNECTION_GONE):  # the next connection's resync reads it
            self._lost.add(path)
            if mine is not None:
                mine.broken = True
        elif not isinstance(value, NoNodeError):
            log.warning("event=cache-read-failed path=%s error=%r", path, value)
        self._settle(path)
        if mine is not None:
            mine.outstanding -= 1
            self._pump(mine)

    def _from_stream(self, path: str, answer: tuple[bytes, Any] | None) -> None:
        """Apply what the stream says of `path`: its read answer, or None (deleted)."""
        entry: Entry | None = None
        if answer is not None:
            raw, stat = answer
            with self._lock:
                current = self._shadow.get(path) if path in self._overlay \
                    else self._entries.get(path)
                if current is not None and current.mzxid is not None and \
                        current.mzxid >= stat.mzxid:
                    return  # the cache holds this version (or a newer one) already
                shown = self._entries.get(path)
                if path in self._overlay and shown is not None and shown.mzxid == stat.mzxid:
                    entry = shown  # the echo of this process's own set: decoded already
            if entry is None:
                entry = Entry(decode(raw), stat.version, stat.mzxid, stat.czxid,
                              stat.ephemeralOwner)
        with self._lock:
            if path in self._overlay:
                self._shadow[path] = entry  # shown once the overlay goes
                return
            changed = self._show(path, entry)
        if changed:
            self._notify(path)

    def _settle(self, path: str) -> None:
        """Drop the overlay of `path` once the stream holds the write: its marker passed and
        every read since is answered."""
        if path not in self._waiting or self._pending.get(path) or path in self._dirty:
            return
        number = self._waiting.pop(path)
        if path in self._lost:  # a read was lost: the stream may miss the write until resync
            self._held[path] = number
        else:
            self._unshadow(path, number)

    def _unshadow(self, path: str, number: int) -> None:
        with self._lock:
            if self._overlay.get(path) != number:
                return  # a newer write of this process is shown: its own marker drops it
            del self._overlay[path]
            entry = self._shadow.pop(path, None)
            shown = self._entries.get(path)
            if entry is shown:
                return
            if entry is not None and shown is not None and entry.version == shown.version \
                    and entry.doc == shown.doc:
                # the stream brought the write itself: take its stat, tell no one
                self._entries[path] = Entry(shown.doc, entry.version, entry.mzxid,
                                            entry.czxid, entry.ephemeral_owner)
                return
            changed = self._show(path, entry)
        if changed:
            self._notify(path)

    # resync
    def _resync(self) -> None:
        self._epoch += 1
        walk = self._walk = _Walk(self._epoch, deque([self._root]))
        try:
            request_watch(self._client, Answer(self._stream, WATCHED, self._root, walk.epoch))
        except Exception as exc:
            self._stream.put((WATCHED, self._root, exc, False, walk.epoch))
        self._pump(walk)

    def _pump(self, walk: _Walk) -> None:
        while walk.todo and walk.outstanding < WALK_WINDOW:
            walk.outstanding += 1
            self._read(walk.todo.popleft(), WALK_READ, walk.epoch)
        if not walk.todo and walk.outstanding == 0 and walk is self._walk:
            self._walked(walk)

    def _list(self, walk: _Walk, path: str) -> None:
        walk.outstanding += 1
        try:
            request_children(self._client, Answer(self._stream, WALK_LIST, path, walk.epoch))
        except Exception as exc:
            self._stream.put((WALK_LIST, path, exc, False, walk.epoch))

    def _listed(self, kind: str, path: str, value: Any, ok: bool, epoch: int) -> None:
        walk = self._walk
        if walk is None or epoch != walk.epoch:
            return
        walk.outstanding -= 1
        if ok:
            walk.todo.extend(f"{path.rstrip('/')}/{name}" for name in value)
        elif isinstance(value, CONNECTION_GONE):
            walk.broken = True
        self._pump(walk)

    def _walked(self, walk: _Walk) -> None:
        self._walk = None
        if walk.broken:
            log.info("event=cache-resync-cut root=%s epoch=%d", self._root, walk.epoch)
            return
        with self._lock:  # what the stream holds: shown, or under an overlay
            known = [path for path in self._entries if path not in self._overlay]
            known += [path for path, entry in self._shadow.items() if entry is not None]
        for path in known:
            if path not in walk.seen:
                self._from_stream(path, None)  # gone while the watch was away
        self._lost.clear()
        for path, number in self._held.items():
            self._unshadow(path, number)
        self._held.clear()
        log.info("event=cache-resynced root=%s epoch=%d znodes=%d", self._root, walk.epoch,
                 len(walk.seen))
        self._ready.set()

    # the visible tree
    def _show(self, path: str, entry: Entry | None) -> bool:
        """Make `entry` what readers see at `path` (None: remove it and what is below);
        whether that changed anything. Called with the lock held."""
        if entry is None:
            if self._entries.pop(path, None) is None:
                return False
            parent, name = path.rsplit("/", 1)
            self._children.get(parent or "/", set()).discard(name)
            self._sorted.pop(parent or "/", None)
            self._sorted.pop(path, None)
            # children of a removed znode are gone too (ZooKeeper deletes leaves first, but
            # a delete of a parent by this process must not leave orphans behind)
            for child in list(self._children.pop(path, ())):
                self._entries.pop(f"{path}/{child}", None)
            return True
        if self._entries.get(path) is entry:
            return False
        self._entries[path] = entry
        if path != self._root:
            parent, name = path.rsplit("/", 1)
            siblings = self._children.setdefault(parent or "/", set())
            if name not in siblings:
                siblings.add(name)
                self._sorted.pop(parent or "/", None)
        return True

    def _notify(self, path: str) -> None:
        for listener in self._listeners:  # the list is replaced, never changed in place
            try:
                listener(path)
            except Exception:  # a listener must not break the cache
                log.exception("event=cache-listener-error path=%s", path)
