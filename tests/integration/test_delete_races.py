"""Deletes that race with the documents daemons write under what is deleted: the API answers 200
(or a clear 510), never ZooKeeper's "has children". A real ZooKeeper and API server in one
process; a second ZooKeeper client plays the primary's gateway, reporting dnsmasq leases under
`networks/<vni>/leases` as fast as it can while the network is deleted.

Before, the network delete listed the children to delete from the API's cache, which lags the
gateway's writes: the transaction failed with "delete …/leases: has children".
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import requests
from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from pvcd.api.app import make_context
from pvcd.api.auth import Tokens
from pvcd.api.server import ApiServer
from pvcd.domain.records import DhcpLease
from pvcd.lab.zookeeper import ZooKeeperEnsemble
from pvcd.state.cache import StateCache
from pvcd.state.codec import encode
from pvcd.state.schema import Paths, ensure_schema
from pvcd.state.store import Store
from pvcd.state.view import ClusterView


@pytest.fixture
def api(zk: KazooClient, zk_root: str) -> Iterator[str]:
    """The API of a primary on `zk_root`: its base URL."""
    paths = Paths(zk_root)
    ensure_schema(zk, paths)
    cache = StateCache(zk, zk_root)
    cache.start()
    store = Store(zk, cache)
    ctx = make_context(ClusterView(cache, paths), store, "node1", False, Tokens.from_config([]))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ApiServer(ctx, "127.0.0.1", port, "cookie")
    server.start()
    yield f"http://127.0.0.1:{port}/api/v1"
    server.stop()
    cache.close()


class LeaseReporter:
    """The primary's gateway, reporting a new dnsmasq lease every `pace` s (the gateway itself
    reports every 0.5 s), on a client of its own (so the API's cache learns of each one late)."""

    def __init__(self, zookeeper: ZooKeeperEnsemble, leases: str, pace: float) -> None:
        self.pace = pace
        self.client = KazooClient(zookeeper.connect_string, timeout=5)
        self.client.start(timeout=10)
        self.leases = leases
        self.reported = 0
        self.first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leases")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            mac = f"52:54:00:00:{self.reported // 256 % 256:02x}:{self.reported % 256:02x}"
            doc = DhcpLease(mac, f"10.1.{self.reported // 250 % 250}.{self.reported % 250 + 2}",
                            None, 0).to_doc()
            try:
                self.client.create(f"{self.leases}/{mac}", encode(doc))
            except NoNodeError:  # the network is gone: nothing to report into
                return
            except NodeExistsError:
                pass
            self.reported += 1
            self.first.set()
            self._stop.wait(self.pace)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.stop()
        self.client.close()


@pytest.mark.parametrize("pace", [0.02, 0.0], ids=["every-20ms", "flat-out"])
def test_a_network_deleted_while_leases_are_reported(api: str, zookeeper: ZooKeeperEnsemble,
                                                     zk: KazooClient, zk_root: str,
                                                     pace: float) -> None:
    """At 25 times the gateway's pace every delete succeeds (retried with the children read
    from ZooKeeper); flat out, a delete may give up, but says so clearly."""
    paths = Paths(zk_root)
    answers: list[tuple[int, str]] = []
    for vni in range(100, 110):
        created = requests.post(f"{api}/network", data={
            "vni": vni, "description": f"race{vni}", "nettype": "managed",
            "ip4_network": "10.1.0.0/16", "ip4_gateway": "10.1.0.1"}, timeout=10)
        assert created.status_code == 200, created.text
        reporter = LeaseReporter(zookeeper, paths.network_leases(vni), pace)
        try:
            assert reporter.first.wait(10)
            deleted = requests.delete(f"{api}/network/race{vni}", timeout=30)
        finally:
            reporter.stop()
        answers.append((deleted.status_code, deleted.json()["message"]))
        assert "has children" not in deleted.text, deleted.text
        assert deleted.status_code in (200, 510), deleted.text
        if deleted.status_code == 200:  # all of it is gone, nothing left behind
            assert zk.exists(paths.network(vni)) is None
            assert zk.exists(paths.network_name(f"race{vni}")) is None
        else:
            assert "try again" in deleted.json()["message"], deleted.text
    print("answers:", [code for code, _ in answers])
    if pace:
        assert all(code == 200 for code, _ in answers), answers
