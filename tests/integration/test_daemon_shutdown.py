"""A node daemon whose ZooKeeper has gone away still stops on SIGTERM, within its shutdown
budget, with exit 0 and its controllers stopped (a real `pvcd run` process, a real ZooKeeper
frozen with SIGSTOP or killed with SIGKILL while the daemon runs).

Before this was fixed the daemon's main loop sat in a keepalive write that kazoo holds until
ZooKeeper answers, and its shutdown path wrote its status the same way: SIGTERM was ignored for
as long as ZooKeeper stayed away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from pvcd.lab.zookeeper import ZooKeeperEnsemble, ZooKeeperServer, free_port
from pvcd.state.schema import Paths
from tests.integration.daemon_process import start_daemon

SESSION_TIMEOUT = 2.0
SHUTDOWN_BUDGET = 3.0  # timing.shutdown_budget in the daemon's config




def wait_for(condition: Callable[[], object], what: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}; log:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


@pytest.mark.parametrize("outage", [signal.SIGSTOP, signal.SIGKILL], ids=["frozen", "killed"])
def test_sigterm_stops_a_daemon_whose_zookeeper_went_away(tmp_path: Path,
                                                          outage: signal.Signals) -> None:
    port = free_port()
    ensemble = ZooKeeperEnsemble(tmp_path / "zk", 1)
    [server] = ensemble.servers = [
        ZooKeeperServer(1, port, free_port(), free_port(), tmp_path / "zk" / "zk1")]
    ensemble.start()
    log = tmp_path / "pvcd.log"
    process = start_daemon(tmp_path, port, "/cut", "cut-off", SESSION_TIMEOUT,
                           timing={"keepalive_interval": 0.2,
                                   "shutdown_budget": SHUTDOWN_BUDGET})
    try:
        client = KazooClient(ensemble.connect_string, timeout=5)
        client.start(timeout=10)
        alive = Paths("/cut").node_alive("cut-off")
        try:
            wait_for(lambda: client.exists(alive), "the daemon did not register", 30, log)
            # the API is up once the node is primary: every controller and service runs
            wait_for(lambda: "event=primary-service-start service=api" in log.read_text(),
                     "the node did not become primary", 30, log)
        finally:
            client.stop()
            client.close()
        os.kill(server.pid, outage)
        # the daemon notices (kazoo suspends the connection) and drops the primary role: what
        # it writes to ZooKeeper from now on waits for an answer that does not come
        wait_for(lambda: "event=primary-dropped" in log.read_text(),
                 "the daemon did not notice ZooKeeper going away", 3 * SESSION_TIMEOUT, log)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=SHUTDOWN_BUDGET + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGTERM ignored for {SHUTDOWN_BUDGET + 30} s with ZooKeeper away; "
                        f"log:\n{log.read_text()[-3000:]}")
        took = time.monotonic() - started
        print(f"SIGTERM -> exit with ZooKeeper {outage.name}: {took:.2f} s")
        text = log.read_text()
        assert code == 0, text[-3000:]
        assert took < SHUTDOWN_BUDGET + 2.0, f"took {took:.1f} s\n{text[-3000:]}"
        assert "event=daemon-stopped" in text
        assert "event=controllers-stopped" in text, text[-3000:]
    finally:
        process.kill()
        process.wait()
        if outage == signal.SIGSTOP:
            os.kill(server.pid, signal.SIGCONT)
        ensemble.stop()
