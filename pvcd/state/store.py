"""Writes to the cluster state: every change is one compare-and-set ZooKeeper transaction.

A write is a list of `Op`s committed atomically. `set` and `delete` carry the version the writer
based its decision on (usually the cached version), so a concurrent change makes the whole write
fail with `Conflict` instead of being silently overwritten. `update()` wraps the usual
read-modify-write loop for controllers; the API uses `commit_async()` so the Tornado loop never
blocks on ZooKeeper.

A successful commit is shown in the local cache before the writer runs again (read-your-writes,
`pvcd.state.cache`).

A store made with a `timeout` waits at most that long for ZooKeeper's answer to a blocking read
or commit: kazoo queues a request while its connection is suspended and would hold the caller
until ZooKeeper is back, however long that takes (hours, for a partitioned node). The caller gets
`StateUnavailable` (a `BackendError`) instead, with the same meaning as a connection loss: the
outcome is unknown (the queued request may still be sent once the connection is back), and the
compare-and-set versions keep a late write from overwriting anything it did not see.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
)
from kazoo.protocol.serialization import Transaction
from kazoo.protocol.states import ZnodeStat

from pvcd.domain.errors import BackendError, Conflict, StateUnavailable
from pvcd.state.cache import Entry, StateCache
from pvcd.state.codec import decode, encode
from pvcd.state.tree_watch import Hooked

ANY_VERSION = -1


@dataclasses.dataclass(frozen=True)
class Op:
    kind: str  # create | set | delete | check
    path: str
    doc: Any = None
    version: int = ANY_VERSION
    ephemeral: bool = False

    @staticmethod
    def create(path: str, doc: Any, ephemeral: bool = False) -> Op:
        return Op("create", path, doc, ephemeral=ephemeral)

    @staticmethod
    def set(path: str, doc: Any, version: int) -> Op:
        return Op("set", path, doc, version)

    @staticmethod
    def delete(path: str, version: int = ANY_VERSION) -> Op:
        return Op("delete", path, version=version)

    @staticmethod
    def check(path: str, version: int) -> Op:
        return Op("check", path, version=version)


class Store:
    def __init__(self, client: KazooClient, cache: StateCache | None = None,
                 timeout: float | None = None) -> None:
        """`timeout`: how long a blocking read or commit waits for ZooKeeper (None: forever)."""
        self.client = client
        self.cache = cache
        self.timeout = timeout

    # writes
    def commit(self, ops: Sequence[Op]) -> list[Any]:
        """Commit `ops` atomically; raise Conflict (lost race) or BackendError (ZooKeeper)."""
        try:
            results = self._wait(self._send(ops), "write")
        except (KazooException, ConnectionClosedError) as exc:
            raise StateUnavailable(f"ZooKeeper write failed: {exc!r}") from exc
        _check(ops, results)
        return results

    def commit_each(self, ops: Sequence[Op]) -> list[tuple[Op, Conflict]]:
        """`ops` in one transaction when nothing raced; else one by one, in order, skipping
        the ones that lost a race: for writers of independent objects (a sync, a round of
        checks) whose next run retries what was skipped. The skipped ops, with why."""
        if not ops:
            return []
        try:
            self.commit(ops)
            return []
        except Conflict:
            pass
        skipped = []
        for op in ops:
            try:
                self.commit([op])
            except Conflict as exc:
                skipped.append((op, exc))
        return skipped

    def commit_async(self, ops: Sequence[Op]) -> concurrent.futures.Future[list[Any]]:
        """Like commit(), without blocking: the future resolves on kazoo's completion thread."""
        future: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        try:
            async_result = self._send(ops)
        except (KazooException, ConnectionClosedError) as exc:
            future.set_exception(StateUnavailable(f"ZooKeeper write failed: {exc!r}"))
            return future

        def done(result: Any) -> None:
            try:
                results = result.get()
                _check(ops, results)
            except Exception as exc:  # delivered to the awaiting handler
                if not isinstance(exc, (Conflict, BackendError)):
                    exc = StateUnavailable(f"ZooKeeper write failed: {exc!r}")
                future.set_exception(exc)
            else:
                future.set_result(results)

        async_result.rawlink(done)
        return future

    def update(self, path: str, mutate: Callable[[Any], Any], retries: int = 20,
               extra_ops: Callable[[Any], Sequence[Op]] | None = None) -> Any:
        """Read-modify-write `path` with CAS, retrying on lost races.

        `mutate(doc)` returns the new document, or None to write nothing.
        """
        for attempt in range(retries):
            doc, version = self.read(path)
            new = mutate(doc)
            if new is None:
                return doc
            ops = [Op.set(path, new, version)]
            if extra_ops is not None:
                ops.extend(extra_ops(new))
            try:
                self.commit(ops)
            except Conflict:
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # break up lockstep retries
                continue
            return new
        raise Conflict(f"{path}: too many concurrent changes, gave up after {retries} tries")

    # reads that must be exact (a CAS base), not cached
    def children_async(self, path: str) -> concurrent.futures.Future[list[str]]:
        """The children of `path` as ZooKeeper has them now ([] when `path` is gone), without
        blocking: what to delete under a parent whose children other nodes write, when the
        cache's list has just proved stale."""
        future: concurrent.futures.Future[list[str]] = concurrent.futures.Future()

        def done(result: Any) -> None:
            try:
                future.set_result(sorted(result.get()))
            except NoNodeError:
                future.set_result([])
            except Exception as exc:  # delivered to the awaiting handler
                future.set_exception(StateUnavailable(f"ZooKeeper read failed: {exc!r}"))

        try:
            self.client.get_children_async(path).rawlink(done)
        except (KazooException, ConnectionClosedError) as exc:
            future.set_exception(StateUnavailable(f"ZooKeeper read failed: {exc!r}"))
        return future

    def read(self, path: str) -> tuple[Any, int]:
        try:
            raw, stat = self._wait(self.client.get_async(path), "read")
        except NoNodeError as exc:
            raise Conflict(f"{path} does not exist") from exc
        except KazooException as exc:
            raise StateUnavailable(f"ZooKeeper read failed: {exc!r}") from exc
        return decode(raw), stat.version

    def read_optional(self, path: str) -> tuple[Any, ZnodeStat] | None:
        try:
            raw, stat = self._wait(self.client.get_async(path), "read")
        except NoNodeError:
            return None
        except KazooException as exc:
            raise StateUnavailable(f"ZooKeeper read failed: {exc!r}") from exc
        return decode(raw), stat

    # internals
    def _wait(self, result: Any, what: str) -> Any:
        """The answer of a kazoo request, waited for at most `self.timeout`."""
        try:
            return result.get(timeout=self.timeout)
        except self.client.handler.timeout_exception as exc:
            raise StateUnavailable(f"ZooKeeper {what}: no answer within {self.timeout} s "
                               "(connection suspended)") from exc

    def _send(self, ops: Sequence[Op]) -> Any:
        """Send `ops` as one transaction; kazoo's async result of it. With a cache, the
        answer goes through `_written` on kazoo's connection thread first."""
        txn = self.client.transaction()
        encoded: list[bytes | None] = []
        for op in ops:
            encoded.append(encode(op.doc) if op.kind in ("create", "set") else None)
            if op.kind == "create":
                txn.create(op.path, encoded[-1], ephemeral=op.ephemeral)
            elif op.kind == "set":
                txn.set_data(op.path, encoded[-1], version=op.version)
            elif op.kind == "delete":
                txn.delete(op.path, version=op.version)
            elif op.kind == "check":
                txn.check(op.path, op.version)
            else:
                raise ValueError(f"unknown op kind {op.kind!r}")
        result = self.client.handler.async_result()
        answer = result if self.cache is None else \
            Hooked(result, lambda results: self._written(ops, encoded, results))
        self.client._call(Transaction(txn.operations), answer)
        return result

    def _written(self, ops: Sequence[Op], encoded: list[bytes | None],
                 results: list[Any]) -> None:
        """Show a committed write in the cache (read-your-writes), as ZooKeeper holds it: the
        document decoded from the bytes written, as the watch will deliver it (the same keys in
        the same order, nothing shared with the caller's objects)."""
        if self.cache is None or any(isinstance(r, Exception) for r in results):
            return
        session_id = self.client.client_id[0] if self.client.client_id else 0
        changes: list[tuple[str, Entry | None]] = []
        for op, raw, result in zip(ops, encoded, results, strict=False):
            if op.kind == "create":
                changes.append((op.path, Entry(decode(raw), 0, None, None,
                                               session_id if op.ephemeral else 0)))
            elif op.kind == "set" and isinstance(result, ZnodeStat):
                changes.append((op.path, Entry(decode(raw), result.version, result.mzxid,
                                               result.czxid, result.ephemeralOwner)))
            elif op.kind == "delete":
                changes.append((op.path, None))
        self.cache.written(changes)


def _check(ops: Sequence[Op], results: list[Any]) -> None:
    """Raise Conflict when the transaction failed (the first op that failed, and why)."""
    failures = [(op, r) for op, r in zip(ops, results, strict=False)
                if isinstance(r, Exception) and not isinstance(r, RolledBackError)]
    if failures:
        op, err = failures[0]
        raise Conflict(f"{op.kind} {op.path}: {_describe(err)}")
    if any(isinstance(r, Exception) for r in results):
        raise Conflict("transaction rolled back")


def _describe(err: Exception) -> str:
    if isinstance(err, BadVersionError):
        return "changed concurrently (version mismatch)"
    if isinstance(err, NodeExistsError):
        return "already exists"
    if isinstance(err, NoNodeError):
        return "does not exist"
    if isinstance(err, NotEmptyError):
        return "has children"
    return repr(err)
