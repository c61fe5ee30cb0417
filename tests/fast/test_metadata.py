"""The metadata service's rules (extensions.md §4) on a real cache, and its HTTP server's bounds
on real loopback sockets; the lab's end-to-end test is tests/e2e/test_metadata.py.

The answers: every path of §4's table, the identification (lease → MAC → VM → the host's
neighbour entry) and its refusals, user-data looked up at request time. The server: a slowloris,
an oversized head or body, a malformed request and a failing or hanging answer each cost only
their own connection, while another guest is answered.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pvcd.config import NetworkDriverSection
from pvcd.controllers.metadata import MetadataService
from pvcd.controllers.metadata_http import Limits, MetadataHttpServer, parse_head
from pvcd.domain.metadata import (
    KEY_LIST,
    ROOT,
    USER_DATA,
    LeaseEntry,
    Reply,
    lease_mac,
    route,
    vm_with_interface,
)
from pvcd.domain.provisioner import Profile, Userdata
from pvcd.domain.records import DhcpLease, NetworkSpec, StaticLeaseSpec, VmSpec
from pvcd.drivers.netlink import NetlinkDriver
from tests.fakes.state import ClusterState

MAC = "52:54:00:0e:00:01"
OTHER_MAC = "52:54:00:0e:00:02"
UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


# --- paths (pure) --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "target", "resource"), [
    ("GET", "/", ROOT),
    ("GET", "/latest/meta-data/", KEY_LIST),
    ("GET", "/2009-04-04/meta-data/", KEY_LIST),
    ("GET", "/latest/meta-data/instance-id", "instance-id"),
    ("GET", "/2009-04-04/meta-data/local-hostname", "local-hostname"),
    ("GET", "/latest/meta-data/hostname", "hostname"),
    ("GET", "/latest/meta-data/name", "name"),
    ("GET", "/latest/meta-data/profile?x=1", "profile"),
    ("GET", "/latest/user-data", USER_DATA),
    ("GET", "/2021-01-03/user-data", USER_DATA),
    ("PUT", "/latest/api/token", None),
    ("GET", "/latest/api/token", None),
    ("POST", "/latest/user-data", None),
    ("HEAD", "/latest/meta-data/instance-id", None),
    ("GET", "/latest/meta-data", None),
    ("GET", "/latest/meta-data/public-keys/", None),
    ("GET", "/latest/meta-data/instance-id/", None),
    ("GET", "/v1/meta-data/instance-id", None),
    ("GET", "/2009-4-4/user-data", None),
    ("GET", "/latest/user-data/", None),
    ("GET", "/latest/../latest/user-data", None),
    ("GET", "", None),
])
def test_route_serves_exactly_the_table(method: str, target: str, resource: str | None) -> None:
    assert route(method, target) == resource


def test_lease_mac_takes_one_unexpired_holder() -> None:
    now = 1000.0
    active = [LeaseEntry(MAC.upper(), "10.14.0.50", 2000), LeaseEntry(OTHER_MAC, "10.14.0.51", 10)]
    assert lease_mac("10.14.0.50", active, [], now) == MAC
    assert lease_mac("10.14.0.51", active, [], now) is None  # expired
    assert lease_mac("10.14.0.52", active, [LeaseEntry(OTHER_MAC, "10.14.0.52")], now) == OTHER_MAC
    assert lease_mac("10.14.0.50", active, [LeaseEntry(OTHER_MAC, "10.14.0.50")], now) is None
    assert lease_mac("10.14.0.50", [LeaseEntry("nonsense", "10.14.0.50")], [], now) is None


def test_vm_with_interface_needs_one_vm_on_that_bridge() -> None:
    vms = [("a", [(MAC.upper(), "vmbr14")]), ("b", [(OTHER_MAC, "vmbr14"), (MAC, "vmbr15")])]
    assert vm_with_interface(MAC, "vmbr14", vms) == "a"
    assert vm_with_interface(MAC, "vmbr15", vms) == "b"
    assert vm_with_interface(MAC, "vmbr16", vms) is None
    assert vm_with_interface(MAC, "vmbr14", [*vms, ("c", [(MAC, "vmbr14")])]) is None


def test_parse_head_takes_plain_requests_only() -> None:
    request = parse_head(b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 3\r\n\r\n", 32)
    assert request is not None and (request.method, request.content_length) == ("PUT", 3)
    for bad in (b"GET /\r\n\r\n", b"GET http://x/ HTTP/1.1\r\n\r\n", b"GET / HTTP/2\r\n\r\n",
                b"GET / HTTP/1.1\r\nbroken\r\n\r\n",
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 33 + b"\r\n"):
        assert parse_head(bad, 32) is None, bad


# --- identification and answers on a real cache -------------------------------------------


def vm_xml(name: str, mac: str, bridge: str = "vmbr14") -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
            f"<interface type='bridge'><mac address='{mac}'/><source bridge='{bridge}'/>"
            "<model type='virtio'/></interface></devices></domain>")


class Neighbours:
    """The kernel's neighbour table as a test sets it: (bridge, address) → MAC."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], str] = {}

    def mac_of(self, bridge: str, address: str) -> str | None:
        return self.entries.get((bridge, address))


