"""Client networks on a 3-node lab with node namespaces: how fast the cluster converges.

1. `POST /network` → "VMs" on three nodes ping each other across the VXLAN. Each VM is plugged
   into its node's `vmbr<vni>` as soon as that bridge exists (as libvirt would when the VM
   starts), so the time includes the three network controllers, not a test's sleep.
2. a primary change (`POST /node/<n>/coordinator-state`) → the gateway answers a VM's ping
   again (old primary removes the gateway and stops dnsmasq, the new one adds it, starts
   dnsmasq and announces it with a gratuitous ARP).
Targets (issue 4): ≤ 1 s and ≤ 2 s. Run as root:
    .venv/bin/python -m bench.network_converge [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

from pvcd.lab import netns
from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient

NODES = ("node1", "node2", "node3")


def wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.002)


def ping(ns: str, address: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "0.2",
                           address], capture_output=True, timeout=10, check=False).returncode == 0


def has_link(ns: str, name: str) -> bool:
    return subprocess.run(["ip", "-n", ns, "link", "show", name], capture_output=True,
                          timeout=10, check=False).returncode == 0


def converge(lab: Lab, api: LabClient, vni: int) -> float:
    net = lab.network()
    started = time.monotonic()
    reply = api.post("/network", data={"vni": vni, "description": f"bench{vni}",
                                       "nettype": "managed"})
    assert reply.status_code == 200, reply.text
    vms = []
    for index, node in enumerate(NODES, start=1):
        wait(lambda node=node: has_link(net.node_ns(node), f"vmbr{vni}"))
        ns = net.attach_vm(node, vni, f"v{vni}-{index}")
        netns.run("ip", "-n", ns, "addr", "add", f"10.250.0.{index}/24", "dev", "eth0")
        vms.append(ns)
    wait(lambda: ping(vms[0], "10.250.0.2") and ping(vms[1], "10.250.0.3")
         and ping(vms[2], "10.250.0.1"))
    took = time.monotonic() - started
    for index in range(1, 4):
        net.detach_vm(f"v{vni}-{index}")
    assert api.call("DELETE", f"/network/{vni}").status_code == 200
    return took


def handover(lab: Lab, api: LabClient, client: str) -> float:
    primary = api.primary()
    target = next(n for n in ("node1", "node2") if n != primary)
    started = time.monotonic()
    reply = api.post(f"/node/{target}/coordinator-state", data={"coordinator-state": "primary"})
    assert reply.status_code == 200, reply.text
    old_ns = lab.network().node_ns(str(primary))
    # the old gateway must be gone first, else the old primary answers the ping
    wait(lambda: "10.251.0.1" not in netns.run("ip", "-n", old_ns, "addr", "show",
                                               "vmbr251").stdout)
    wait(lambda: ping(client, "10.251.0.1"))
    took = time.monotonic() - started
    wait(lambda: api.primary() == target)
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lab = Lab(tempfile.mkdtemp(prefix="pvc-bench-net-"))
    info = lab.up(nodes=3, network=True)
    api = LabClient(info)
    try:
        times = [converge(lab, api, 240 + i) for i in range(args.rounds)]
        print("POST /network → VMs on 3 nodes ping each other: "
              f"p50 {statistics.median(times):.3f} s  max {max(times):.3f} s  (n={len(times)})")
        reply = api.post("/network", data={"vni": 251, "description": "bench251",
                                           "nettype": "managed", "ip4_network": "10.251.0.0/24",
                                           "ip4_gateway": "10.251.0.1"})
        assert reply.status_code == 200, reply.text
        wait(lambda: has_link(lab.network().node_ns("node3"), "vmbr251"))
        client = lab.network().attach_vm("node3", 251, "gwc")
        netns.run("ip", "-n", client, "addr", "add", "10.251.0.100/24", "dev", "eth0")
        wait(lambda: ping(client, "10.251.0.1"))
        times = [handover(lab, api, client) for _ in range(args.rounds)]
        print(f"primary change → gateway answers again: p50 {statistics.median(times):.3f} s"
              f"  max {max(times):.3f} s  (n={len(times)})")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
