"""Bounded work per request, in process: the real API over the real store on the session
ZooKeeper (issue 13, findings 5-7). A costly `limit` answers within a second and leaves the
daemon free; numbers of thousands of digits, names ZooKeeper cannot store and documents larger
than a ZooKeeper request are refused with a 510 that says why, and nothing is written; the
ZooKeeper session is never dropped."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState

from pvcd.lab.guest import tiny_guest_xml
from pvcd.state.request_size import MAX_REQUEST_BYTES
from pvcd.vmxml import MAX_XML_BYTES
from tests.fakes.api import ApiClient, running_api
from tests.fakes.nodes import SimCluster

TEN_K_DIGITS = "9" * 10_000


@pytest.fixture
def api(sim: SimCluster) -> Iterator[ApiClient]:
    for name in ("node1", "node2"):
        sim.add_node(name)
    sim.step()
    with running_api(sim.state, sim.clock) as client:
        yield client


def vm_names(api: ApiClient) -> list[str]:
    response = api.get("/vm")
    assert response.status_code == 200, response.text
    return sorted(v["name"] for v in response.json())


def refused(response: object, *words: str) -> str:
    status, body = response.status_code, response.json()  # type: ignore[attr-defined]
    assert status == 510, (status, body)
    message = str(body["message"])
    for word in words:
        assert word in message, message
    return message


def with_description(name: str, description: str) -> str:
    return tiny_guest_xml(name).replace("</name>", f"</name>\n  <description>{description}"
                                        "</description>", 1)


# --- limit -----------------------------------------------------------------------------------

def test_a_catastrophic_pattern_answers_at_once(api: ApiClient) -> None:
    """`(a+)+$` against `aaa…a!` is exponential for a backtracking engine (Python's `re` took
    minutes for 30 characters, holding the GIL: the whole daemon stopped)."""
    for index in range(5):
        assert api.post("/vm", data={"xml": tiny_guest_xml("a" * 30 + f"!{index}")}
                        ).status_code == 200
    started = time.monotonic()
    response = api.get("/vm", params={"limit": "(a+)+$"})
    assert time.monotonic() - started < 1.0
    assert response.status_code == 200 and response.json() == []
    assert len(api.get("/vm", params={"limit": "^a{30}!"}).json()) == 5


@pytest.mark.parametrize("pattern, words", [
    ("(.*){1000}", ("too complex", "64 KiB")),
    ("((.?){50}){19}", ("too complex",)),
    ("(a)\\1", ("not a valid regular expression", "no backreferences")),
    ("(?=a)b", ("not a valid regular expression", "lookaround")),
    ("x" * 257, ("at most 256 characters",)),
    ("(", ("not a valid regular expression",)),
])
def test_a_bad_or_costly_pattern_is_a_510_within_a_second_while_others_are_served(
        api: ApiClient, pattern: str, words: tuple[str, ...]) -> None:
    other = ApiClient(api.base, api.token)  # another client, its own connection
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        bad = pool.submit(api.get, "/vm", params={"limit": pattern})
        good = pool.submit(other.get, "/node")
        assert good.result().status_code == 200
        refused(bad.result(), *words)
        assert time.monotonic() - started < 1.0
    other.session.close()
    for path in ("/node", "/network"):  # every list refuses it the same way
        refused(api.get(path, params={"limit": pattern}), *words)


# --- numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("xml", [
    tiny_guest_xml("big").replace("<memory unit='MiB'>64</memory>",
                                  f"<memory unit='KiB'>{TEN_K_DIGITS}</memory>"),
    tiny_guest_xml("big").replace("<vcpu>1</vcpu>", f"<vcpu>{TEN_K_DIGITS}</vcpu>"),
])
def test_ten_thousand_digits_in_the_xml_are_a_510(api: ApiClient, xml: str) -> None:
    message = refused(api.post("/vm", data={"xml": xml}), "at most 20 digits")
    assert len(message) < 400  # the number is not echoed whole
    assert vm_names(api) == []


def test_ten_thousand_digits_in_a_value_are_a_510(api: ApiClient) -> None:
    refused(api.post("/network", data={"vni": TEN_K_DIGITS, "description": "n",
                                       "nettype": "managed"}), "VXLAN ID from 1 to")
    assert api.post("/network", data={"vni": 7, "description": "n7",
                                      "nettype": "managed"}).status_code == 200
    refused(api.post("/network/7/acl", data={"description": "a", "direction": "in",
                                             "rule": "drop", "order": TEN_K_DIGITS}),
            "order", "an integer from 0")
    refused(api.get("/node/node1/domain-state", params={"wait": "yes",
                                                        "wait_timeout": TEN_K_DIGITS}),
            "wait_timeout")
    assert [n["vni"] for n in api.get("/network").json()] == [7]


# --- names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, words", [
    (".", ("'.' is not allowed",)),
    ("..", ("'..' is not allowed",)),
    ("web\ufffd", ("U+FFFD", "ZooKeeper cannot store")),
    ("web\U0001f600", ("U+1F600", "e.g. emoji")),
    ("web\ufffc", ("U+FFFC",)),
])
def test_a_vm_name_zookeeper_cannot_store_is_refused_with_our_message(
        api: ApiClient, name: str, words: tuple[str, ...]) -> None:
    message = refused(api.post("/vm", data={"xml": tiny_guest_xml(name)}), "invalid VM name",
                      *words)
    assert "/vm-names/" not in message and "Invalid path" not in message
    assert vm_names(api) == []
    assert api.post("/vm", data={"xml": tiny_guest_xml("keep")}).status_code == 200
    refused(api.post("/vm/keep/rename", data={"new_name": name}), "invalid VM name", *words)
    assert vm_names(api) == ["keep"]


@pytest.mark.parametrize("description", [".", "..", "net\n", "a/b", "nét"])
def test_a_network_description_zookeeper_cannot_store_is_refused(
        api: ApiClient, description: str) -> None:
    refused(api.post("/network", json={"vni": 9, "description": description,
                                       "nettype": "managed"}), "description")
    assert api.get("/network").json() == []


def test_an_acl_description_with_a_newline_is_refused(api: ApiClient) -> None:
    assert api.post("/network", data={"vni": 8, "description": "n8",
                                      "nettype": "managed"}).status_code == 200
    message = refused(api.post("/network/8/acl", json={"description": "acl\n",
                                                       "direction": "in", "rule": "drop"}),
                      "description")
    assert "Invalid path" not in message
    assert api.get("/network/8/acl").json() == []


# --- sizes -----------------------------------------------------------------------------------

@pytest.fixture
def session_events(zk: KazooClient) -> Iterator[list[KazooState]]:
    """Every change of the store's ZooKeeper connection state while the test runs."""
    events: list[KazooState] = []
    stop = threading.Event()

    def listener(state: KazooState) -> bool:
        events.append(state)
        return stop.is_set()  # True removes the listener

    zk.add_listener(listener)
    yield events
    stop.set()
    zk.remove_listener(listener)


