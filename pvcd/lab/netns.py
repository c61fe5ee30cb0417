"""The lab's network plumbing: a namespace per node on an underlay bridge, and "VMs".

The node daemons stay in the root namespace (ZooKeeper is on loopback); each node's *network*
lives in its own namespace, which its config names (`drivers.network.netns`), and the node's
controllers act inside it. Every namespace of one lab carries the lab's id, so several labs (and
the tests' own namespaces) never meet:

    pvcl-<id>-ul        the underlay: bridge `ul` (the cluster network), bridge `trunk`
    pvcl-<id>-node<N>   eth0 10.200.0.<N>/24 (veth to `ul`), eth1 (veth to `trunk`: the
                        uplink of bridged networks)
    pvcl-<id>-vm-<vm>   a "VM": eth0, whose peer `t-<vm>` is a port of the node's vmbr<vni>

Bridged networks: this kernel has no 802.1Q, so `add_vlan` emulates a vLAN the way the network
driver expects: a veth named `eth1.<vni>` in the node's namespace (adopted as the vLAN
interface), whose peer is a port of bridge `vl<vni>` in the underlay namespace (the switch).

`down()` kills every process left in the lab's namespaces (dnsmasq, DHCP clients) and deletes
them all; nothing is left behind. Commands are argument lists with timeouts; the only names that
reach them are built here from the lab id, node names and VM names checked by `_check_label`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIMEOUT = 20.0
UNDERLAY_NET = "10.200.0"
FLOATING_IP = f"{UNDERLAY_NET}.254"  # the cluster floating IP (held by the primary)
SERVICE_IP = f"{UNDERLAY_NET}.250"  # the underlay's own address: ZooKeeper, the lab proxy
_LABEL = re.compile(r"[a-z0-9][a-z0-9-]{0,9}")


def run(*argv: str, check: bool = True,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): "
                           f"{result.stderr.strip()}")
    return result


def in_ns(ns: str, *argv: str, check: bool = True,
          timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)


def _check_label(value: str, what: str) -> str:
    if not _LABEL.fullmatch(value):
        raise ValueError(f"{what} {value!r}: 1-10 lower-case letters, digits or '-'")
    return value


@dataclass
class NodeNet:
    netns: str
    underlay_device: str
    underlay_address: str
    uplink_device: str

    def config(self) -> dict[str, Any]:
        return {"netns": self.netns, "underlay_device": self.underlay_device,
                "underlay_address": self.underlay_address, "uplink_device": self.uplink_device}


class LabNetwork:
    """The namespaces of one lab, all named `pvcl-<lab_id>-...`."""

    def __init__(self, lab_id: str) -> None:
        self.lab_id = _check_label(lab_id, "lab id")
        self.prefix = f"pvcl-{lab_id}"
        self.underlay = f"{self.prefix}-ul"

    def node_ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def vm_ns(self, vm: str) -> str:
        return f"{self.prefix}-vm-{vm}"

    # bring up / tear down
    def up(self, nodes: list[str]) -> dict[str, NodeNet]:
        self._add_ns(self.underlay)
        for bridge in ("ul", "trunk"):
            run("ip", "-n", self.underlay, "link", "add", bridge, "type", "bridge")
            run("ip", "-n", self.underlay, "link", "set", bridge, "up")
        # the cluster network's services (ZooKeeper) live in the underlay namespace itself
        run("ip", "-n", self.underlay, "addr", "add", f"{SERVICE_IP}/24", "dev", "ul")
        return {node: self.add_node(node, index) for index, node in
                enumerate(nodes, start=1)}

    def node_net(self, node: str, index: int) -> NodeNet:
        """Where node number `index` lives (the namespace need not exist yet)."""
        _check_label(node, "node name")
        return NodeNet(self.node_ns(node), "eth0", f"{UNDERLAY_NET}.{index}", "eth1")

    def add_node(self, node: str, index: int) -> NodeNet:
        net = self.node_net(node, index)
        self._add_ns(net.netns)
        self._veth(self.underlay, f"ul-{node}", net.netns, net.underlay_device, master="ul")
        self._veth(self.underlay, f"tr-{node}", net.netns, net.uplink_device, master="trunk")
        run("ip", "-n", net.netns, "addr", "add", f"{net.underlay_address}/24", "dev",
            net.underlay_device)
        return net

    def down(self) -> None:
        for ns in self.namespaces():
            kill_processes_in(ns)
        for ns in self.namespaces():
            run("ip", "netns", "del", ns, check=False)

    def namespaces(self) -> list[str]:
        """This lab's namespaces, VMs first and the underlay last."""
        try:
            names = os.listdir("/run/netns")
        except FileNotFoundError:
            return []
        ours = [n for n in names if n.startswith(self.prefix + "-")]
        return sorted(ours, key=lambda n: (n == self.underlay, "-vm-" not in n, n))

    def add_client(self, name: str, index: int = 200) -> str:
        """A client namespace on the underlay (e.g. an operator's machine), address
        10.200.0.<index>/24; returns its name."""
        ns = f"{self.prefix}-{_check_label(name, 'client name')}"
        self._add_ns(ns)
        self._veth(self.underlay, f"ul-{name}"[:15], ns, "eth0", master="ul")
        run("ip", "-n", ns, "addr", "add", f"{UNDERLAY_NET}.{int(index)}/24", "dev", "eth0")
        return ns

    # VMs
    def attach_vm(self, node: str, vni: int, vm: str, mac: str | None = None) -> str:
        """A "VM" namespace whose eth0 is on `vmbr<vni>` of `node`; returns its name."""
        _check_label(vm, "VM name")
        ns, node_ns = self.vm_ns(vm), self.node_ns(node)
        bridge = f"vmbr{int(vni)}"
        mtu = int(link(node_ns, bridge)["mtu"])
        self._add_ns(ns)
        self._veth(node_ns, f"t-{vm}", ns, "eth0", master=bridge, mtu=mtu, mac_b=mac)
        return ns

    def detach_vm(self, vm: str) -> None:
        ns = self.vm_ns(_check_label(vm, "VM name"))
        kill_processes_in(ns)
        run("ip", "netns", "del", ns, check=False)

    def add_vlan(self, node: str, vni: int) -> None:
        """Emulate vLAN `vni` on `node`'s uplink (see the module docstring)."""
        if not 1 <= int(vni) <= 4094:
            raise ValueError(f"vLAN id {vni} out of range")
        switch = f"vl{int(vni)}"
        if run("ip", "-n", self.underlay, "link", "show", switch, check=False).returncode:
            run("ip", "-n", self.underlay, "link", "add", switch, "type", "bridge")
            run("ip", "-n", self.underlay, "link", "set", switch, "up")
        self._veth(self.underlay, f"v{int(vni)}-{node}"[:15], self.node_ns(node),
                   f"eth1.{int(vni)}", master=switch)

    # internals
    def _add_ns(self, ns: str) -> None:
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str, master: str | None = None,
              mtu: int | None = None, mac_b: str | None = None) -> None:
        """A veth pair name_a@ns_a <-> name_b@ns_b (never in the root namespace), both up;
        name_a enslaved to bridge `master` of ns_a."""
        run("ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
            "netns", ns_b)
        if mtu is not None:
            run("ip", "-n", ns_a, "link", "set", name_a, "mtu", str(mtu))
            run("ip", "-n", ns_b, "link", "set", name_b, "mtu", str(mtu))
        if mac_b is not None:
            run("ip", "-n", ns_b, "link", "set", name_b, "address", mac_b)
        if master is not None:
            run("ip", "-n", ns_a, "link", "set", name_a, "master", master)
        run("ip", "-n", ns_a, "link", "set", name_a, "up")
        run("ip", "-n", ns_b, "link", "set", name_b, "up")


def link(ns: str, name: str) -> dict[str, Any]:
    """`ip -j link show` of one interface (raises if it does not exist)."""
    doc = json.loads(run("ip", "-n", ns, "-j", "link", "show", name).stdout)
    return dict(doc[0])


def links(ns: str) -> list[str]:
    doc = json.loads(run("ip", "-n", ns, "-j", "link", "show").stdout)
    return [str(entry["ifname"]) for entry in doc]


def kill_processes_in(ns: str) -> None:
    """SIGKILL every process in namespace `ns` (its dnsmasq, DHCP clients, ...)."""
    if not Path(f"/run/netns/{ns}").exists():
        return
    for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
