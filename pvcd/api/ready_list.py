"""A list endpoint's answer kept as ready-made bytes: rebuilt after a change, not per request.

`GET /vm` at 10,000 VMs is about 30 MB of JSON. Built per request (every VM's cached fragment
checked, the list filtered and joined, Tornado's SHA-1 ETag over the body, the body copied
behind the headers) it took about 100 ms of the event loop, and concurrent clients queued
behind each other. Here a request normally only picks bytes that already exist:

- The cache's change notifications (`StateCache.subscribe`, on whatever thread applied the
  change) only count the changes of the listed objects and mark their keys; nothing is built
  then, so a burst of writes costs nothing here.
- A request finds the last `Answer` current when no change was counted since it was built
  (and, when a row depends on the clock, within the same second); else it builds a new one,
  re-rendering only the marked keys and reusing every other row.
- Read-your-writes: the store applies a committed write to the cache, which notifies, before
  the API answers the write; a list requested after that answer sees the change counted and
  is rebuilt with it.
- The ETag names this list instance and the version of its rows, counted up by a build that
  found them changed (no hash of the body): equal tags mean the same bytes, so `If-None-Match`
  is answered 304 without touching the body. A build that finds every row as it was (a watch
  event confirming a local write) keeps the answer and its tag.
- A filtered list (a "variant") is built once per answer and kept with it, as is its gzip
  copy, which is compressed off the event loop (zlib releases the GIL: it runs beside it).

Races named: (1) a change counted while a build runs is not lost: the count and the marks are
taken under the lock before the build reads the cache, so a later change makes the next
request build again (the build may already show it: it is never older than its count). (2) A
row's facts and fragment are read a moment apart: a change in between is counted after the
marks were taken, so that row is rebuilt by the next request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import secrets
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pvcd.api.render import FragmentRenderer, json_list
from pvcd.state.cache import StateCache

F = TypeVar("F")
Keep = Callable[[F], bool]

GZIP_LEVEL = 1  # a list of VMs compresses ~25:1 already; higher levels cost 2-3x the time
INLINE_GZIP = 64 * 1024  # smaller bodies are compressed on the loop (less than a thread hop)
MAX_VARIANTS = 32  # filtered lists kept per answer; more are built per request
MAX_MARKED = 4096  # changed keys remembered; more: the next build re-checks every row


@dataclass(frozen=True)
class Row(Generic[F]):
    key: str
    facts: F  # what the list's filters look at
    fragment: bytes
    clocked: bool  # its fragment changes with the clock (once a second)


class Answer(Generic[F]):
    """The list as one build found it: its rows in order and the bodies made of them. `tag`
    changes whenever the rows do."""

    def __init__(self, tag: str, rows: list[Row[F]],
                 executor: Callable[[], concurrent.futures.Executor]) -> None:
        self.rows = rows
        self.by_key = {row.key: row for row in rows}
        self.clocked = any(row.clocked for row in rows)
        # the change count (and, for clocked rows, the second) it was last found current at
        self.changes = -1
        self.second: int | None = None
        self._tag = tag
        self._bodies: dict[Hashable, bytes] = {}
        self._gzipped: dict[Hashable, concurrent.futures.Future[bytes]] = {}
        self._executor = executor

    def same_rows(self, rows: list[Row[F]]) -> bool:
        return len(rows) == len(self.rows) and \
            all(a is b or a == b for a, b in zip(rows, self.rows, strict=True))

    def etag(self, variant: Hashable = None, gzipped: bool = False) -> str:
        """A strong ETag of the variant's body (another one for its gzip copy)."""
        suffix = "" if variant is None else f"-{hash(variant) & 0xFFFFFFFF:08x}"
        return f'"{self._tag}{suffix}{"-gzip" if gzipped else ""}"'

    def body(self, variant: Hashable = None, keep: Keep[F] | None = None) -> bytes:
        """The JSON list of the rows `keep` selects (all without it); `variant` names that
        selection (the same variant must always select the same way)."""
        body = self._bodies.get(variant)
        if body is None:
            rows = self.rows if keep is None else [row for row in self.rows if keep(row.facts)]
            body = json_list(row.fragment for row in rows)
            if len(self._bodies) < MAX_VARIANTS:
                self._bodies[variant] = body
        return body

    async def gzipped(self, variant: Hashable, body: bytes) -> bytes:
        """The gzip copy of `body` (the variant's), made once; big ones off the loop."""
        future = self._gzipped.get(variant)
        if future is None:
            if len(body) < INLINE_GZIP:
                return gzip.compress(body, GZIP_LEVEL, mtime=0)
            future = self._executor().submit(gzip.compress, body, GZIP_LEVEL, mtime=0)
            if len(self._gzipped) < MAX_VARIANTS:
                self._gzipped[variant] = future
        return await asyncio.wrap_future(future)


