"""An HTTP client of the pvcd API for tests: `requests` with the token, and the reads that many
tests share. Used against a lab (tests/e2e/labclient.py) and against the in-process API
(tests/fakes/api.py)."""

from __future__ import annotations

from typing import Any

import requests


class ApiClient:
    """requests against the API at `base` (…/api/v1), with `token` unless told otherwise."""

    def __init__(self, base: str, token: str, verify: str | bool = True) -> None:
        self.base = base
        self.token = token
        self.verify = verify
        self.session = requests.Session()

    def call(self, method: str, path: str, token: bool = True, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers.setdefault("X-Api-Key", self.token)
        kwargs.setdefault("timeout", 5)
        return self.session.request(method, self.base + path, headers=headers,
                                    verify=self.verify, **kwargs)

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
