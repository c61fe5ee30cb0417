"""A watch-fed, in-memory cache of the cluster's ZooKeeper tree.

The API and the controllers read from here, never from per-request ZooKeeper round trips.
kazoo's `TreeCache` keeps the raw tree in step with ZooKeeper (ordered watch notifications,
re-sync after reconnect). On top of it this cache keeps each znode's *decoded* JSON document,
its version (for compare-and-set writes) and a children index, so a list read is a dict walk.

Read-your-writes: the store applies its own successful writes here at once (`apply_*`), so an
API client that writes and then reads sees its write even if the watch event is a millisecond
late. Races between a local apply and a late watch event are settled per path by the znode's
mzxid (never go backwards) and by a tombstone of a deleted incarnation (its czxid), so a stale
event can neither resurrect a deleted znode nor roll a document back.

One incarnation has no czxid to bury: a znode this process created and deleted before any
watch event told us its stat (a transaction's create answers with the path only; a define and
an undefine 60 ms apart do this). Its late NODE_ADDED cannot be told from a new znode of the
same path by the event alone, so a delete of such an entry leaves an *unverified* tombstone:
every later event for the path is checked against ZooKeeper itself (an async read) and
applied only if the znode exists there — a ghost is never applied, a real re-create (by anyone)
is. A delete is therefore final whatever order the events arrive in. Likewise a NODE_REMOVED
removes only the incarnation it names (its czxid): the late removal of an older incarnation
never takes away a newer one (checked against ZooKeeper when ours is a create of our own whose
stat we do not know yet).

kazoo's TreeCache has a race of its own: a tree node's `get` answer is handled in the cache's
background thread, its DELETED watch on kazoo's event thread. When the deletion is handled first
(the answer still queued), a node not yet live is removed without an event, and the late answer
then publishes NODE_ADDED of a znode that is gone (a live one: NODE_REMOVED, then that
NODE_ADDED); no removal follows (the ghost VMs of issue 12, replayed in
tests/integration/test_state.py). So an ADDED or UPDATED event is applied only while kazoo's
tree still holds that incarnation of the path (`_in_tree`); when it does not, the deletion
has already been seen.

Last, the watch itself can stay silent: kazoo's TreeCache fetches a new child after it sees the
parent's children change, and a znode created and deleted again before that fetch is reported
neither as added nor as removed. What this process wrote itself would then stay here for good
(the ghost VMs of issue 12: defined here, removed by its node at once). Every local write the
watch has not reported within a second is therefore checked against ZooKeeper
(`confirm_local_writes`) and removed if it is gone there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import ZnodeStat
from kazoo.recipe.cache import NodeData, TreeCache, TreeEvent

from pvcd.state.codec import decode_shared as decode

log = logging.getLogger(__name__)

Listener = Callable[[str], None]
CONFIRM_AFTER = 1.0  # seconds after which a local write the watch never reported is checked


@dataclass(frozen=True, slots=True)
class Entry:
    doc: Any
    version: int
    mzxid: int | None  # None: applied locally after a create, before the watch confirmed it
    czxid: int | None
    ephemeral_owner: int


class StateCache:
    """The decoded tree below `root`; thread-safe for readers and the single watch thread."""

    def __init__(self, client: KazooClient, root: str) -> None:
        self._client = client
        self._root = root
        self._lock = threading.RLock()
        self._entries: dict[str, Entry] = {}
        self._children: dict[str, set[str]] = {}
        self._sorted: dict[str, list[str]] = {}  # memo of sorted children, dropped on change
        self._tombstones: dict[str, int] = {}
        self._unverified: set[str] = set()  # deleted here before we learned their czxid
        # written here (created or set) and not reported by the watch since: path -> when
        self._unconfirmed: dict[str, float] = {}
        self._closing = threading.Event()
        self._confirmer: threading.Thread | None = None
        self._listeners: list[Listener] = []
        self._ready = threading.Event()
        self._tree: TreeCache | None = None

    # lifecycle
    def start(self, timeout: float = 30.0) -> None:
        self._tree = TreeCache(self._client, self._root)
        self._tree.listen(self._on_tree_event)
        self._tree.listen_fault(lambda exc: log.error("event=cache-fault error=%r", exc))
        self._tree.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"state cache of {self._root} not initialised after {timeout}s")
        self._closing.clear()
        self._confirmer = threading.Thread(target=self._confirm_loop, daemon=True,
                                           name="cache-confirm")
        self._confirmer.start()

    def close(self) -> None:
        self._closing.set()
        if self._tree is not None:
            self._tree.close()
            self._tree = None

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(path)` after every change of a cached path (from any thread)."""
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
        at one point: no watch event or local write is applied while the copy is taken, so it
        is a state the cache did hold, never a mix of before and after a change (a backup of
        the cluster's state, `pvcd.state.cluster_backup`)."""
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

    # local applies from the store after a committed write
    def apply_set(self, path: str, doc: Any, stat: ZnodeStat) -> None:
        with self._lock:
            current = self._entries.get(path)
            if current is None or current.mzxid is None or current.mzxid < stat.mzxid:
                self._unconfirmed[path] = time.monotonic()  # (else the watch was faster)
        self._apply(path, doc, stat.version, stat.mzxid, stat.czxid, stat.ephemeralOwner)

    def apply_create(self, path: str, doc: Any, ephemeral_owner: int = 0) -> None:
        with self._lock:
            if path in self._entries:
                return  # the watch was faster and carries the exact stat
            self._tombstones.pop(path, None)
            self._unverified.discard(path)
            self._unconfirmed[path] = time.monotonic()
            self._store(path, Entry(doc, 0, None, None, ephemeral_owner))
        self._notify(path)

    def apply_delete(self, path: str) -> None:
        with self._lock:
            self._unconfirmed.pop(path, None)
        self._remove(path)

    # watch side
    def _on_tree_event(self, event: TreeEvent) -> None:
        kind = event.event_type
        if kind == TreeEvent.INITIALIZED:
            self._ready.set()
            return
        if event.event_data is None:  # a connection state (suspended, reconnected, lost)
            return
        path = event.event_data.path
        if kind in (TreeEvent.NODE_ADDED, TreeEvent.NODE_UPDATED) and \
                not self._in_tree(path, event.event_data.stat.czxid):
            # reported after kazoo saw it deleted (the module docstring): not applied, and
            # what we hold of it is checked against ZooKeeper (kazoo may never report more)
            with self._lock:
                if path not in self._entries:
                    return
                since = self._unconfirmed.setdefault(path, time.monotonic())
            self._confirm(path, since)
            return
        with self._lock:  # the watch knows this path: it will report what happens to it
            self._unconfirmed.pop(path, None)
        if kind in (TreeEvent.NODE_ADDED, TreeEvent.NODE_UPDATED):
            data = event.event_data
            stat = data.stat
            self._apply(data.path, decode(data.data), stat.version, stat.mzxid, stat.czxid,
                        stat.ephemeralOwner)
            self._drop_raw(data)
        elif kind == TreeEvent.NODE_REMOVED:
            data = event.event_data
            stat = getattr(data, "stat", None)
            self._removed(data.path, stat.czxid if stat is not None else None)

    def _drop_raw(self, data: NodeData) -> None:
        """Let kazoo's tree forget the bytes of a znode once decoded here: it keeps them only
        to hand them to us (it compares versions by stat), and they were a second copy of
        every document (about a third of the memory at 10,000 VMs). Runs on the tree's
        background thread, the one that replaces a node's data, so a newer version is never
        overwritten; the stat stays (`_in_tree`, and removals name their incarnation)."""
        tree = self._tree
        if tree is None or data.data is None:
            return
        try:
            node = tree._find_node(data.path)
        except ValueError:  # (outside the tree: not ours)
            return
        if node is not None and node._data is data:
            node._data = NodeData.make(data.path, None, data.stat)

    def _in_tree(self, path: str, czxid: int) -> bool:
        """Whether kazoo's tree still holds incarnation `czxid` of `path`. An event of one it
        no longer holds is a late one: its deletion has been seen, and reported already or
        never to be (True without a tree: events replayed by a test)."""
        tree = self._tree
        if tree is None:
            return True
        try:
            node = tree.get_data(path)
        except (KeyError, ValueError):  # removed while we walked to it
            return False
        return node is not None and node.stat is not None and node.stat.czxid == czxid

    def _removed(self, path: str, czxid: int | None) -> None:
        """A watch says the incarnation `czxid` of `path` was deleted: remove our entry only
        if it is that incarnation (a path deleted and created again quickly may report the old
        one's removal after the new one's creation)."""
        with self._lock:
            entry = self._entries.get(path)
            if entry is not None and czxid is not None and entry.czxid != czxid:
                if entry.czxid is not None:
                    return  # the removal of an older incarnation: ours is newer
                self._unverified.add(path)  # our own create, stat unknown: ask ZooKeeper
                self._verify(path, missing=lambda: self._remove(path))
                return
        self._remove(path)

    def _apply(self, path: str, doc: Any, version: int, mzxid: int, czxid: int,
               owner: int) -> None:
        with self._lock:
            if self._tombstones.get(path) == czxid:
                return  # a late event of an incarnation we already saw deleted
            if path in self._unverified:
                self._verify(path)  # maybe the ghost of a create we deleted: ask ZooKeeper
                return
            current = self._entries.get(path)
            if current is not None and current.mzxid is not None and current.mzxid > mzxid:
                return  # never roll a document back
            self._tombstones.pop(path, None)
            self._store(path, Entry(doc, version, mzxid, czxid, owner))
        self._notify(path)

    def _store(self, path: str, entry: Entry) -> None:
        self._entries[path] = entry
        if path != self._root:
            parent, name = path.rsplit("/", 1)
            siblings = self._children.setdefault(parent or "/", set())
            if name not in siblings:
                siblings.add(name)
                self._sorted.pop(parent or "/", None)

    def _remove(self, path: str) -> None:
        with self._lock:
            entry = self._entries.pop(path, None)
            if entry is None:
                return
            if entry.czxid is not None:
                self._tombstones[path] = entry.czxid
            else:
                self._unverified.add(path)
            parent, name = path.rsplit("/", 1)
            self._children.get(parent or "/", set()).discard(name)
            self._sorted.pop(parent or "/", None)
            self._sorted.pop(path, None)
            # children of a removed znode are gone too (ZooKeeper deletes leaves first, but
            # a local apply of a parent delete must not leave orphans behind)
            for child in list(self._children.pop(path, ())):
                self._entries.pop(f"{path}/{child}", None)
        self._notify(path)

    def _verify(self, path: str, missing: Callable[[], None] | None = None) -> None:
        """Apply `path` as ZooKeeper has it now, if it exists there (see the module docstring);
        else call `missing`."""

        def done(result: Any) -> None:
            try:
                raw, stat = result.get()
            except NoNodeError:
                if missing is not None:
                    with self._lock:
                        self._unverified.discard(path)
                    missing()
                return  # (without `missing`: the ghost of a deleted create, nothing to apply)
            except Exception as exc:  # connection trouble: the next event or resync retries
                log.warning("event=cache-verify-failed path=%s error=%r", path, exc)
                return
            with self._lock:
                if path not in self._unverified:
                    return  # settled meanwhile (our own create, or an earlier verify)
                self._unverified.discard(path)
            self._apply(path, decode(raw), stat.version, stat.mzxid, stat.czxid,
                        stat.ephemeralOwner)

        self._client.get_async(path).rawlink(done)

    def _confirm_loop(self) -> None:
        while not self._closing.wait(CONFIRM_AFTER / 2):
            self.confirm_local_writes()

    def confirm_local_writes(self, older_than: float = CONFIRM_AFTER) -> None:
        """Check against ZooKeeper the paths written here that the watch has not reported
        since (older than `older_than` seconds): a znode created and deleted again before the
        TreeCache fetched it is never reported at all, neither its creation nor its removal."""
        now = time.monotonic()
        with self._lock:
            due = [(path, since) for path, since in self._unconfirmed.items()
                   if now - since >= older_than]
        for path, since in due:
            self._confirm(path, since)

    def _confirm(self, path: str, since: float) -> None:
        def done(result: Any) -> None:
            try:
                raw, stat = result.get()
            except NoNodeError:
                with self._lock:
                    if self._unconfirmed.get(path) != since:
                        return  # written (or reported) again meanwhile
                    del self._unconfirmed[path]
                self._remove(path)  # deleted elsewhere, and the watch never said so
                return
            except Exception as exc:  # connection trouble: looked at again next round
                log.warning("event=cache-confirm-failed path=%s error=%r", path, exc)
                return
            with self._lock:
                if self._unconfirmed.get(path) == since:
                    del self._unconfirmed[path]
            self._apply(path, decode(raw), stat.version, stat.mzxid, stat.czxid,
                        stat.ephemeralOwner)

        self._client.get_async(path).rawlink(done)

    def _notify(self, path: str) -> None:
        for listener in self._listeners:  # the list is replaced, never changed in place
            try:
                listener(path)
            except Exception:  # a listener must not break the cache
                log.exception("event=cache-listener-error path=%s", path)
