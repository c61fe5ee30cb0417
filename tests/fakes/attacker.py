"""Writes past the API: what anything with access to ZooKeeper can do (a plain kazoo client, no
Store, no version check, no validation). The daemons must refuse what the API would refuse
(docs/security.md, "Daemons re-validate")."""

from __future__ import annotations

import threading
from typing import Any

from pvcd.state.codec import encode
from tests.fakes.state import ClusterState

CACHE_TIMEOUT = 10.0


def write_past_the_api(state: ClusterState, path: str, doc: Any) -> None:
    """Create or overwrite `path` with a raw kazoo write; return once the cache holds it (the
    controllers read the cache)."""
    arrived = threading.Event()

    def listener(changed: str) -> None:
        if changed == path and state.cache.get(path) == doc:
            arrived.set()

    state.cache.subscribe(listener)
    try:
        if state.client.exists(path):
            state.client.set(path, encode(doc))
        else:
            state.client.create(path, encode(doc), makepath=True)
        if state.cache.get(path) != doc:
            assert arrived.wait(CACHE_TIMEOUT), f"the cache never saw the write of {path}"
    finally:
        state.cache.unsubscribe(listener)
