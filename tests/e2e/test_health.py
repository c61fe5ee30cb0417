"""Node health checks driven by real faults in the lab (extensions.md §8.3), seen through the
API: ZooKeeper stopped on one server of three (`zkpr`), libvirtd killed on a QEMU node
(`lbvt`), dnsmasq killed on the primary (`gway`), an OSD stopped (`ceph`). Each fault must show
within a few rounds (the lab's `health.interval` is 2 s), cost its stated delta, and clear once
the fault is repaired. The ZooKeeper round also follows the check to the primary's fault
(`NODE_PLUGIN_ZKPR_NODE2`, half the delta), `/status` and `/metrics`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pvcd.domain.health import health_value
from pvcd.lab.ceph import ThrowawayCeph
from pvcd.lab.lab import HEALTH_INTERVAL, Lab
from pvcd.lab.libvirtd import LibvirtdLab
from tests.e2e.labclient import (
    LabClient,
    LabFactory,
    running_lab,
    wait_until,
    zookeeper_client,
)
from tests.e2e.test_cli import ok, pvc
from tests.e2e.test_metrics import scrape

pytestmark = pytest.mark.slow

ROUNDS = 5 * HEALTH_INTERVAL + 10  # time for a fault to show: a few rounds, and a check's limit


def node(api: LabClient, name: str) -> dict[str, Any]:
    response = api.get(f"/node/{name}")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()[0]
    return doc


def check_delta(api: LabClient, name: str, check: str) -> tuple[int, dict[str, Any]] | None:
    """The node's latest delta for `check` (and the node), once the node reports one."""
    shown = node(api, name)
    for detail in shown["health_details"]:
        if detail["name"] == check:
            return int(detail["health_delta"]), shown
    return None


def delta(api: LabClient, name: str, check: str) -> int | None:
    found = check_delta(api, name, check)
    return None if found is None else found[0]


def wait_delta(api: LabClient, name: str, check: str, wanted: Callable[[int], bool]
               ) -> dict[str, Any]:
    """Wait for a round of `name` in which `check`'s delta is `wanted`; that round's node. The
    node's health is that round's arithmetic: 100 minus all of its deltas."""
    def seen() -> dict[str, Any] | None:
        found = check_delta(api, name, check)
        return found[1] if found is not None and wanted(found[0]) else None

    shown: dict[str, Any] = wait_until(seen, timeout=ROUNDS, interval=0.1)
    deltas = [d["health_delta"] for d in shown["health_details"]]
    assert shown["health"] == health_value(deltas), shown
    return shown


def others(shown: dict[str, Any], check: str) -> int:
    """The health the node would have without `check`'s delta."""
    return health_value([d["health_delta"] for d in shown["health_details"]
                         if d["name"] != check])


def test_zookeeper_stopped_on_one_server_of_three(make_lab: LabFactory) -> None:
    lab, api = make_lab(nodes=3, zk_ensemble=3, fencing="none")
    for name in ("node1", "node2", "node3"):  # every coordinator asks its own server
        assert wait_delta(api, name, "zkpr", lambda d: d == 0)["health"] is not None
    ensemble = lab.zookeeper
    assert ensemble is not None
    server = ensemble.servers[1]  # node2's
    ensemble.kill(server, signal.SIGKILL)
    down = wait_delta(api, "node2", "zkpr", lambda d: d == 50)
    assert down["health"] == max(0, others(down, "zkpr") - 50)  # 50 less than without it
    detail = next(d for d in down["health_details"] if d["name"] == "zkpr")
    assert "not serving" in detail["message"]
    assert delta(api, "node1", "zkpr") == 0  # its own server serves
    # the primary turns the failing check into a fault of half its delta (§8.4), which
    # lowers the cluster's health, and /status and /metrics show both healths
    fault = wait_until(lambda: next((f for f in api.get("/faults").json()
                                     if f["id"] == "NODE_PLUGIN_ZKPR_NODE2" and f["active"]),
                                    None), timeout=ROUNDS)
    assert fault["health_delta"] == 25 and fault["status"] == "new", fault
    status = api.get("/status").json()
    assert status["node_health"]["node2"]["health"] <= 50
    assert "'zkpr'" in " ".join(status["node_health"]["node2"]["messages"])
    unacknowledged = [f for f in api.get("/faults").json() if f["status"] == "new"]
    assert status["cluster_health"]["health"] == health_value(
        [f["health_delta"] for f in unacknowledged]) <= 75
    assert "NODE_PLUGIN_ZKPR_NODE2" in {m["id"] for m in status["cluster_health"]["messages"]}
    metrics = scrape(api)
    assert metrics.total("pvc_node_health_check_delta", node="node2", check="zkpr") == 50
    assert metrics.total("pvc_node_health", node="node2") <= 50
    info = ok(pvc(lab, "node", "info", "node2"))  # the CLI names the failing check
    assert "zkpr (-50): the local ZooKeeper" in info, info
    table = ok(pvc(lab, "node", "list")).splitlines()
    assert table[0].split()[4] == "HEALTH"
    assert all(line.split()[4].endswith("%") for line in table[1:]), table
    ensemble.start_server(server)
    ensemble.wait_ready(30)
    wait_delta(api, "node2", "zkpr", lambda d: d == 0)
    wait_until(lambda: not next(f for f in api.get("/faults").json()
                                if f["id"] == "NODE_PLUGIN_ZKPR_NODE2")["active"],
               timeout=ROUNDS)
    assert api.call("PUT", "/faults/NODE_PLUGIN_ZKPR_NODE2").status_code == 200
    assert "NODE_PLUGIN_ZKPR_NODE2" not in {
        m["id"] for m in api.get("/status").json()["cluster_health"]["messages"]}

    # a node that stops says so: health null in its document, and in the API
    lab.signal_node("node3", signal.SIGTERM)
    wait_until(lambda: node(api, "node3")["daemon_state"] == "stop", timeout=30)
    assert node(api, "node3")["health"] is None
    with zookeeper_client(lab) as client:
        raw, _ = client.get(f"{lab._info().zk_root}/nodes/node3/health")
    assert json.loads(raw) == {"health": None, "checks": []}


