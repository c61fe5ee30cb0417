"""The real API (Tornado application and `ApiServer`) in process, over a `ClusterState`.

`running_api` serves it on a free loopback port from its own thread, exactly as the primary's
daemon does, with the context built by `make_api_context` (the ONE place that knows
`ApiContext`'s fields). `ApiClient` (tests/apiclient.py, the labs' client too) speaks to it, so a
test moved from a lab keeps its assertions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pvcd.api.app import make_context
from pvcd.api.auth import Tokens
from pvcd.api.base import ApiContext
from pvcd.api.connections import ConnectionLimits
from pvcd.api.server import ApiServer
from pvcd.config.schema import ApiSection
from pvcd.lab.zookeeper import free_port
from tests.apiclient import ApiClient
from tests.fakes.state import ClusterState, FakeClock

TOKEN = "fast-tier-token"


def make_api_context(state: ClusterState, node_name: str, clock: FakeClock,
                     api: ApiSection | None = None,
                     storage_request_timeout: float | None = None) -> ApiContext:
    return make_context(state.view, state.store, node_name, True,
                        Tokens.from_config([(TOKEN, "fast tier")]),
                        storage_request_timeout=storage_request_timeout, clock=clock, api=api)


@contextlib.contextmanager
def serving_api(state: ClusterState, clock: FakeClock, node_name: str = "node1",
                api: ApiSection | None = None, session_sweep_interval: float = 60.0,
                storage_request_timeout: float | None = None
                ) -> Iterator[tuple[ApiServer, ApiClient]]:
    """The server and a client of it. `api`: the config section with the limits (its listen
    address and port are not used: the API listens on a free loopback port); the defaults when
    not given."""
    port = free_port()
    api = api or ApiSection()
    server = ApiServer(make_api_context(state, node_name, clock, api, storage_request_timeout),
                       "127.0.0.1", port,
                       cookie_secret="fast-tier-secret", drain_timeout=0.1,
                       limits=ConnectionLimits.from_config(api),
                       session_sweep_interval=session_sweep_interval)
    server.start()
    client = ApiClient(f"http://127.0.0.1:{port}/api/v1", TOKEN)
    try:
        yield server, client
    finally:
        client.session.close()
        server.stop()


@contextlib.contextmanager
def running_api(state: ClusterState, clock: FakeClock, node_name: str = "node1",
                api: ApiSection | None = None,
                storage_request_timeout: float | None = None) -> Iterator[ApiClient]:
    """`storage_request_timeout`: Ceph is configured (the storage endpoints answer)."""
    with serving_api(state, clock, node_name, api,
                     storage_request_timeout=storage_request_timeout) as (_, client):
        yield client
