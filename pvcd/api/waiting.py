"""Waiting, inside a request, until cached state settles: the API's one way to wait.

Storage writes always wait for their request's result; VM, node and coordinator changes wait
when asked (the `wait` value, bounded by `wait_timeout`). Both use `wait_until`: it re-judges a
condition each time the cache reports a change of one of the paths it depends on, and sleeps on
the event loop in between. It never polls ZooKeeper and never blocks the loop: the cache's watch
thread only sets an asyncio event (`call_soon_threadsafe`); the judging runs on the loop.

Races named: (1) a change between judging and sleeping is not lost, because the event is cleared
*before* each judgement, so a change after it wakes the next sleep at once. (2) The API stops
(a primary handover) while a request waits: a wait ends as soon as this node reports
`relinquish`, answering 503 with `wait.outcome = "moved"` so the client asks the new primary
(and the handover is not held up by the drain of open requests). (3) The loop is closed while a
coroutine still waits: its listener finds the loop closed and does nothing.

What "settled" means is not decided here: `pvcd.domain.settled` holds one rule per object kind.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

from pvcd.api.base import BaseHandler
from pvcd.api.values import Values, flag, value
from pvcd.domain.errors import InvalidValue
from pvcd.domain.settled import (
    Verdict,
    coordinator_goal,
    coordinator_settled,
    node_domain_goal,
    node_domain_settled,
    vm_goal,
    vm_settled,
)
from pvcd.state.cache import StateCache
from pvcd.state.view import ClusterView

T = TypeVar("T")

DEFAULT_WAIT_TIMEOUT = 120.0
MAX_WAIT_TIMEOUT = 3600.0


def _seconds(raw: str) -> float:
    try:
        seconds = float(raw) if len(raw) <= 32 else math.nan
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_WAIT_TIMEOUT:  # also refuses nan
        raise InvalidValue(f"invalid wait_timeout '{raw[:32]}': a number of seconds from 0 to "
                           f"{MAX_WAIT_TIMEOUT:g}")
    return seconds


# declared by every handler that can wait: `@accepts(..., *WAIT_VALUES)`
WAIT = flag("wait", "Answer only once the change has settled (observed by the nodes), or 510 "
            "when it fails (with the reason) or wait_timeout passes (saying what was awaited "
            "and last seen; the request itself was accepted). The answer then has a `wait` "
            "object {outcome, what, seen, seconds}; 503 with outcome `moved` means the API "
            "moved to another node meanwhile (ask the new primary: a GET of the state with "
            "`wait`).")
WAIT_TIMEOUT = value("wait_timeout", f"Seconds `wait` waits at most (default "
                     f"{DEFAULT_WAIT_TIMEOUT:g}).", _seconds,
                     schema={"type": "number", "minimum": 0, "maximum": MAX_WAIT_TIMEOUT},
                     default=DEFAULT_WAIT_TIMEOUT)
WAIT_VALUES = (WAIT, WAIT_TIMEOUT)


async def wait_until(cache: StateCache, paths: Collection[str], read: Callable[[], T],
                     done: Callable[[T], bool], timeout: float) -> tuple[T, bool]:
    """`read()` once `done` holds for it (and True), or as it is at the timeout (and False).
    `read` is judged at once and again after each change of one of `paths`."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    watched = frozenset(paths)

    def changed(path: str) -> None:  # on the cache's watch thread
        if path in watched and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # closed meanwhile: nobody is waiting any more
                pass

    cache.subscribe(changed)
    deadline = loop.time() + timeout
    try:
        while True:
            event.clear()
            value = read()
            if done(value):
                return value, True
            left = deadline - loop.time()
            if left <= 0:
                return value, False
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                pass
    finally:
        cache.unsubscribe(changed)


async def wait_for_request(cache: StateCache, path: str, timeout: float) -> Any:
    """The storage request document at `path` once it is finished (done or failed), or as it
    is at the timeout."""
    doc, _ = await wait_until(cache, (path,), lambda: cache.get(path), _request_finished,
                              timeout)
    return doc


MIRROR_WAIT = 2.0  # seconds a finished request waits for its mirror znodes in the cache


async def wait_for_mirror(cache: StateCache, mirrored: list[list[str]]) -> bool:
    """Whether the cache shows what a finished request's transaction created and deleted
    (waited for up to MIRROR_WAIT s). The request's znode can reach the cache before a znode
    created in the same transaction: the cache learns of a new child through its parent's
    watch and then reads it, one round trip later."""
    created = [path for kind, path in mirrored if kind == "create"]
    deleted = [path for kind, path in mirrored if kind == "delete"]
    if not created and not deleted:
        return True

    def shown() -> bool:
        return all(cache.exists(p) for p in created) and \
            not any(cache.exists(p) for p in deleted)

    _, done = await wait_until(cache, (*created, *deleted), shown, bool, MIRROR_WAIT)
    return done


