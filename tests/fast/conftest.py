"""Fixtures of the fast tier: the cluster state and simulated nodes of tests/fakes/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from tests.fakes.api import ApiClient, running_api
from tests.fakes.nodes import SimCluster, sim_cluster
from tests.fakes.state import ClusterState


@pytest.fixture
def cluster_state(zk: KazooClient, zk_root: str) -> Iterator[ClusterState]:
    """The real Store and StateCache on a root of this test's own (tests/fakes/state.py)."""
    state = ClusterState.open(zk, zk_root)
    yield state
    state.close()


@pytest.fixture
def sim(cluster_state: ClusterState, tmp_path: Path) -> Iterator[SimCluster]:
    """Simulated nodes over `cluster_state` (tests/fakes/nodes.py); add them with `add_node`."""
    with sim_cluster(cluster_state, tmp_path) as cluster:
        yield cluster


@pytest.fixture
def sim_node1(sim: SimCluster) -> SimCluster:
    """`sim` with one simulated node, node1, which holds the primary role."""
    sim.add_node("node1")
    sim.step()
    return sim


@pytest.fixture
def node1_api(sim_node1: SimCluster) -> Iterator[ApiClient]:
    """The real API over `sim_node1`, with the default limits (tests/fakes/api.py)."""
    with running_api(sim_node1.state, sim_node1.clock) as client:
        yield client


@pytest.fixture
def api3(sim: SimCluster) -> Iterator[ApiClient]:
    """The real API over three simulated nodes (node1 the primary); no controller acts until
    the test steps the cluster."""
    for name in ("node1", "node2", "node3"):
        sim.add_node(name)
    sim.step()  # node1 takes the primary role
    with running_api(sim.state, sim.clock) as api:
        yield api
