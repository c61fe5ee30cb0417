"""`GET /vm` served as ready-made bytes (pvcd/api/ready_list.py): ETags and 304, gzip, filters,
read-your-writes, and no rebuild while nothing changed."""

from __future__ import annotations

import gzip
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from pvcd.api import bulk_send
from pvcd.api.ready_list import INLINE_GZIP, accepts_gzip
from pvcd.api.server import ApiServer
from pvcd.domain.vm_snapshots import STOPPED, VmSnapshot
from pvcd.lab.guest import tiny_guest_xml
from pvcd.state.store import Op
from tests.apiclient import ApiClient
from tests.fakes.api import TOKEN, serving_api
from tests.fakes.nodes import SimCluster


@pytest.fixture
def served(sim: SimCluster) -> Iterator[tuple[ApiServer, ApiClient]]:
    """The API over three simulated nodes, with the server (its context) at hand."""
    for name in ("node1", "node2", "node3"):
        sim.add_node(name)
    sim.step()
    with serving_api(sim.state, sim.clock) as (server, client):
        yield server, client


def raw_get(client: ApiClient, path: str, **headers: str
            ) -> tuple[int, dict[str, str], bytes]:
    """A GET as it travels: status, headers (lower-case names), and the body undecoded."""
    url = urllib.parse.urlsplit(client.base + path)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
    try:
        connection.request("GET", f"{url.path}?{url.query}" if url.query else url.path,
                           headers={"X-Api-Key": TOKEN, "Accept-Encoding": "identity",
                                    **headers})
        response = connection.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        connection.close()


def define(client: ApiClient, name: str, **values: str) -> str:
    response = client.post("/vm", data={"xml": tiny_guest_xml(name), **values})
    assert response.status_code == 200, response.text
    return str(response.json()["message"].split("(")[1].split(")")[0])


def names(body: bytes) -> list[str]:
    return sorted(vm["name"] for vm in json.loads(body))


def watch_caught_up(sim: SimCluster, uuid: str) -> None:
    """Wait until the watch has reported the VM's creation: a local apply came first, and
    the watch's document (sorted keys) renders other bytes than the one the API wrote."""
    deadline = time.monotonic() + 5
    while (entry := sim.state.cache.entry(sim.state.paths.vm(uuid))) is None or \
            entry.mzxid is None:
        assert time.monotonic() < deadline, "the watch never reported the VM"
        time.sleep(0.01)


def test_an_unchanged_list_is_304_and_a_change_gives_a_new_body(
        served: tuple[ApiServer, ApiClient], sim: SimCluster) -> None:
    server, client = served
    watch_caught_up(sim, define(client, "one"))
    status, headers, body = raw_get(client, "/vm")
    assert status == 200 and names(body) == ["one"]
    etag = headers["etag"]
    assert headers["vary"] == "Accept-Encoding" and headers["cache-control"] == "no-cache"
    assert int(headers["content-length"]) == len(body)

    builds = server.ctx.vm_answers.builds
    again, again_headers, again_body = raw_get(client, "/vm")
    assert (again, again_headers["etag"], again_body) == (200, etag, body)
    status, headers, body = raw_get(client, "/vm", **{"If-None-Match": etag})
    assert (status, headers["etag"], body) == (304, etag, b"")
    assert server.ctx.vm_answers.builds == builds  # nothing changed: nothing was rebuilt

    define(client, "two")
    status, headers, body = raw_get(client, "/vm", **{"If-None-Match": etag})
    assert status == 200 and names(body) == ["one", "two"]
    assert headers["etag"] != etag
    assert raw_get(client, "/vm", **{"If-None-Match": headers["etag"]})[0] == 304