def test_libvirtd_killed_on_a_qemu_node(tmp_path: Path) -> None:
    for tool in ("libvirtd", "qemu-system-x86_64", "tini", "unshare"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is missing: run scripts/setup")
    # short: libvirtd's unix socket paths are limited to 107 bytes
    workdir = Path(f"/tmp/pvcd-e2e-health-{uuidlib.uuid4().hex[:6]}")
    try:
        with running_lab(workdir, nodes=1, libvirt="qemu", fencing="none") as (lab, api):
            wait_delta(api, "node1", "lbvt", lambda d: d == 0)
            assert lab.info is not None and lab.info.qemu is not None
            libvirtd = LibvirtdLab(Path(lab.info.qemu["workdir"]), 1)[0]
            os.kill(libvirtd.pid, signal.SIGKILL)
            down = wait_delta(api, "node1", "lbvt", lambda d: d == 50)
            detail = next(d for d in down["health_details"] if d["name"] == "lbvt")
            assert "libvirt" in detail["message"]
            libvirtd.start()
            wait_delta(api, "node1", "lbvt", lambda d: d == 0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def network_dnsmasq(lab: Lab, node: str, vni: int) -> int | None:
    """The pid of network `vni`'s dnsmasq on `node` (not its lease-script helper)."""
    hosts = f"--dhcp-hostsdir={lab.workdir / 'nodes' / node / 'networks' / str(vni) / 'hosts'}"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if hosts.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    parents = {pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
               for pid in found}
    main = [pid for pid in found if parents[pid] not in found]
    return main[0] if main else None


@pytest.mark.needs_root
def test_dnsmasq_killed_on_the_primary(make_lab: LabFactory) -> None:
    lab, api = make_lab(nodes=2, network=True, fencing="none")
    vni = 120
    response = api.post("/network", data={
        "vni": vni, "description": "health", "nettype": "managed",
        "ip4_network": "10.120.0.0/24", "ip4_gateway": "10.120.0.1", "dhcp4": "yes",
        "dhcp4_start": "10.120.0.50", "dhcp4_end": "10.120.0.99"})
    assert response.status_code == 200, response.text
    primary = api.primary()
    assert primary is not None
    before = wait_until(lambda: network_dnsmasq(lab, primary, vni), timeout=20)
    # a round that judged the network served it fine
    served = wait_delta(api, primary, "gway",
                        lambda d: d == 0 and "1 managed networks" in _gway_message(api, primary))
    assert served["health"] is not None
    os.kill(before, signal.SIGKILL)
    # the gateway controller restarts it within 0.5 s: the round after says it died
    down = wait_delta(api, primary, "gway", lambda d: d == 50)
    detail = next(d for d in down["health_details"] if d["name"] == "gway")
    assert f"vmbr{vni}: dnsmasq" in detail["message"], detail
    after = network_dnsmasq(lab, primary, vni)
    assert after is not None and after != before  # repaired: a new dnsmasq serves
    wait_delta(api, primary, "gway", lambda d: d == 0)
    other = next(n for n in ("node1", "node2") if n != primary)
    assert delta(api, other, "gway") == 0  # not the primary: nothing to judge


def _gway_message(api: LabClient, name: str) -> str:
    shown = node(api, name)
    return next((d["message"] for d in shown["health_details"] if d["name"] == "gway"), "")


@pytest.mark.ceph
def test_an_osd_stopped(make_lab: LabFactory) -> None:
    lab, api = make_lab(nodes=2, ceph=True, fencing="none")
    assert lab.info is not None and lab.info.ceph is not None
    ceph = ThrowawayCeph.load(lab.info.ceph["workdir"])
    osd = 1  # node2's (the lab gives OSD i to node i % nodes + 1)
    wait_delta(api, "node2", "ceph", lambda d: d == 0)
    pid = ceph.osds[osd].pid
    os.kill(pid, signal.SIGSTOP)  # stopped: it cannot say it is up again
    try:
        subprocess.run(["ceph", "--conf", lab.info.ceph["conf"], "--keyring",
                        lab.info.ceph["keyring"], "osd", "down", str(osd)],
                       check=True, capture_output=True, timeout=30)
        down = wait_delta(api, "node2", "ceph", lambda d: d == 10)
        detail = next(d for d in down["health_details"] if d["name"] == "ceph")
        assert detail["message"] == f"OSD {osd} down"
        assert delta(api, "node1", "ceph") == 0  # its OSD is up
    finally:
        os.kill(pid, signal.SIGCONT)  # it finds itself marked down and boots again
    wait_delta(api, "node2", "ceph", lambda d: d == 0)
