"""NetlinkDriver against real bridges and VXLAN tunnels in throw-away namespaces."""

from __future__ import annotations

import asyncio
import time

import pytest

from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound
from pvcd.drivers.ifnames import bridge_name, vlan_name, vxlan_mtu, vxlan_name
from pvcd.drivers.netlink import NetlinkDriver

pytestmark = pytest.mark.needs_root

VNI = 4242


def build_network(driver: NetlinkDriver, node, peers: set[str]) -> None:
    """What the network controller will do on each node for a managed network."""
    mtu = vxlan_mtu(driver.link_mtu(node.dev))
    driver.ensure_bridge(bridge_name(VNI), mtu)
    driver.ensure_vxlan(vxlan_name(VNI), VNI, node.ip, node.dev)
    driver.ensure_port(bridge_name(VNI), vxlan_name(VNI))
    driver.set_vxlan_peers(vxlan_name(VNI), peers)


def attach_vm(net, node, vm_ns: str, tap: str, address: str) -> None:
    """A 'VM' namespace with eth0 on the node's bridge."""
    net.veth(node.ns, tap, vm_ns, "eth0", mtu=1450)
    net.sh("ip", "-n", node.ns, "link", "set", tap, "master", bridge_name(VNI))
    net.sh("ip", "-n", vm_ns, "addr", "add", address, "dev", "eth0")


def link_indexes(net, ns: str) -> list[str]:
    """`['1: lo', '2: eth0', ...]`: a recreated interface gets a new index."""
    lines = net.sh("ip", "-n", ns, "-o", "link").stdout.splitlines()
    return [line.split("@")[0].split(":", 2)[0] + ":" + line.split(":", 2)[1] for line in lines]


def test_names() -> None:
    assert bridge_name(100) == "vmbr100"
    assert vxlan_name(100) == "vxlan100"
    assert vlan_name("eth0", 100) == "eth0.100"
    assert vlan_name("enp129s0f1np1", 100) == "vlan100"  # 17 characters would not fit
    assert vxlan_mtu(1500) == 1450
    for bad in (0, 2**24, -1):
        with pytest.raises(InvalidValue):
            bridge_name(bad)
    with pytest.raises(InvalidValue):
        vlan_name("eth0", 4095)


def test_bridge_and_vxlan_are_idempotent(net, two_nodes) -> None:
    a, b = two_nodes
    with NetlinkDriver(a.ns) as driver:
        started = time.monotonic()
        build_network(driver, a, {b.ip})
        took = time.monotonic() - started
        print(f"bridge+vxlan+port+peer create: {took * 1000:.1f} ms")
        indexes = link_indexes(net, a.ns)
        started = time.monotonic()
        build_network(driver, a, {b.ip})
        print(f"bridge+vxlan ensure (no change): {(time.monotonic() - started) * 1000:.1f} ms")
        assert link_indexes(net, a.ns) == indexes  # nothing was recreated

        assert driver.link_kind(bridge_name(VNI)) == "bridge"
        assert driver.link_kind(vxlan_name(VNI)) == "vxlan"
        assert driver.link_master(vxlan_name(VNI)) == bridge_name(VNI)
        assert driver.link_mtu(vxlan_name(VNI)) == 1450
        assert driver.link_mtu(bridge_name(VNI)) == 1450
        assert driver.list_links("vmbr") == [bridge_name(VNI)]
        detail = net.sh("ip", "-n", a.ns, "-d", "link", "show", vxlan_name(VNI)).stdout
        assert f"vxlan id {VNI}" in detail and "local 172.31.0.1" in detail
        assert "dstport 4789" in detail

        # a changed setting converges by recreating the device
        driver.ensure_vxlan(vxlan_name(VNI), VNI, a.ip, a.dev, dstport=4790)
        assert (
            "dstport 4790" in net.sh("ip", "-n", a.ns, "-d", "link", "show", vxlan_name(VNI)).stdout
        )
        # an interface of the wanted name but the wrong kind is not silently taken over
        with pytest.raises(Conflict):
            driver.ensure_bridge(vxlan_name(VNI), 1450)


