"""The dashboard's change feed: thousands of cache changes become a few events per second, the
changed VMs and nodes travel in them (or "reload" past a bound), and a client that does not read
is dropped instead of holding memory or the loop."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from pvcd.api.change_feed import ChangeFeed, classify, parse_follows
from pvcd.api.render import FragmentRenderer
from pvcd.domain.errors import InvalidValue
from pvcd.state.cache import Listener
from pvcd.state.schema import Paths

ROOT = "/pvc"


class FakeCache:
    """Only what the feed uses of `StateCache`: its listeners."""

    def __init__(self) -> None:
        self.listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self.listeners.remove(listener)

    def change(self, path: str) -> None:
        for listener in list(self.listeners):
            listener(path)


def renderer(kind: str) -> FragmentRenderer:
    return FragmentRenderer(lambda key: (key,), lambda key: {"kind": kind, "key": key})


def feed(cache: FakeCache, **kwargs: Any) -> ChangeFeed:
    view: Any = SimpleNamespace(cache=cache, paths=Paths(ROOT))
    return ChangeFeed(view, renderer("vm"), renderer("node"), **kwargs)


def decode(event: bytes) -> dict[str, Any]:
    head, data = event.decode().strip().split("\n")
    assert head == "event: change"
    parsed: dict[str, Any] = json.loads(data.removeprefix("data: "))
    return parsed


def test_classify() -> None:
    assert classify("vms/u1") == ("vm", "u1")
    assert classify("vms/u1/status") == ("vm", "u1")
    assert classify("vms/u1/console") == ("console", "u1")
    assert classify("nodes/n1/alive") == ("node", "n1")
    assert classify("nodes/n1/health") == ("health", "n1")
    assert classify("logs/n1") == ("log", "n1")  # the node log (extensions.md §7)
    assert classify("faults/DEAD_NODE_N1") == ("health", None)
    assert classify("networks/100/leases/aa") == ("network", None)
    assert classify("coordinator/primary") == ("cluster", None)
    assert classify("sessions/secret") is None
    assert classify("vm-names/web1") is None
    assert classify("vms") is None


def test_a_burst_of_changes_from_the_watch_thread_is_one_event() -> None:
    async def scenario() -> tuple[list[bytes], int]:
        cache = FakeCache()
        changes = feed(cache, interval=0.1)
        client = changes.attach(lambda: None)
        # 5,000 changes of 100 VMs, one node and the networks, from another thread
        writer = threading.Thread(target=lambda: [
            cache.change(path) for _ in range(50) for path in
            [*(f"{ROOT}/vms/u{i}/status" for i in range(100)), f"{ROOT}/nodes/n1",
             f"{ROOT}/networks/100"]])
        writer.start()
        writer.join()
        await asyncio.sleep(0.3)
        changes.detach(client)
        return list(client.queue), len(cache.listeners)

    queued, listeners = asyncio.run(scenario())
    assert len(queued) == 1
    event = decode(queued[0])
    assert sorted(event["vm"]) == sorted(f"u{i}" for i in range(100))
    assert event["vm"]["u7"] == {"kind": "vm", "key": "u7"}
    assert event["node"] == {"n1": {"kind": "node", "key": "n1"}}
    assert event["network"] is True
    assert listeners == 0  # the last client gone: the feed no longer listens to the cache


def test_past_max_items_a_kind_is_only_to_be_reloaded() -> None:
    async def scenario() -> list[bytes]:
        cache = FakeCache()
        changes = feed(cache, interval=0.05, max_items=10)
        client = changes.attach(lambda: None)
        for i in range(11):
            cache.change(f"{ROOT}/vms/u{i}")
        cache.change(f"{ROOT}/nodes/n1")
        await asyncio.sleep(0.2)
        return list(client.queue)

    [event] = asyncio.run(scenario())
    assert decode(event) == {"vm": "reload", "node": {"n1": {"kind": "node", "key": "n1"}}}


def test_events_are_spaced_by_the_interval() -> None:
    async def scenario() -> int:
        cache = FakeCache()
        changes = feed(cache, interval=0.1)
        client = changes.attach(lambda: None)
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0
        while loop.time() < end:  # a change every 5 ms for a second
            cache.change(f"{ROOT}/vms/u1")
            await asyncio.sleep(0.005)
        return len(client.queue)

    assert 5 <= asyncio.run(scenario()) <= 11  # ≈ 10 per second, not 200


def test_a_client_that_does_not_read_is_dropped_and_others_keep_their_events() -> None:
    async def scenario() -> tuple[bool, int, bool, int]:
        cache = FakeCache()
        changes = feed(cache, interval=0.01, buffer=3)
        dropped: list[bool] = []
        slow = changes.attach(lambda: dropped.append(True))
        reader = changes.attach(lambda: None)
        for i in range(6):
            cache.change(f"{ROOT}/vms/u{i}")
            await asyncio.sleep(0.05)
            reader.queue.clear()  # this one reads
        return slow.dropped, len(slow.queue), reader.dropped, len(dropped)

    slow_dropped, slow_queued, reader_dropped, drops = asyncio.run(scenario())
    assert slow_dropped and slow_queued == 0 and drops == 1
    assert not reader_dropped


def test_the_feed_serves_again_when_the_api_runs_on_a_new_loop() -> None:
    """A handover away and back: the API's loop was stopped with a client attached and a flush
    scheduled (its coroutines never ran to the end); the next loop's clients get events."""
    cache = FakeCache()
    changes = feed(cache, interval=0.05)

    async def first_loop() -> None:
        changes.attach(lambda: None)
        cache.change(f"{ROOT}/vms/u1")  # schedules a flush this loop will never run

    async def second_loop() -> list[bytes]:
        client = changes.attach(lambda: None)
        cache.change(f"{ROOT}/vms/u2")
        await asyncio.sleep(0.2)
        return list(client.queue)

    asyncio.run(first_loop())
    [event] = asyncio.run(second_loop())
    assert list(decode(event)["vm"]) == ["u2"]
    assert len(cache.listeners) == 1 and changes.clients == 1


