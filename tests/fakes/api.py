"""The real API (Tornado application and `ApiServer`) in process, over a `ClusterState`.

`running_api` serves it on a free loopback port from its own thread, exactly as the primary's
daemon does, with the context built by `make_api_context` (the ONE place that knows
`ApiContext`'s fields). `ApiClient` speaks to it with `requests`, like the labs' client, so a
test moved from a lab keeps its assertions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import requests

from pvcd.api.auth import Tokens
from pvcd.api.base import ApiContext
from pvcd.api.server import ApiServer
from pvcd.lab.zookeeper import free_port
from tests.fakes.state import ClusterState, FakeClock

TOKEN = "fast-tier-token"


def make_api_context(state: ClusterState, node_name: str, clock: FakeClock) -> ApiContext:
    return ApiContext(view=state.view, store=state.store, node_name=node_name,
                      auth_enabled=True, tokens=Tokens.from_config([TOKEN]), clock=clock)


class ApiClient:
    """requests against the in-process API, with the token unless told otherwise."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()

    def call(self, method: str, path: str, token: bool = True, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers.setdefault("X-Api-Key", TOKEN)
        kwargs.setdefault("timeout", 5)
        return self.session.request(method, self.base + path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("POST", path, **kwargs)

    def nodes(self) -> dict[str, dict[str, Any]]:
        response = self.get("/node")
        assert response.status_code == 200, response.text
        return {n["name"]: n for n in response.json()}

    def primary(self) -> str | None:
        primaries = [n for n, v in self.nodes().items() if v["coordinator_state"] == "primary"]
        assert len(primaries) <= 1, primaries
        return primaries[0] if primaries else None


@contextlib.contextmanager
def running_api(state: ClusterState, clock: FakeClock, node_name: str = "node1"
                ) -> Iterator[ApiClient]:
    port = free_port()
    server = ApiServer(make_api_context(state, node_name, clock), "127.0.0.1", port,
                       cookie_secret="fast-tier-secret", drain_timeout=0.1)
    server.start()
    client = ApiClient(f"http://127.0.0.1:{port}/api/v1")
    try:
        yield client
    finally:
        client.session.close()
        server.stop()
