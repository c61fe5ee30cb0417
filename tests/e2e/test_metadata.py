"""The cloud-init metadata service (extensions.md §4) on a real lab: three `pvcd` processes in
their own network namespaces, real VXLAN, dnsmasq and nftables, VMs on the libvirt test driver,
and "guests" (namespaces on a node's bridge) that take a DHCP lease and ask
http://169.254.169.254/ as cloud-init's EC2 data source does: through their default gateway.

What a guest must get: its VM's UUID, name and profile, its profile's user-data (as edited),
404 for `PUT /latest/api/token`. What it must not: anything when it has no lease, or when it
took another guest's address. The service moves with the primary within the 2 s handover
budget (measured and printed), passes the network's ACLs, and outlasts a slowloris.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from pvcd.domain.provisioner import Profile, Userdata
from pvcd.drivers.netns import run_in_netns
from pvcd.lab import netns
from pvcd.lab.lab import Lab
from pvcd.state.codec import decode, encode
from tests.e2e.labclient import LabClient, wait_until
from tests.e2e.test_networks import NODES, add_network, delete_network, ok, ping, vm

pytestmark = [pytest.mark.slow, pytest.mark.needs_root]

VNI = 141
GATEWAY = f"10.{VNI}.0.1"
MAC = "52:54:00:41:00:01"
USERDATA = "#cloud-config\nhostname: md141\n"


@pytest.fixture(scope="module")
def mdlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabClient]]:
    lab = Lab(tmp_path_factory.mktemp("mdlab") / "lab")
    info = lab.up(nodes=3, network=True)
    try:
        yield lab, LabClient(info)
    finally:
        lab.down()


@contextmanager
def zookeeper(lab: Lab) -> Iterator[KazooClient]:
    """A client of the lab's ZooKeeper, which listens on the underlay: its connection thread
    is started inside that namespace (threads inherit the namespace of the one that made
    them)."""
    client = lab._info().zookeeper_client()
    run_in_netns(lab.network().underlay, lambda: client.start(timeout=10), timeout=15)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def put(client: KazooClient, path: str, doc: Any) -> None:
    if client.exists(path):
        client.set(path, encode(doc))
    else:
        client.create(path, encode(doc))


def vm_xml(name: str, mac: str, bridge: str) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
            f"<interface type='bridge'><mac address='{mac}'/><source bridge='{bridge}'/>"
            "<model type='virtio'/></interface></devices></domain>")


def metadata(ns: str, path: str, method: str = "GET", timeout: float = 3.0) -> tuple[int, str]:
    """One request from inside guest namespace `ns` to http://169.254.169.254`path`."""
    sock = run_in_netns(ns, lambda: socket.create_connection(("169.254.169.254", 80),
                                                             timeout=timeout))
    connection = http.client.HTTPConnection("169.254.169.254", 80, timeout=timeout)
    connection.sock = sock
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def lease(ns: str, script_dir: Path) -> tuple[str, str]:
    """A DHCP lease for the guest in `ns` (udhcpc), set up as a DHCP client would: the
    address, and the default route through the router the lease names; (address, router)."""
    script = script_dir / f"udhcpc-{ns}.sh"
    out = script_dir / f"udhcpc-{ns}.out"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && echo "$ip $router" > {out}\nexit 0\n')
    script.chmod(0o755)
    netns.in_ns(ns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1",
                "-s", str(script), timeout=30)
    address, router = out.read_text().split()
    netns.run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    netns.run("ip", "-n", ns, "route", "add", "default", "via", router)
    return address, router


def loopback_addresses(lab: Lab, node: str) -> list[str]:
    out = netns.run("ip", "-n", lab.network().node_ns(node), "-j", "addr", "show", "lo").stdout
    return [a["local"] for a in json.loads(out)[0]["addr_info"]]