def test_a_large_xml_is_refused_and_the_session_stays(
        api: ApiClient, zk: KazooClient, session_events: list[KazooState]) -> None:
    session = zk.client_id
    padding = "x" * int(0.9 * 1024 * 1024)
    message = refused(api.post("/vm", data={"xml": with_description("big", padding)}),
                      f"larger than {MAX_XML_BYTES} bytes")
    assert "512 KiB" in message
    assert vm_names(api) == []
    assert session_events == [] and zk.client_id == session and zk.connected


def test_a_document_larger_than_a_zookeeper_request_is_refused_and_the_session_stays(
        api: ApiClient, zk: KazooClient, session_events: list[KazooState]) -> None:
    """Under the XML limit, but stored with its description copied and JSON-escaped (6 bytes
    per 'é'), more than ZooKeeper takes: sent, it would close the primary's connection."""
    session = zk.client_id
    xml = with_description("wide", "é" * 150_000)
    assert len(xml.encode()) < MAX_XML_BYTES
    message = refused(api.post("/vm", data={"xml": xml}), f"{MAX_REQUEST_BYTES} bytes",
                      "ZooKeeper", "1 MiB")
    assert "nothing was changed" in message
    assert vm_names(api) == []
    # the same through PUT of an existing VM
    assert api.post("/vm", data={"xml": with_description("wide", "small")}).status_code == 200
    refused(api.call("PUT", "/vm/wide", data={"xml": xml}), f"{MAX_REQUEST_BYTES} bytes")
    (vm,) = api.get("/vm/wide").json()
    assert vm["description"] == "small"
    assert session_events == [] and zk.client_id == session and zk.connected