def test_vxlan_peers_converge_to_the_given_set(net, two_nodes) -> None:
    a, b = two_nodes
    with NetlinkDriver(a.ns) as driver:
        build_network(driver, a, {b.ip, "172.31.0.3"})
        assert driver.vxlan_peers(vxlan_name(VNI)) == {b.ip, "172.31.0.3"}
        driver.set_vxlan_peers(vxlan_name(VNI), {"172.31.0.3", "172.31.0.4", "172.31.0.5"})
        assert driver.vxlan_peers(vxlan_name(VNI)) == {"172.31.0.3", "172.31.0.4", "172.31.0.5"}
        fdb = net.sh("bridge", "-n", a.ns, "fdb", "show", "dev", vxlan_name(VNI)).stdout
        assert fdb.count("00:00:00:00:00:00") == 3
        driver.set_vxlan_peers(vxlan_name(VNI), set())
        assert driver.vxlan_peers(vxlan_name(VNI)) == set()
        with pytest.raises(InvalidValue):
            driver.set_vxlan_peers(vxlan_name(VNI), {"not-an-ip"})
        with pytest.raises(NotFound):
            driver.set_vxlan_peers("vxlan1", {b.ip})


@pytest.fixture
def vms_on_two_nodes(net, netns, two_nodes):
    """Network VNI built on both nodes, a 'VM' on each: yields (node a, its driver, vm on a)."""
    a, b = two_nodes
    vm_a, vm_b = netns("vma"), netns("vmb")
    with NetlinkDriver(a.ns) as driver_a, NetlinkDriver(b.ns) as driver_b:
        build_network(driver_a, a, {b.ip})
        build_network(driver_b, b, {a.ip})
        attach_vm(net, a, vm_a, "tapa", "192.168.42.1/24")
        attach_vm(net, b, vm_b, "tapb", "192.168.42.2/24")
        yield a, b, driver_a, vm_a


def test_ping_crosses_the_vxlan(net, vms_on_two_nodes) -> None:
    a, b, driver_a, vm_a = vms_on_two_nodes
    assert net.ping(vm_a, "192.168.42.2", count=3)
    # the largest unfragmented IPv4 packet is the VXLAN MTU: 1450 = 1422 + 28 header bytes
    assert net.ping(vm_a, "192.168.42.2", size=1422, dont_fragment=True)

    # without b as a peer, the ARP broadcast no longer reaches b
    net.in_ns(vm_a, "ip", "neigh", "flush", "all")
    driver_a.set_vxlan_peers(vxlan_name(VNI), set())
    net.in_ns(a.ns, "bridge", "fdb", "flush", "dev", vxlan_name(VNI), check=False)
    assert not net.ping(vm_a, "192.168.42.2")
    driver_a.set_vxlan_peers(vxlan_name(VNI), {b.ip})
    assert net.ping(vm_a, "192.168.42.2", count=2)


def test_deleted_interface_comes_back(net, vms_on_two_nodes) -> None:
    a, b, driver_a, vm_a = vms_on_two_nodes
    assert net.ping(vm_a, "192.168.42.2")

    net.sh("ip", "-n", a.ns, "link", "del", vxlan_name(VNI))  # an operator's mistake
    assert not driver_a.link_exists(vxlan_name(VNI))
    assert not net.ping(vm_a, "192.168.42.2")
    build_network(driver_a, a, {b.ip})  # the next reconcile
    assert driver_a.vxlan_peers(vxlan_name(VNI)) == {b.ip}
    assert net.ping(vm_a, "192.168.42.2", count=2)

    net.sh("ip", "-n", a.ns, "link", "set", bridge_name(VNI), "down")
    driver_a.ensure_bridge(bridge_name(VNI), 1450)
    shown = net.sh("ip", "-n", a.ns, "link", "show", bridge_name(VNI)).stdout
    assert "UP" in shown.split(">")[0]


