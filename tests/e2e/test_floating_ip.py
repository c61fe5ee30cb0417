"""The cluster floating IP follows the primary, and the API answers on it (network lab).

Clients sit in their own namespace on the underlay, like an operator's machine: they reach the
API only through the floating IP, so a stale address or a missing gratuitous ARP would show.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from pvcd.lab.lab import Lab
from pvcd.lab.netns import FLOATING_IP
from tests.e2e.labclient import LabClient, LabFactory, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.needs_root]

NODES = ("node1", "node2", "node3")

def primary_via_floating_ip(client_ns: str, lab: Lab) -> str | None:
    """Ask the API on the floating IP, from the client namespace; the primary it reports."""
    nodes = lab.floating_api_get(client_ns, "/node", timeout=2.0)
    primaries = [n["name"] for n in nodes or [] if n["coordinator_state"] == "primary"]
    return primaries[0] if len(primaries) == 1 else None


def holders(lab: Lab) -> list[str]:
    """The nodes whose namespace has the floating IP on eth0."""
    found = []
    for node in NODES:
        ns = lab.network().node_ns(node)
        out = subprocess.run(["ip", "-n", ns, "-j", "addr", "show", "eth0"], capture_output=True,
                             text=True, timeout=10, check=False).stdout
        addresses = [a["local"] for i in json.loads(out or "[]") for a in i.get("addr_info", [])]
        if FLOATING_IP in addresses:
            found.append(node)
    return found


@pytest.fixture
def net_lab(make_lab: LabFactory) -> tuple[Lab, LabClient, str]:
    lab, api = make_lab(nodes=3, network=True)
    client = lab.network().add_client("op")
    return lab, api, client


def test_the_primary_holds_the_floating_ip_and_serves_on_it(
        net_lab: tuple[Lab, LabClient, str]) -> None:
    lab, api, client = net_lab
    primary = api.primary()
    wait_until(lambda: holders(lab) == [primary], timeout=10)
    assert wait_until(lambda: primary_via_floating_ip(client, lab), timeout=10) == primary


def test_handover_moves_the_floating_ip_without_overlap(
        net_lab: tuple[Lab, LabClient, str]) -> None:
    lab, api, client = net_lab
    old = api.primary()
    wait_until(lambda: holders(lab) == [old], timeout=10)
    target = next(n for n in NODES if n != old)
    api.post(f"/node/{target}/coordinator-state", data={"coordinator-state": "primary"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = holders(lab)
        assert len(now) <= 1, f"floating IP on two nodes at once: {now}"
        if now == [target]:
            break
    assert holders(lab) == [target]
    assert wait_until(lambda: primary_via_floating_ip(client, lab) == target, timeout=10)


def test_sigkill_of_the_primary_moves_the_floating_ip(
        net_lab: tuple[Lab, LabClient, str]) -> None:
    lab, api, client = net_lab
    old = api.primary()
    assert old is not None
    wait_until(lambda: primary_via_floating_ip(client, lab) == old, timeout=10)
    lab.signal_node(old, signal.SIGKILL)
    killed = time.monotonic()
    new = wait_until(lambda: (p := primary_via_floating_ip(client, lab)) not in (None, old)
                     and p, timeout=lab.info.session_timeout + 10)
    elapsed = time.monotonic() - killed
    assert new in holders(lab)
    # the fence powers the dead node off, its network included: one holder is left
    wait_until(lambda: holders(lab) == [new], timeout=15)
    print(f"SIGKILL of the primary: API answers on the floating IP after {elapsed:.2f} s")
