"""DNS across managed networks on a 3-node lab with node namespaces (extensions.md §10.2.5):
how soon names answer, against the spec's targets.

1. a new lease (busybox udhcpc in a guest namespace on network B) → its name, and its VM's name,
   resolve from a guest on network A (through A's gateway) and on the cluster floating IP
   (target 1 s);
2. a network added with a static lease, then re-domained, then removed → a guest on another
   network resolves its new name / its renamed name / no longer resolves it (target 2 s);
3. a primary change (`POST /node/<n>/coordinator-state`) → a guest's gateway answers another
   network's name, and so does the floating IP (target 2 s); the gateway's own return (a ping)
   is printed beside it, as bench/network_converge.py measures it.
Every question is a real UDP query (dnspython) from inside a namespace. Run as root:
    .venv/bin/python -m bench.dns [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

from pvcd.lab import netns
from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from pvcd.lab.netns import FLOATING_IP
from tests.dns_client import ask
from tests.e2e.labclient import LabClient

NEW_LEASE, CHANGE, HANDOVER = 1.0, 2.0, 2.0


def wait(predicate: Callable[[], bool], timeout: float = 20.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not met")
        time.sleep(0.005)
    return time.monotonic() - started


def answers(ns: str, server: str, name: str, expected: str | None) -> Callable[[], bool]:
    """`name` answers `expected` (None: REFUSED, no such managed domain)."""
    def check() -> bool:
        answer = ask(ns, server, name, timeout=0.2)
        return expected in answer.values if expected else answer.rcode == "REFUSED"
    return check


def ok(reply: object) -> None:
    assert getattr(reply, "status_code", None) == 200, getattr(reply, "text", reply)


def guest(lab: Lab, node: str, vni: int, name: str, mac: str, hostname: str) -> tuple[str, str]:
    ns = lab.network().attach_vm(node, vni, name, mac=mac)
    out = netns.in_ns(ns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T",
                      "1", "-s", "/bin/true", "-x", f"hostname:{hostname}", timeout=30)
    found = re.search(r"lease of (\S+) obtained", out.stdout + out.stderr)
    assert found, out.stdout + out.stderr
    netns.run("ip", "-n", ns, "addr", "add", f"{found.group(1)}/24", "dev", "eth0")
    return ns, found.group(1)


def line(label: str, times: list[float], target: float) -> None:
    print(f"{label}: p50 {statistics.median(times):.3f} s  max {max(times):.3f} s  "
          f"(n={len(times)}, target {target:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lab = Lab(tempfile.mkdtemp(prefix="pvc-bench-dns-"))
    info = lab.up(nodes=3, network=True)
    api = LabClient(info)
    try:
        for vni in (181, 182):
            ok(api.post("/network", data={
                "vni": vni, "description": f"net{vni}", "nettype": "managed",
                "domain": f"net{vni}.test", "ip4_network": f"10.{vni}.0.0/24",
                "ip4_gateway": f"10.{vni}.0.1", "dhcp4": "yes",
                "dhcp4_start": f"10.{vni}.0.50", "dhcp4_end": f"10.{vni}.0.99"}))
        primary = str(api.primary())
        other = next(n for n in ("node1", "node2", "node3") if n != primary)
        wait(lambda: subprocess.run(["ip", "-n", lab.network().node_ns(other), "link", "show",
                                     "vmbr182"], capture_output=True, check=False,
                                    timeout=10).returncode == 0)
        a, _alpha = guest(lab, other, 181, "ba", "52:54:00:18:01:01", "alpha")
        client = lab.network().add_client("dnsb", index=202)

        leases: dict[str, list[float]] = {"gateway": [], "gateway, VM name": [],
                                          "floating IP": [], "floating IP, VM name": []}
        for round_ in range(args.rounds):
            vm, mac = f"vm{round_}", f"52:54:00:18:02:{round_:02x}"
            nic = (f"    <interface type='bridge'><mac address='{mac}'/>"
                   "<source bridge='vmbr182'/></interface>\n")
            ok(api.post("/vm", data={"xml": tiny_guest_xml(vm).replace(
                "  </devices>\n", nic + "  </devices>\n"), "node": other}))
            _ns, address = guest(lab, other, 182, f"bb{round_}", mac, f"beta{round_}")
            leased = time.monotonic()
            questions = {"gateway": (a, "10.181.0.1", f"beta{round_}.net182.test"),
                         "gateway, VM name": (a, "10.181.0.1", f"{vm}.net182.test"),
                         "floating IP": (client, FLOATING_IP, f"beta{round_}.net182.test"),
                         "floating IP, VM name": (client, FLOATING_IP, f"{vm}.net182.test")}
            pending = dict(questions)
            while pending:
                for what, (ns, server, name) in list(pending.items()):
                    if answers(ns, server, name, address)():
                        leases[what].append(time.monotonic() - leased)
                        del pending[what]
                if time.monotonic() - leased > 20:
                    raise TimeoutError(f"never answered: {sorted(pending)}")
        for what, times in leases.items():
            line(f"new lease → its name on the {what}", times, NEW_LEASE)

        changes: dict[str, list[float]] = {"added: its own gateway answers": [], "added": [],
                                           "re-domained": [], "removed": []}
        for round_ in range(args.rounds):
            vni = 190 + round_
            started = time.monotonic()
            ok(api.post("/network", data={"vni": vni, "description": f"net{vni}",
                                          "nettype": "managed", "domain": f"net{vni}.test",
                                          "ip4_network": f"10.{vni}.0.0/24",
                                          "ip4_gateway": f"10.{vni}.0.1"}))
            ok(api.post(f"/network/{vni}/lease", data={"macaddress": "52:54:00:19:00:01",
                                                      "ipaddress": f"10.{vni}.0.10",
                                                      "hostname": "fixed"}))
            primary_ns = lab.network().node_ns(str(api.primary()))
            wait(answers(primary_ns, f"10.{vni}.0.1", f"fixed.net{vni}.test", f"10.{vni}.0.10"))
            changes["added: its own gateway answers"].append(time.monotonic() - started)
            wait(answers(a, "10.181.0.1", f"fixed.net{vni}.test", f"10.{vni}.0.10"))
            changes["added"].append(time.monotonic() - started)
            started = time.monotonic()
            ok(api.call("PUT", f"/network/{vni}", data={"domain": f"renamed{vni}.test"}))
            wait(answers(a, "10.181.0.1", f"fixed.renamed{vni}.test", f"10.{vni}.0.10"))
            changes["re-domained"].append(time.monotonic() - started)
            started = time.monotonic()
            ok(api.call("DELETE", f"/network/{vni}"))
            wait(answers(a, "10.181.0.1", f"fixed.renamed{vni}.test", None))
            changes["removed"].append(time.monotonic() - started)
        for what, times in changes.items():
            line(f"network {what} → reaches another network", times, CHANGE)

        handovers: dict[str, list[float]] = {"gateway pings": [], "gateway answers a name": [],
                                             "floating IP answers a name": []}
        for _ in range(args.rounds):
            primary = str(api.primary())
            target = next(n for n in ("node1", "node2") if n != primary)
            started = time.monotonic()
            ok(api.post(f"/node/{target}/coordinator-state",
                        data={"coordinator-state": "primary"}))
            old_ns = lab.network().node_ns(primary)
            wait(lambda old_ns=old_ns: "10.181.0.1" not in netns.run(
                "ip", "-n", old_ns, "addr", "show", "vmbr181").stdout)
            wait(lambda: netns.in_ns(a, "ping", "-n", "-q", "-c", "1", "-W", "0.2",
                                     "10.181.0.1", check=False).returncode == 0)
            handovers["gateway pings"].append(time.monotonic() - started)
            wait(lambda: bool(ask(a, "10.181.0.1", "beta0.net182.test", timeout=0.2).values))
            handovers["gateway answers a name"].append(time.monotonic() - started)
            wait(lambda: bool(ask(client, FLOATING_IP, "beta0.net182.test",
                                  timeout=0.2).values))
            handovers["floating IP answers a name"].append(time.monotonic() - started)
            wait(lambda target=target: api.primary() == target)
        for what, times in handovers.items():
            line(f"primary change → {what}", times, HANDOVER)
    finally:
        lab.down()


if __name__ == "__main__":
    main()