def test_delete_link_and_list_links(net, netns) -> None:
    ns = netns("n")
    with NetlinkDriver(ns) as driver:
        driver.ensure_bridge("vmbr1", 1500)
        driver.ensure_bridge("vmbr2", 1500)
        assert driver.list_links("vmbr") == ["vmbr1", "vmbr2"]
        started = time.monotonic()
        driver.delete_link("vmbr1")
        print(f"bridge delete: {(time.monotonic() - started) * 1000:.1f} ms")
        driver.delete_link("vmbr1")  # absent: no error
        assert driver.list_links("vmbr") == ["vmbr2"]
        assert not driver.link_exists("vmbr1")


def test_addresses(net, netns) -> None:
    ns = netns("n")
    with NetlinkDriver(ns) as driver:
        driver.ensure_bridge("vmbr1", 1500)
        driver.ensure_address("vmbr1", "10.1.0.1/24")
        driver.ensure_address("vmbr1", "10.1.0.1/24")
        driver.ensure_address("vmbr1", "fd00:1::1/64")
        assert sorted(driver.addresses("vmbr1")) == ["10.1.0.1/24", "fd00:1::1/64"]
        shown = net.sh("ip", "-n", ns, "addr", "show", "vmbr1").stdout
        assert "fd00:1::1/64" in shown
        assert "tentative" not in shown.split("fd00:1::1/64")[1].splitlines()[0]  # no DAD wait
        driver.remove_address("vmbr1", "10.1.0.1/24")
        driver.remove_address("vmbr1", "10.1.0.1/24")
        assert driver.addresses("vmbr1") == ["fd00:1::1/64"]
        with pytest.raises(InvalidValue):
            driver.ensure_address("vmbr1", "10.1.0.300/24")
        with pytest.raises(NotFound):
            driver.ensure_address("nosuch", "10.1.0.1/24")


def test_vlan_adopts_an_emulated_uplink(net, netns) -> None:
    ns, switch = netns("n"), netns("sw")
    net.veth(switch, "trunk", ns, "eth0")
    name = vlan_name("eth0", 200)
    with NetlinkDriver(ns) as driver:
        try:
            driver.ensure_vlan(name, "eth0", 200)
        except BackendError as exc:  # this kernel: no CONFIG_VLAN_8021Q
            assert "802.1Q" in str(exc) and name in str(exc)
            assert not driver.link_exists(name)
        else:  # a kernel with 802.1Q: a real vLAN device
            assert driver.link_kind(name) == "vlan"
            driver.delete_link(name)

        # the emulated uplink: a veth named like the vLAN device, the far end plays the switch
        net.veth(switch, "v200", ns, name)
        net.sh("ip", "-n", ns, "link", "set", name, "down")
        driver.ensure_vlan(name, "eth0", 200)
        driver.ensure_bridge("vmbr200", 1500)
        driver.ensure_port("vmbr200", name)
        assert driver.link_master(name) == "vmbr200"
        assert "state UP" in net.sh("ip", "-n", ns, "link", "show", name).stdout
        with pytest.raises(NotFound):
            driver.ensure_vlan(vlan_name("eth9", 200), "eth9", 200)


def test_refuses_to_run_inside_the_event_loop(net, netns) -> None:
    ns = netns("n")
    with NetlinkDriver(ns) as driver:

        async def scenario() -> list[str]:
            with pytest.raises(RuntimeError, match="worker thread"):
                driver.list_links()
            return await asyncio.to_thread(driver.list_links)

        assert asyncio.run(scenario()) == ["lo"]


def test_missing_namespace_is_not_created(net) -> None:
    driver = NetlinkDriver("pvct-doesnotexist")
    with pytest.raises(NotFound):
        driver.list_links()
    assert "pvct-doesnotexist" not in net.sh("ip", "netns", "list").stdout