def _request_finished(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("state") in ("done", "failed")


# --- the `wait` value and what a handler waits for ---------------------------------------------

def requested_wait(values: Values) -> float | None:
    """The seconds to wait when the request asks to (`wait`), else None. `wait_timeout` is
    parsed with the other declared values, so a bad one is refused before anything changes."""
    timeout = values[WAIT_TIMEOUT]
    return (DEFAULT_WAIT_TIMEOUT if timeout is None else timeout) if values[WAIT] else None


@dataclass(frozen=True)
class Goal:
    """What a request waits for: in words, the cached paths it depends on, and its judge."""

    what: str
    paths: tuple[str, ...]
    judge: Callable[[], Verdict]


def vm_settles(view: ClusterView, uuid: str) -> Goal:
    spec = view.vm_spec(uuid)
    what = vm_goal(spec) if spec is not None else f"VM {uuid}"
    return Goal(what, (view.paths.vm(uuid), view.paths.vm_status(uuid)),
                lambda: vm_settled(view.vm_spec(uuid), view.vm_status(uuid)))


def node_domain_settles(view: ClusterView, name: str) -> Goal:
    spec = view.node_spec(name)
    what = node_domain_goal(spec) if spec is not None else f"node {name}"
    return Goal(what, (view.paths.node(name), view.paths.node_status(name)),
                lambda: node_domain_settled(view.node_spec(name), view.node_status(name)))


def coordinator_settles(view: ClusterView, name: str, wanted: str) -> Goal:
    return Goal(coordinator_goal(name, wanted),
                (view.paths.primary, view.paths.node_status(name)),
                lambda: coordinator_settled(name, wanted, view.primary(),
                                            view.node_status(name)))


# --- answering after the wait ------------------------------------------------------------------

Answer = str | Callable[[], dict[str, Any]]


async def reply_when_settled(handler: BaseHandler, timeout: float | None, goal: Goal,
                             answer: Answer) -> None:
    """Reply `answer` (a message, or a function building the document) at once when `timeout`
    is None; else once `goal` has settled, with a `wait` report added. A failure ends the wait
    with 510 and its reason, the timeout with 510 saying what was awaited and last seen, a
    primary handover with 503 (`wait.outcome` = failed | timeout | moved; `wait.accepted` is
    the write's message)."""
    if timeout is None:
        handler.reply(_document(answer))
        return
    view = handler.ctx.view
    here = view.paths.node_status(handler.ctx.node_name)

    def judge() -> tuple[Verdict, bool]:
        status = view.node_status(handler.ctx.node_name)
        return goal.judge(), status is not None and status.coordinator_state == "relinquish"

    def over(judged: tuple[Verdict, bool]) -> bool:
        verdict, moving = judged
        return verdict.settled or verdict.failed_reason is not None or moving

    started = asyncio.get_running_loop().time()
    (verdict, moving), _ = await wait_until(view.cache, (*goal.paths, here), judge, over,
                                            timeout)
    report: dict[str, Any] = {"what": goal.what, "seen": verdict.seen,
                              "seconds": round(asyncio.get_running_loop().time() - started, 3)}
    accepted = ""
    if isinstance(answer, str):
        report["accepted"] = answer  # the write's own message, for a client that asks again
        accepted = f" The request was accepted: {answer}."
    if verdict.settled:
        handler.reply({**_document(answer), WAIT.name: {"outcome": "settled", **report}})
    elif verdict.failed_reason is not None:
        handler.reply({"message": verdict.failed_reason + "." + accepted,
                       WAIT.name: {"outcome": "failed", **report}}, 510)
    elif moving:
        handler.reply({"message": f"The API is moving to another node (a primary handover) "
                                  f"while waiting for {goal.what}; ask the new primary."
                                  + accepted,
                       WAIT.name: {"outcome": "moved", **report}}, 503)
    else:
        handler.reply({"message": f"Timed out after {timeout:g} s waiting for {goal.what}; last "
                                  f"seen: {verdict.seen}." + accepted
                                  + (" It is still being carried out." if accepted else ""),
                       WAIT.name: {"outcome": "timeout", **report}}, 510)


def _document(answer: Answer) -> dict[str, Any]:
    return {"message": answer} if isinstance(answer, str) else answer()
