"""An HTTP client for a lab's API and a polling helper, shared by the end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from kazoo.client import KazooClient

from pvcd.lab.lab import Lab, LabInfo
from tests.apiclient import ApiClient


class LabClient(ApiClient):
    """requests against the lab's API, with the lab's token unless told otherwise."""

    def __init__(self, info: LabInfo, verify: str | bool = True) -> None:
        super().__init__(info.api, info.token, verify)
        self.info = info


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


@contextmanager
def running_lab(workdir: Path, **up: Any) -> Iterator[tuple[Lab, LabClient]]:
    """A lab started with `Lab.up(**up)` in `workdir` and its API client; down afterwards."""
    lab = Lab(workdir)
    info = lab.up(**up)
    try:
        yield lab, LabClient(info)
    finally:
        lab.down()


@contextmanager
def zookeeper_client(lab: Lab) -> Iterator[KazooClient]:
    """A kazoo client of the lab's ZooKeeper with the nodes' credentials (no Store, no cache),
    started: what anyone who can reach ZooKeeper and holds them could write."""
    client = lab._info().zookeeper_client()
    client.start(timeout=10)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def ok(response: Any) -> Any:
    """The JSON of a 200 answer (the assertion shows the body otherwise)."""
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: Any, *words: str) -> None:
    """A 510 whose message holds every one of `words`."""
    assert response.status_code == 510, response.text
    for word in words:
        assert word in response.json()["message"], response.json()