def test_gzip_round_trip(served: tuple[ApiServer, ApiClient], sim: SimCluster) -> None:
    _, client = served
    for i in range(60):
        watch_caught_up(sim, define(client, f"vm{i:02d}"))
    _, plain_headers, plain = raw_get(client, "/vm")
    status, headers, packed = raw_get(client, "/vm", **{"Accept-Encoding": "gzip, br"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert len(plain) > INLINE_GZIP  # compressed off the loop
    assert len(packed) < len(plain) / 5
    assert int(headers["content-length"]) == len(packed)
    assert gzip.decompress(packed) == plain
    assert headers["etag"] != plain_headers["etag"]  # another representation, another tag
    assert raw_get(client, "/vm", **{"Accept-Encoding": "gzip",
                                     "If-None-Match": headers["etag"]})[0] == 304
    # a filtered list is small: compressed on the loop, the same round trip
    status, headers, packed = raw_get(client, "/vm?limit=vm0[12]", **{"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip" and names(gzip.decompress(packed)) == \
        ["vm01", "vm02"]
    # requests asks for gzip by itself and decodes it
    assert sorted(vm["name"] for vm in client.get("/vm").json()) == names(plain)
    _, refused, _ = raw_get(client, "/vm", **{"Accept-Encoding": "gzip;q=0, *"})
    assert "content-encoding" not in refused


def test_a_list_after_a_write_shows_the_write(served: tuple[ApiServer, ApiClient]) -> None:
    """Read-your-writes: the answer to a write comes after the cache has it, and a cached list
    is rebuilt for it (no waiting for the watch)."""
    _, client = served
    for i in range(15):
        uuid = define(client, f"rw{i:02d}")
        listed = {vm["uuid"]: vm for vm in client.get("/vm").json()}
        assert uuid in listed
        assert client.post(f"/vm/rw{i:02d}/state", data={"state": "stop"}).status_code == 200
        assert {vm["uuid"]: vm for vm in client.get("/vm").json()}[uuid]["state"] == "stop"
        stopped = sorted(vm["name"] for vm in client.get("/vm?state=stop").json())
        assert stopped == [f"rw{j:02d}" for j in range(i + 1)]


def test_filters_select_as_before(served: tuple[ApiServer, ApiClient]) -> None:
    _, client = served
    define(client, "web1", node="node1", user_tags="web")
    define(client, "web2", node="node2", user_tags="web")
    define(client, "db1", node="node2")
    assert client.post("/vm/db1/state", data={"state": "stop"}).status_code == 200

    def listed(query: str) -> list[str]:
        status, _, body = raw_get(client, "/vm?" + query)
        assert status == 200, body
        return names(body)

    assert listed("node=node2") == ["db1", "web2"]
    assert listed("node=node2&negate=true") == ["web1"]
    assert listed("tag=web") == ["web1", "web2"]
    assert listed("tag=web&negate=true") == ["db1"]
    assert listed("state=stop") == ["db1"]
    assert listed("state=stop&negate=true") == ["web1", "web2"]
    assert listed("limit=^web") == ["web1", "web2"]
    assert listed("limit=^web&node=node1") == ["web1"]
    assert listed("tag=none") == []
    _, headers, _ = raw_get(client, "/vm?node=node2")
    assert raw_get(client, "/vm?node=node2", **{"If-None-Match": headers["etag"]})[0] == 304
    assert raw_get(client, "/vm?node=node1", **{"If-None-Match": headers["etag"]})[0] == 200
    assert raw_get(client, "/vm?node=nowhere")[0] == 510


def test_a_removed_vm_leaves_the_list(served: tuple[ApiServer, ApiClient],
                                      sim: SimCluster) -> None:
    server, client = served
    uuid = define(client, "gone")
    define(client, "kept")
    _, headers, _ = raw_get(client, "/vm")
    spec = sim.state.cache.entry(sim.state.paths.vm(uuid))
    assert spec is not None
    sim.state.store.commit([Op.delete(sim.state.paths.vm(uuid), spec.version),
                            Op.delete(sim.state.paths.vm_name("gone"))])
    status, _, body = raw_get(client, "/vm", **{"If-None-Match": headers["etag"]})
    assert status == 200 and names(body) == ["kept"]
    assert server.ctx.vm_list.fragment(uuid) is None  # its fragment is not kept either


def test_a_snapshot_age_moves_with_the_clock(served: tuple[ApiServer, ApiClient],
                                             sim: SimCluster) -> None:
    _, client = served
    uuid = define(client, "snapped")
    define(client, "plain")
    record = VmSnapshot(name="s1", timestamp=sim.clock() - 5, consistency=STOPPED,
                        xml=tiny_guest_xml("snapped"))
    sim.state.store.commit([Op.create(sim.state.paths.vm_snapshots(uuid), {}),
                            Op.create(sim.state.paths.vm_snapshot(uuid, "s1"), record.to_doc())])

    def age() -> tuple[Any, str]:
        _, headers, body = raw_get(client, "/vm?limit=snapped")
        return json.loads(body)[0]["snapshots"][0]["age"], headers["etag"]

    first, etag = age()
    assert first == 5 and age() == (5, etag)
    sim.clock.advance(3)
    assert raw_get(client, "/vm?limit=snapped", **{"If-None-Match": etag})[0] == 200
    assert age()[0] == 8


def test_accept_encoding_parsing() -> None:
    assert accepts_gzip("gzip")
    assert accepts_gzip("deflate, GZIP;q=0.5")
    assert accepts_gzip("*")
    assert accepts_gzip("x-gzip")
    assert not accepts_gzip("")
    assert not accepts_gzip("identity")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("gzip;q=0.0, *")
    assert not accepts_gzip("*;q=0")
    assert not accepts_gzip("gzip;q=x")


def test_a_build_that_fails_leaves_its_rows_to_the_next(served: tuple[ApiServer, ApiClient],
                                                       sim: SimCluster) -> None:
    """A request whose rebuild raised (a 500) must not leave the changed VMs' rows stale."""
    server, client = served
    define(client, "flaky")
    assert raw_get(client, "/vm")[0] == 200
    answers = server.ctx.vm_answers
    facts = answers._facts
    answers._facts = lambda key: 1 / 0  # type: ignore[assignment,misc,return-value]
    assert client.post("/vm/flaky/state", data={"state": "stop"}).status_code == 200
    assert raw_get(client, "/vm")[0] == 500
    answers._facts = facts
    status, _, body = raw_get(client, "/vm")
    assert status == 200 and json.loads(body)[0]["state"] == "stop"


def test_a_large_list_is_sent_off_the_loop_on_a_kept_alive_connection(
        served: tuple[ApiServer, ApiClient], sim: SimCluster,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies from `BULK_BODY` on are written by a sender thread (pvcd/api/bulk_send.py):
    the same bytes and headers, and the connection serves its next request."""
    server, client = served
    for i in range(5):
        watch_caught_up(sim, define(client, f"big{i}"))
    _, _, small = raw_get(client, "/vm")
    monkeypatch.setattr(bulk_send, "BULK_BODY", 256)
    senders: list[str] = []
    send_all = bulk_send.send_all

    def spied(*args: Any) -> None:
        senders.append(threading.current_thread().name)
        send_all(*args)

    monkeypatch.setattr(bulk_send, "send_all", spied)
    url = urllib.parse.urlsplit(client.base)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
    try:
        for encoding in ("identity", "gzip", "identity"):
            connection.request("GET", f"{url.path}/vm",
                               headers={"X-Api-Key": TOKEN, "Accept-Encoding": encoding})
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200
            assert int(response.getheader("Content-Length") or -1) == len(body)
            assert (gzip.decompress(body) if encoding == "gzip" else body) == small
            etag = response.getheader("ETag") or ""
        connection.request("GET", f"{url.path}/vm",
                           headers={"X-Api-Key": TOKEN, "If-None-Match": etag})
        response = connection.getresponse()
        assert (response.status, response.read()) == (304, b"")
    finally:
        connection.close()
    assert len(senders) == 3 and all(name.startswith("api-send") for name in senders)
    deadline = time.monotonic() + 5  # (the loop counts a request done just after sending it)
    while server.ctx.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.ctx.in_flight == 0
