"""Losing the ZooKeeper leader of a 3-server ensemble under API load: the API recovers and no
acknowledged write is lost."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.zookeeper import four_letter
from tests.e2e.labclient import LabFactory, wait_until

pytestmark = pytest.mark.slow


def zk_mode(port: int) -> str:
    for line in four_letter("127.0.0.1", port, "srvr").splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return ""


def test_leader_loss_under_load_loses_no_acknowledged_write(make_lab: LabFactory) -> None:
    lab, api = make_lab(nodes=3, zk_ensemble=3, fencing="none")
    info = lab.info
    assert info is not None
    acked: list[str] = []
    failed: list[str] = []
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        session.headers["X-Api-Key"] = info.token
        i = 0
        while not stop.is_set():
            name = f"w{i:04d}"
            i += 1
            try:
                response = session.post(f"{info.api}/vm", data={"xml": tiny_guest_xml(name)},
                                        timeout=10)
                (acked if response.status_code == 200 else failed).append(name)
            except requests.RequestException:
                failed.append(name)

    writer = threading.Thread(target=load)
    writer.start()
    try:
        wait_until(lambda: len(acked) >= 20, timeout=20)  # the load is flowing
        leader = next(s for s in info.zookeeper_servers if zk_mode(s["client_port"]) == "leader")
        os.kill(leader["pid"], signal.SIGKILL)
        killed_at = len(acked)
        wait_until(lambda: any(zk_mode(s["client_port"]) == "leader"
                               for s in info.zookeeper_servers if s is not leader), timeout=20)
        time.sleep(4.0)  # keep writing for a while on the new leader (a duration, not a wait)
    finally:
        stop.set()
        writer.join(30)
    assert len(acked) > killed_at, "the API did not recover: no write acknowledged after"
    # the API answers, and every acknowledged VM is there (in the API and in ZooKeeper)
    names = wait_until(lambda: {v["name"] for v in api.get("/vm").json()}, timeout=10)
    missing = [n for n in acked if n not in names]
    assert missing == [], f"acknowledged writes lost: {missing}"
    print(f"writes acknowledged: {len(acked)}, refused during the failover: {len(failed)}")
