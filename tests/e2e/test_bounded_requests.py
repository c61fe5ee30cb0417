"""Bounded work per request on a real lab (issue 13, findings 5-7): the primary's daemon, with
its keepalive and ZooKeeper session, is what a bad request must not stop. A catastrophic or
too costly `limit` answers within a second while another client is served; a 0.9 MiB XML and
a document larger than one ZooKeeper request are refused and the primary keeps its session
(its log shows no suspended or lost session, the role does not move); 10,000-digit numbers
and names ZooKeeper cannot store are 510s."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pvcd.lab.guest import tiny_guest_xml
from tests.apiclient import ApiClient
from tests.e2e.labclient import LabFactory, wait_until

pytestmark = pytest.mark.slow


def refused(response: object, *words: str) -> str:
    status, body = response.status_code, response.json()  # type: ignore[attr-defined]
    assert status == 510, (status, body)
    for word in words:
        assert word in body["message"], body["message"]
    return str(body["message"])


def keepalive(api: ApiClient, node: str) -> float:
    return float(api.get(f"/node/{node}").json()[0]["keepalive"])


def test_no_request_stops_the_primary(make_lab: LabFactory) -> None:
    lab, api = make_lab(nodes=2, fencing="none")
    primary = api.primary()
    assert primary is not None
    log = Path(lab._info().node(primary).log)
    for index in range(5):
        assert api.post("/vm", data={"xml": tiny_guest_xml(f"{'a' * 30}!{index}"),
                                     "node": primary}).status_code == 200

    # limit: Python's re would need minutes for the first and freeze the daemon meanwhile
    started = time.monotonic()
    assert api.get("/vm", params={"limit": "(a+)+$"}).json() == []
    assert time.monotonic() - started < 1.0
    other = ApiClient(api.base, api.token)
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        bad = pool.submit(api.get, "/vm", params={"limit": "(.*){1000}"})
        good = pool.submit(other.get, "/node")
        assert good.result().status_code == 200
        refused(bad.result(), "too complex")
        assert time.monotonic() - started < 1.0

    # sizes: refused before anything reaches ZooKeeper
    logged = log.stat().st_size
    padding = "x" * int(0.9 * 1024 * 1024)
    big = tiny_guest_xml("big").replace("</name>", f"</name><description>{padding}"
                                        "</description>", 1)
    refused(api.post("/vm", data={"xml": big}), "larger than 524288 bytes")
    wide = tiny_guest_xml("wide").replace("</name>", f"</name><description>{'é' * 150_000}"
                                          "</description>", 1)
    refused(api.post("/vm", data={"xml": wide}), "one ZooKeeper write may carry")
    # numbers and names
    ten_k = "9" * 10_000
    refused(api.post("/vm", data={"xml": tiny_guest_xml("n").replace(
        "<vcpu>1</vcpu>", f"<vcpu>{ten_k}</vcpu>")}), "at most 20 digits")
    refused(api.post("/network", data={"vni": ten_k, "description": "n",
                                       "nettype": "managed"}), "VXLAN ID")
    for name in (".", "..", "web\ufffd"):
        message = refused(api.post("/vm", data={"xml": tiny_guest_xml(name)}),
                          "invalid VM name")
        assert "vm-names" not in message

    # the primary kept its role and its session, and keeps its keepalive going: two more
    # keepalives (a dropped connection would have been logged long before)
    for _ in range(2):
        mark = keepalive(api, primary)
        wait_until(lambda mark=mark: keepalive(api, primary) > mark, timeout=10)
    assert api.primary() == primary
    after = log.read_bytes()[logged:].decode(errors="replace")
    assert "event=session-suspended" not in after and "event=session-lost" not in after
    assert sorted(v["name"] for v in api.get("/vm").json()) == \
        sorted(f"{'a' * 30}!{i}" for i in range(5))
    other.session.close()