@pytest.fixture
def guest(cluster_state: ClusterState) -> Iterator[tuple[ClusterState, MetadataService,
                                                          Neighbours]]:
    state, paths = cluster_state, cluster_state.paths
    state.put(paths.network(14), NetworkSpec(14, "net14", "managed", ip4_network="10.14.0.0/24",
                                             ip4_gateway="10.14.0.1").to_doc())
    for container in paths.network_containers(14):
        state.put(container, {})
    state.put(paths.network_lease(14, MAC), DhcpLease(MAC, "10.14.0.50", "web1",
                                                      int(time.time()) + 3600).to_doc())
    state.put(paths.vm(UUID), VmSpec(UUID, "web1", vm_xml("web1", MAC), "node1",
                                     profile="web").to_doc())
    state.put(paths.provisioner_object("profile", "web"),
              Profile("web", system_template="small", userdata="web-init").to_doc())
    state.put(paths.provisioner_object("userdata", "web-init"),
              Userdata("web-init", "#cloud-config\nhostname: web1\n").to_doc())
    neighbours = Neighbours()
    neighbours.entries[("vmbr14", "10.14.0.50")] = MAC
    service = MetadataService("node1", state.view, NetlinkDriver(), NetworkDriverSection(),
                              neighbours.mac_of)
    yield state, service, neighbours


def get(service: MetadataService, path: str, source: str = "10.14.0.50",
        method: str = "GET") -> tuple[int, str]:
    reply = service.answer(14, source, method, path)
    return reply.status, reply.body.decode()


def test_every_path_of_the_table(guest: Any) -> None:
    _state, service, _neighbours = guest
    assert get(service, "/") == (209, '{"message": "pvcd metadata API version 1"}')
    assert get(service, "/latest/meta-data/") == \
        (200, "instance-id\nlocal-hostname\nhostname\nname\nprofile")
    assert get(service, "/latest/meta-data/instance-id") == (200, UUID)
    for key in ("local-hostname", "hostname", "name"):
        assert get(service, f"/2009-04-04/meta-data/{key}") == (200, "web1")
    assert get(service, "/latest/meta-data/profile") == (200, "web")
    assert get(service, "/latest/user-data") == (200, "#cloud-config\nhostname: web1\n")
    assert get(service, "/latest/api/token", method="PUT")[0] == 404
    assert get(service, "/latest/meta-data/public-keys/")[0] == 404


def test_user_data_is_read_at_request_time(guest: Any) -> None:
    state, service, _neighbours = guest
    paths = state.paths
    state.put(paths.provisioner_object("userdata", "web-init"),
              Userdata("web-init", "#cloud-config\nhostname: edited\n").to_doc())
    assert get(service, "/latest/user-data") == (200, "#cloud-config\nhostname: edited\n")
    state.put(paths.provisioner_object("profile", "web"),
              Profile("web", system_template="small", userdata=None).to_doc())
    assert get(service, "/latest/user-data") == (200, "")
    state.change(paths.vm(UUID), profile="../userdata/web-init")  # not a name: nothing
    assert get(service, "/latest/user-data") == (200, "")
    assert get(service, "/latest/meta-data/profile") == (200, "../userdata/web-init")
    state.change(paths.vm(UUID), profile=None)
    assert get(service, "/latest/meta-data/profile") == (200, "")


def test_who_cannot_be_identified_gets_404(guest: Any) -> None:
    state, service, neighbours = guest
    paths = state.paths
    # a guest that took the address: the host's neighbour entry shows its own MAC
    neighbours.entries[("vmbr14", "10.14.0.50")] = OTHER_MAC
    assert get(service, "/latest/meta-data/instance-id")[0] == 404
    del neighbours.entries[("vmbr14", "10.14.0.50")]
    assert get(service, "/latest/meta-data/instance-id")[0] == 404
    neighbours.entries[("vmbr14", "10.14.0.50")] = MAC
    assert get(service, "/latest/meta-data/instance-id")[0] == 200
    # no lease for the address (a hand-set one)
    neighbours.entries[("vmbr14", "10.14.0.77")] = MAC
    assert get(service, "/latest/meta-data/instance-id", source="10.14.0.77")[0] == 404
    # the root answers anyone on a managed bridge (it says nothing about a VM)
    assert get(service, "/", source="10.14.0.77")[0] == 209
    # a second VM with the same MAC on the bridge: nobody is identified
    twin = "2b4e28ba-2fa1-11d2-883f-0016d3cca427"
    state.put(paths.vm(twin), VmSpec(twin, "twin", vm_xml("twin", MAC), "node1").to_doc())
    assert get(service, "/latest/meta-data/instance-id")[0] == 404
    state.put(paths.vm(twin), VmSpec(twin, "twin", vm_xml("twin", MAC, "vmbr15"),
                                     "node1").to_doc())
    assert get(service, "/latest/meta-data/instance-id") == (200, UUID)
    # a static lease identifies as well; an expired active one does not
    state.put(paths.network_lease(14, MAC), DhcpLease(MAC, "10.14.0.50", None, 5).to_doc())
    assert get(service, "/latest/meta-data/instance-id")[0] == 404
    state.put(paths.network_static_lease(14, MAC), StaticLeaseSpec(MAC, "10.14.0.50").to_doc())
    assert get(service, "/latest/meta-data/instance-id") == (200, UUID)
    # garbage in a lease document is no lease, and no error
    state.put(paths.network_lease(14, OTHER_MAC), {"mac": OTHER_MAC, "ip": "10.14.0.60",
                                                   "expires": "soon"})
    neighbours.entries[("vmbr14", "10.14.0.60")] = OTHER_MAC
    assert get(service, "/latest/meta-data/instance-id", source="10.14.0.60")[0] == 404


