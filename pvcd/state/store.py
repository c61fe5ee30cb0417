"""Writes to the cluster state: every change is one compare-and-set ZooKeeper transaction.

A write is a list of `Op`s committed atomically. `set` and `delete` carry the version the writer
based its decision on (usually the cached version), so a concurrent change makes the whole write
fail with `Conflict` instead of being silently overwritten. `update()` wraps the usual
read-modify-write loop for controllers; the API uses `commit_async()` so the Tornado loop never
blocks on ZooKeeper.

After a successful commit the store applies the write to the local cache (read-your-writes).

A store made with a `timeout` waits at most that long for ZooKeeper's answer to a blocking read
or commit: kazoo queues a request while its connection is suspended and would hold the caller
until ZooKeeper is back, however long that takes (hours, for a partitioned node). The caller gets
`BackendError` instead, with the same meaning as a connection loss: the outcome is unknown (the
queued request may still be sent once the connection is back), and the compare-and-set versions
keep a late write from overwriting anything it did not see.
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
from kazoo.protocol.states import ZnodeStat

from pvcd.domain.errors import BackendError, Conflict
from pvcd.state.cache import StateCache
from pvcd.state.codec import decode, encode

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
            txn, encoded = self._transaction(ops)
            results = self._wait(txn.commit_async(), "write")
        except (KazooException, ConnectionClosedError) as exc:
            raise BackendError(f"ZooKeeper write failed: {exc!r}") from exc
        self._finish(ops, encoded, results)
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
            txn, encoded = self._transaction(ops)
            async_result = txn.commit_async()
        except (KazooException, ConnectionClosedError) as exc:
            future.set_exception(BackendError(f"ZooKeeper write failed: {exc!r}"))
            return future

        def done(result: Any) -> None:
            try:
                results = result.get()
                self._finish(ops, encoded, results)
            except Exception as exc:  # delivered to the awaiting handler
                if not isinstance(exc, (Conflict, BackendError)):
                    exc = BackendError(f"ZooKeeper write failed: {exc!r}")
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
                future.set_exception(BackendError(f"ZooKeeper read failed: {exc!r}"))

        try:
            self.client.get_children_async(path).rawlink(done)
        except (KazooException, ConnectionClosedError) as exc:
            future.set_exception(BackendError(f"ZooKeeper read failed: {exc!r}"))
        return future

    def read(self, path: str) -> tuple[Any, int]:
        try:
            raw, stat = self._wait(self.client.get_async(path), "read")
        except NoNodeError as exc:
            raise Conflict(f"{path} does not exist") from exc
        except KazooException as exc:
            raise BackendError(f"ZooKeeper read failed: {exc!r}") from exc
        return decode(raw), stat.version

    def read_optional(self, path: str) -> tuple[Any, ZnodeStat] | None:
        try:
            raw, stat = self._wait(self.client.get_async(path), "read")
        except NoNodeError:
            return None
        except KazooException as exc:
            raise BackendError(f"ZooKeeper read failed: {exc!r}") from exc
        return decode(raw), stat

    # internals
    def _wait(self, result: Any, what: str) -> Any:
        """The answer of a kazoo request, waited for at most `self.timeout`."""
        try:
            return result.get(timeout=self.timeout)
        except self.client.handler.timeout_exception as exc:
            raise BackendError(f"ZooKeeper {what}: no answer within {self.timeout} s "
                               "(connection suspended)") from exc

    def _transaction(self, ops: Sequence[Op]) -> tuple[Any, list[bytes | None]]:
        """The kazoo transaction of `ops`, and the bytes each op writes (None: no data)."""
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
        return txn, encoded

    def _finish(self, ops: Sequence[Op], encoded: list[bytes | None],
                results: list[Any]) -> None:
        failures = [(op, r) for op, r in zip(ops, results, strict=False)
                    if isinstance(r, Exception) and not isinstance(r, RolledBackError)]
        if failures:
            op, err = failures[0]
            raise Conflict(f"{op.kind} {op.path}: {_describe(err)}")
        if any(isinstance(r, Exception) for r in results):
            raise Conflict("transaction rolled back")
        if self.cache is None:
            return
        session_id = self.client.client_id[0] if self.client.client_id else 0
        # the cache gets the document as ZooKeeper holds it (decoded from the bytes written),
        # as its watch will deliver it: the same keys in the same order, and nothing shared
        # with the caller's objects
        for op, raw, result in zip(ops, encoded, results, strict=False):
            if op.kind == "create":
                self.cache.apply_create(op.path, decode(raw), session_id if op.ephemeral else 0)
            elif op.kind == "set" and isinstance(result, ZnodeStat):
                self.cache.apply_set(op.path, decode(raw), result)
            elif op.kind == "delete":
                self.cache.apply_delete(op.path)


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