def test_logs_and_consoles_go_only_to_their_followers_and_only_their_keys() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes], int]:
        cache = FakeCache()
        changes = feed(cache, interval=0.05)
        plain = changes.attach(lambda: None)
        one = changes.attach(lambda: None, parse_follows(["log:n1", "console:u1"]))
        every = changes.attach(lambda: None, parse_follows(["log:*"]))
        for path in ("logs/n1", "logs/n2", "vms/u1/console", "vms/u2/console"):
            cache.change(f"{ROOT}/{path}")
        await asyncio.sleep(0.15)
        first = changes.events_sent
        cache.change(f"{ROOT}/networks/100")
        await asyncio.sleep(0.15)
        changes.detach(one)
        changes.detach(every)
        # followed by no one now: not even marked, no event at all
        cache.change(f"{ROOT}/logs/n1")
        cache.change(f"{ROOT}/vms/u1/console")
        await asyncio.sleep(0.15)
        return list(plain.queue), list(one.queue), list(every.queue), first

    plain, one, every, encoded = asyncio.run(scenario())
    assert [decode(e) for e in plain] == [{"network": True}]
    assert [decode(e) for e in one] == [{"log": ["n1"], "console": ["u1"]}, {"network": True}]
    assert [decode(e) for e in every] == [{"log": ["n1", "n2"]}, {"network": True}]
    assert encoded == 2  # one per distinct selection (the plain client got nothing)


def test_a_nodes_health_is_a_change_of_its_document_too() -> None:
    async def scenario() -> list[bytes]:
        cache = FakeCache()
        changes = feed(cache, interval=0.05)
        client = changes.attach(lambda: None)
        cache.change(f"{ROOT}/nodes/n1/health")
        cache.change(f"{ROOT}/faults/DEAD_NODE_N2")
        await asyncio.sleep(0.15)
        return list(client.queue)

    [event] = asyncio.run(scenario())
    assert decode(event) == {"health": ["n1"], "node": {"n1": {"kind": "node", "key": "n1"}}}


@pytest.mark.parametrize("bad", ["log", "log:", "vm:u1", "console:a/b", "log:" + "x" * 129,
                                 "log:a\nb"])
def test_a_bad_follow_says_what_is_allowed(bad: str) -> None:
    with pytest.raises(InvalidValue, match="kind log or console"):
        parse_follows([bad])
    with pytest.raises(InvalidValue, match="at most 64"):
        parse_follows([f"log:n{i}" for i in range(65)])