class ReadyList(Generic[F]):
    """The current `Answer` of one list endpoint. `keys()`: the listed keys in order;
    `key_of(path)`: the key a changed cache path belongs to (None: not listed);
    `facts(key)`: what the filters look at (None: not listed now); `clocked(key)`: whether
    the key's fragment changes with the second. Used from the API's event loop only (the
    change notifications come from any thread)."""

    def __init__(self, cache: StateCache, renderer: FragmentRenderer,
                 keys: Callable[[], Sequence[str]], key_of: Callable[[str], str | None],
                 facts: Callable[[str], F | None], clocked: Callable[[str], bool],
                 clock: Callable[[], float]) -> None:
        self._cache = cache
        self._renderer = renderer
        self._keys = keys
        self._key_of = key_of
        self._facts = facts
        self._clocked = clocked
        self._clock = clock
        self._instance = secrets.token_hex(4)  # a new daemon never repeats an old tag
        self._lock = threading.Lock()
        self._changes = 0
        self._version = 0  # of the rows: the ETag's number
        self._marked: set[str] = set()
        self._everything = True  # every row to be checked: nothing was marked yet
        self._subscribed = False
        self._answer: Answer[F] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.builds = 0  # answers built (a test and the metrics can tell builds from reuse)

    def executor(self) -> concurrent.futures.Executor:
        """Where big bodies are compressed: one thread, started on first use."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="api-gzip")
        return self._executor

    def _changed(self, path: str) -> None:  # any thread
        key = self._key_of(path)
        if key is None:
            return
        with self._lock:
            self._changes += 1
            if len(self._marked) < MAX_MARKED:
                self._marked.add(key)
            else:
                self._everything = True

    def current(self) -> Answer[F]:
        """The answer as of now: the last one if nothing changed since, else a new one."""
        if not self._subscribed:  # from the first request on (a daemon that never serves
            self._cache.subscribe(self._changed)  # the API counts nothing)
            self._subscribed = True
        answer = self._answer
        if answer is not None and answer.changes == self._changes and \
                answer.second == (int(self._clock()) if answer.clocked else None):
            return answer
        with self._lock:
            changes, marked, everything = self._changes, self._marked, self._everything
            self._marked, self._everything = set(), False
        try:
            self._answer = answer = self._build(changes, marked, everything, answer)
        except BaseException:
            with self._lock:  # the next request builds these rows again
                self._marked |= marked
                self._everything |= everything
            raise
        return answer

    def _build(self, changes: int, marked: set[str], everything: bool,
               last: Answer[F] | None) -> Answer[F]:
        self.builds += 1
        reuse = {} if last is None or everything else last.by_key
        refresh_clocked = last is not None and last.clocked
        rows = []
        for key in self._keys():
            row = reuse.get(key)
            if row is None or key in marked or (refresh_clocked and row.clocked):
                row = self._row(key)
            if row is not None:
                rows.append(row)
        if last is not None and last.same_rows(rows):
            answer = last  # (a watch event confirming a local write changes nothing shown)
        else:
            self._version += 1
            answer = Answer(f"{self._instance}-{self._version}", rows, self.executor)
            gone = [key for key in (*marked, *(last.by_key if last is not None else ()))
                    if key not in answer.by_key]
            self._renderer.forget(gone)  # deleted objects' fragments
        answer.changes = changes
        answer.second = int(self._clock()) if answer.clocked else None
        return answer

    def _row(self, key: str) -> Row[F] | None:
        facts = self._facts(key)
        fragment = self._renderer.fragment(key)
        if facts is None or fragment is None:
            return None
        return Row(key, facts, fragment, self._clocked(key))


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an `Accept-Encoding` header admits gzip (RFC 9110 §12.5.3: named, or `*`, with
    a q-value above 0; an explicit `gzip;q=0` refuses it whatever `*` says)."""
    wildcard = False
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if coding in ("gzip", "x-gzip"):
            return quality > 0
        if coding == "*":
            wildcard = quality > 0
    return wildcard
