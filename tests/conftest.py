"""Shared fixtures: one real ZooKeeper per test session, a fresh root path per test."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from pvcd.lab.zookeeper import ZooKeeperEnsemble


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperEnsemble]:
    ensemble = ZooKeeperEnsemble(tmp_path_factory.mktemp("zookeeper"), size=1)
    ensemble.start()
    yield ensemble
    ensemble.stop()


@pytest.fixture
def zk_root() -> str:
    """A root path of its own for each test (recursive deletes of big trees are slow)."""
    return f"/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def zk(zookeeper: ZooKeeperEnsemble) -> Iterator[KazooClient]:
    client = KazooClient(zookeeper.connect_string, timeout=5)
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root")
        for item in items:
            if "needs_root" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def loop_devices(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """`make(size)`: a loop device over a sparse file of `size` bytes (a disk), detached
    after the test."""
    made: list[str] = []

    def make(size: int) -> str:
        image = tmp_path / f"disk{len(made)}.img"
        with open(image, "wb") as handle:
            handle.truncate(size)
        device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                                capture_output=True, text=True).stdout.strip()
        made.append(device)
        return device

    yield make
    for device in made:
        subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)