def test_guests_get_their_own_metadata_and_nothing_else(mdlab: tuple[Lab, LabClient],
                                                        tmp_path: Path) -> None:
    lab, api = mdlab
    add_network(api, VNI, lab, dhcp4="yes", dhcp4_start=f"10.{VNI}.0.50",
                dhcp4_end=f"10.{VNI}.0.99")
    primary = api.primary()
    assert primary is not None
    other = next(n for n in NODES if n != primary)
    third = next(n for n in NODES if n not in (primary, other))

    # a VM made from profile p141, whose userdata is u141 (written as the provisioner would)
    ok(api.post("/vm", data={"xml": vm_xml("md141", MAC, f"vmbr{VNI}")}))
    uuid = ok(api.get("/vm/md141"))[0]["uuid"]
    with zookeeper(lab) as client:
        root = lab._info().zk_root
        put(client, f"{root}/provisioner/userdata/u141", Userdata("u141", USERDATA).to_doc())
        put(client, f"{root}/provisioner/profile/p141",
            Profile("p141", system_template="small", userdata="u141").to_doc())
        raw, stat = client.get(f"{root}/vms/{uuid}")
        client.set(f"{root}/vms/{uuid}", encode({**decode(raw), "profile": "p141"}),
                   version=stat.version)

    # the guest, on a node that is not the primary, gets a lease whose router is the gateway
    guest = vm(lab, other, VNI, "g141", mac=MAC)
    address, router = lease(guest, tmp_path)
    assert router == GATEWAY  # so 169.254.169.254 is reached through the primary
    # (the primary reports the lease to the cluster within its poll interval)
    wait_until(lambda: metadata(guest, "/latest/meta-data/instance-id") == (200, uuid),
               timeout=10)
    assert metadata(guest, "/") == (209, '{"message": "pvcd metadata API version 1"}')
    assert metadata(guest, "/latest/meta-data/") == \
        (200, "instance-id\nlocal-hostname\nhostname\nname\nprofile")
    for key in ("hostname", "local-hostname", "name"):
        assert metadata(guest, f"/2009-04-04/meta-data/{key}") == (200, "md141")
    assert metadata(guest, "/latest/meta-data/profile") == (200, "p141")
    assert metadata(guest, "/latest/user-data") == (200, USERDATA)
    assert metadata(guest, "/latest/api/token", method="PUT")[0] == 404
    assert metadata(guest, "/latest/meta-data/public-keys/")[0] == 404

    # user-data is looked up at request time
    with zookeeper(lab) as client:
        put(client, f"{lab._info().zk_root}/provisioner/userdata/u141",
            Userdata("u141", "#cloud-config\nhostname: edited\n").to_doc())
    wait_until(lambda: metadata(guest, "/latest/user-data") ==
               (200, "#cloud-config\nhostname: edited\n"), timeout=5)

    # a guest with a hand-set address and no lease is not identified
    stranger = vm(lab, third, VNI, "s141", f"10.{VNI}.0.77/24")
    netns.run("ip", "-n", stranger, "route", "add", "default", "via", GATEWAY)
    assert metadata(stranger, "/latest/meta-data/instance-id")[0] == 404
    assert metadata(stranger, "/")[0] == 209  # (the root names no VM)

    # nor is one that takes the guest's address: the primary's neighbour entry shows its MAC
    spoof = vm(lab, third, VNI, "x141", f"{address}/24", mac="52:54:00:41:00:99")
    netns.run("ip", "-n", spoof, "route", "add", "default", "via", GATEWAY)
    assert metadata(spoof, "/latest/meta-data/instance-id")[0] == 404
    assert metadata(spoof, "/latest/user-data")[0] == 404
    lab.network().detach_vm("x141")
    wait_until(lambda: metadata(guest, "/latest/meta-data/instance-id", timeout=1) ==
               (200, uuid), timeout=10)

    # the network's ACLs drop the guest's traffic, but not its metadata requests
    ok(api.post(f"/network/{VNI}/acl", data={"description": "all-out", "direction": "out",
                                             "rule": "drop"}))
    ok(api.post(f"/network/{VNI}/acl", data={"description": "all-in", "direction": "in",
                                             "rule": "drop"}))
    wait_until(lambda: not ping(guest, GATEWAY, wait=0.5), timeout=10)
    assert metadata(guest, "/latest/meta-data/instance-id") == (200, uuid)
    for description, direction in (("all-out", "out"), ("all-in", "in")):
        ok(api.call("DELETE", f"/network/{VNI}/acl/{description}",
                    data={"direction": direction}))
    wait_until(lambda: ping(guest, GATEWAY), timeout=10)

    # a slowloris and oversized requests from the stranger do not stop the service
    slow = [run_in_netns(stranger, lambda: socket.create_connection(("169.254.169.254", 80),
                                                                    timeout=3))
            for _ in range(12)]
    for sock in slow:
        try:
            sock.sendall(b"GET /latest/user-data HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            pass  # refused already (over the per-address limit)
    big = run_in_netns(stranger, lambda: socket.create_connection(("169.254.169.254", 80),
                                                                  timeout=3))
    try:
        big.sendall(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
    except OSError:
        pass
    started = time.monotonic()
    assert metadata(guest, "/latest/meta-data/instance-id") == (200, uuid)
    print(f"metadata answer while a slowloris holds its connections: "
          f"{(time.monotonic() - started) * 1000:.0f} ms")
    for sock in [*slow, big]:
        sock.close()

    # handover: the service answers from the new primary, and is gone from the old one
    assert "169.254.169.254" in loopback_addresses(lab, primary)
    started = time.monotonic()
    ok(api.post(f"/node/{other}/coordinator-state", data={"coordinator-state": "primary"}))
    # answered by the new primary: the address has left the old one (an answer the old primary
    # gives before it hands over proves nothing)
    wait_until(lambda: "169.254.169.254" in loopback_addresses(lab, other) and
               "169.254.169.254" not in loopback_addresses(lab, primary) and
               metadata(guest, "/latest/meta-data/instance-id", timeout=0.1) == (200, uuid),
               timeout=10, interval=0.01)
    took = time.monotonic() - started
    print(f"primary change → metadata answers from the new primary: {took:.2f} s")
    assert took < 2.0, f"the metadata service took {took:.2f} s to move (budget: 2 s)"
    assert api.primary() == other
    assert "169.254.169.254" not in loopback_addresses(lab, primary)
    assert "169.254.169.254" in loopback_addresses(lab, other)
    assert metadata(guest, "/latest/user-data") == (200, "#cloud-config\nhostname: edited\n")

    for name in ("g141", "s141"):
        lab.network().detach_vm(name)
    ok(api.call("DELETE", "/vm/md141"))
    delete_network(api, VNI)
