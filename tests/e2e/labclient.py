"""An HTTP client for a lab's API and a polling helper, shared by the end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from pvcd.lab.lab import Lab, LabInfo


class LabClient:
    """requests against the lab's API, with the token unless told otherwise."""

    def __init__(self, info: LabInfo, verify: str | bool = True) -> None:
        self.info = info
        self.base = info.api
        self.verify = verify
        self.session = requests.Session()

    def call(self, method: str, path: str, token: bool = True, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers.setdefault("X-Api-Key", self.info.token)
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


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy (exceptions count as not yet); return its value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (requests.RequestException, AssertionError, ValueError, OSError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


LabFactory = Callable[..., tuple[Lab, LabClient]]