# --- the HTTP server's bounds on real sockets ----------------------------------------------

LIMITS = Limits(request_seconds=0.5, answer_seconds=0.5, per_source=3, per_listener=20,
                total=30, head_bytes=1024, body_bytes=64)


@pytest.fixture
def server() -> Iterator[tuple[MetadataHttpServer, int, threading.Event]]:
    hang = threading.Event()  # set: the answer blocks until released
    release = threading.Event()

    def answer(key: int, source: str, method: str, target: str) -> Reply:
        if target == "/boom":
            raise RuntimeError("a bug")
        if target == "/hang":
            release.wait(5)
        return Reply(200, f"{key} {source} {method} {target}".encode())

    http_server = MetadataHttpServer(answer, LIMITS)
    http_server.start()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    http_server.listen(7, listener)
    yield http_server, port, hang
    release.set()
    http_server.stop()


def request(port: int, path: str = "/x", source: str = "127.0.0.3",
            method: str = "GET") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3,
                                            source_address=(source, 0))
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def raw(port: int, data: bytes, source: str = "127.0.0.2") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=3,
                                    source_address=(source, 0))
    sock.sendall(data)
    return sock


def closed_without_reply(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def test_answers_name_the_listener_and_the_source(server: Any) -> None:
    _server, port, _hang = server
    assert request(port, "/latest/meta-data/name") == \
        (200, "7 127.0.0.3 GET /latest/meta-data/name")
    assert request(port, "/latest/api/token", method="PUT")[1].endswith("PUT /latest/api/token")


def test_a_slowloris_costs_only_its_own_connections(server: Any) -> None:
    _server, port, _hang = server
    slow = [raw(port, b"GET /latest/user-data HTTP/1.1\r\nHost: a\r\n") for _ in range(3)]
    started = time.monotonic()
    assert request(port) == (200, "7 127.0.0.3 GET /x")  # another guest: at once
    assert time.monotonic() - started < 0.3
    extra = raw(port, b"GET / HTTP/1.1\r\n")  # a fourth from the same address: refused
    assert closed_without_reply(extra)
    for sock in slow:  # the slow ones are cut at request_seconds
        assert closed_without_reply(sock)
    assert time.monotonic() - started < 2
    assert request(port, source="127.0.0.2")[0] == 200  # and the address is served again


def test_oversized_and_malformed_requests_are_refused(server: Any) -> None:
    _server, port, _hang = server
    assert closed_without_reply(raw(port, b"GET /" + b"a" * 4096 + b" HTTP/1.1\r\n\r\n"))
    assert closed_without_reply(raw(port, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n"))
    assert closed_without_reply(raw(port, b"PUT / HTTP/1.1\r\nContent-Length: 65\r\n\r\n"))
    bad = raw(port, b"GET /\r\n\r\n")
    assert bad.recv(100).startswith(b"HTTP/1.1 400 ")
    bad.close()
    assert request(port, "/small", method="PUT")[0] == 200
    assert request(port) == (200, "7 127.0.0.3 GET /x")


def test_a_failing_or_hanging_answer_is_a_500_and_the_service_goes_on(server: Any) -> None:
    _server, port, _hang = server
    assert request(port, "/boom")[0] == 500
    assert request(port, "/hang")[0] == 500  # after answer_seconds
    assert request(port) == (200, "7 127.0.0.3 GET /x")


def test_a_closed_listener_hears_nothing(server: Any) -> None:
    http_server, port, _hang = server
    http_server.close(7)
    assert http_server.listening() == []
    with pytest.raises(OSError):
        request(port)


def test_the_server_serves_again_after_a_stop(server: Any) -> None:
    """A node that is primary again (a handover back) starts the same server anew."""
    http_server, port, _hang = server
    slow = raw(port, b"GET / HTTP/1.1\r\n")  # a connection open at the stop is closed
    http_server.stop()
    assert closed_without_reply(slow)
    http_server.start()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    http_server.listen(9, listener)
    assert request(listener.getsockname()[1]) == (200, "9 127.0.0.3 GET /x")
