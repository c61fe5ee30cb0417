"""Cluster faults with real faults in a lab (extensions.md §8.1, §8.2, §8.4): a node daemon
killed, a VM its node refuses, maintenance mode; `/status` against what the lab has; the CLI.

One 3-node lab (test-driver libvirt, no fencing: a killed daemon stays dead) with
`health.interval` 1 s, so a round of fault checks follows every change within about a second
after the cluster has seen it (a killed daemon: its session timeout, 3 s).
"""

from __future__ import annotations

import json
import re
import signal
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any

import pytest

from pvcd.domain.records import VmSpec
from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient, ok, wait_until, zookeeper_client
from tests.e2e.test_cli import as_json, pvc
from tests.e2e.test_cli import ok as cli_ok

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

INTERVAL = 1.0
TIMEOUT = 20.0  # a session timeout (3 s) and a few rounds, on a busy machine


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabClient]]:
    the_lab = Lab(tmp_path_factory.mktemp("faultlab") / "lab")
    info = the_lab.up(nodes=3, fencing="none", health_interval=INTERVAL)
    try:
        yield the_lab, LabClient(info)
    finally:
        the_lab.down()


def faults(api: LabClient) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in ok(api.get("/faults"))}


def health(api: LabClient) -> int:
    return int(ok(api.get("/status"))["cluster_health"]["health"])


def metrics(api: LabClient) -> str:
    response = api.session.get(api.base.removesuffix("/api/v1") + "/metrics", timeout=5)
    assert response.status_code == 200
    return response.text


def rounds(api: LabClient) -> float:
    """Rounds of fault checks the primary has run (its `faults` controller's reconciles)."""
    text = metrics(api)
    return sum(float(m.group(1)) for m in re.finditer(
        r'^pvc_reconciles_total\{controller="faults",node="[^"]+"\} (\S+)$', text, re.M))


def wait_rounds(api: LabClient, count: int = 2) -> None:
    start = rounds(api)
    wait_until(lambda: rounds(api) >= start + count, timeout=TIMEOUT, interval=0.2)


def test_status_describes_the_lab(lab: tuple[Lab, LabClient]) -> None:
    _, api = lab
    status = ok(api.get("/status"))
    primary = api.primary()
    assert status["primary_node"] == primary and status["maintenance"] is False
    assert status["cluster_health"] == {"health": 100, "messages": []}
    assert status["nodes"] == {"total": 3, "run,ready": 3}
    assert sorted(status["node_health"]) == ["node1", "node2", "node3"]
    assert [n["name"] for n in status["detail"]["node"]] == ["node1", "node2", "node3"]
    assert status["resources"]["memory"]["total"] == sum(
        n["memory"]["total"] for n in api.nodes().values())
    assert status["upstream_ip"] is None and status["pvc_version"]
    answer = api.get("/status/primary_node", token=False)  # no authentication
    assert answer.status_code == 200 and answer.json() == {"primary_node": primary}
    assert api.get("/status", token=False).status_code == 401


def test_a_killed_node_raises_faults_that_an_ack_quiets(lab: tuple[Lab, LabClient]) -> None:
    """The lab has no fence targets: the primary's attempt to fence the dead node fails,
    which is a fault of its own (FENCE_FAILED, 50) next to DEAD_NODE (50)."""
    the_lab, api = lab
    victim = next(name for name in ("node3", "node2") if name != api.primary())
    dead_id, fence_id = f"DEAD_NODE_{victim.upper()}", f"FENCE_FAILED_{victim.upper()}"
    the_lab.signal_node(victim, signal.SIGKILL)
    dead = wait_until(lambda: faults(api).get(dead_id), timeout=TIMEOUT, interval=0.2)
    assert (dead["status"], dead["health_delta"], dead["active"]) == ("new", 50, True)
    fence = wait_until(lambda: faults(api).get(fence_id), timeout=TIMEOUT, interval=0.2)
    assert fence["health_delta"] == 50 and "no fence target" in fence["message"]
    assert set(faults(api)) == {dead_id, fence_id} and health(api) == 0
    status = cli_ok(pvc(the_lab, "cluster", "status"))
    assert "Health:" in status and "0%" in status and dead_id in status
    assert "pvc_cluster_health 0.0" in metrics(api)

    cli_ok(pvc(the_lab, "cluster", "fault", "ack", fence_id))
    assert health(api) == 50  # DEAD_NODE alone: 100 - 50
    cli_ok(pvc(the_lab, "cluster", "fault", "ack-all"))
    assert health(api) == 100
    acked = faults(api)[dead_id]
    assert (acked["status"], acked["health_delta"], acked["active"]) == ("ack", 0, True)

    the_lab.start_node(victim)
    the_lab.wait_ready(60)
    cleared = wait_until(lambda: not (f := faults(api)[dead_id])["active"] and f,
                         timeout=TIMEOUT, interval=0.2)
    assert cleared["status"] == "ack" and health(api) == 100
    cli_ok(pvc(the_lab, "cluster", "fault", "delete-all", "--yes"))
    assert faults(api) == {}


def test_a_failed_vm_and_maintenance(lab: tuple[Lab, LabClient]) -> None:
    the_lab, api = lab
    # a VM document its node refuses (written past the API: XML with an entity) fails there
    uuid = str(uuidlib.uuid4())
    xml = ("<!DOCTYPE domain [<!ENTITY x 'y'>]><domain type='qemu'><name>broken</name>"
           "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")
    with zookeeper_client(the_lab) as zk:
        root = the_lab._info().zk_root.rstrip("/")
        zk.create(f"{root}/vms/{uuid}", json.dumps(VmSpec(
            uuid=uuid, name="broken", xml=xml, node="node1").to_doc()).encode())
    failed = wait_until(lambda: faults(api).get("VM_FAILED_BROKEN"), timeout=TIMEOUT,
                        interval=0.2)
    assert failed["health_delta"] == 10 and health(api) == 90
    listed = cli_ok(pvc(the_lab, "cluster", "fault", "list"))
    assert "VM_FAILED_BROKEN" in listed
    assert as_json(pvc(the_lab, "cluster", "fault", "list", "-f", "json"))[0]["id"] == \
        "VM_FAILED_BROKEN"

    cli_ok(pvc(the_lab, "cluster", "maintenance", "on"))
    assert ok(api.get("/status"))["maintenance"] is True
    cli_ok(pvc(the_lab, "cluster", "fault", "delete-all", "--yes"))
    wait_rounds(api)  # the condition persists, but maintenance raises nothing
    assert faults(api) == {} and health(api) == 100

    assert api.post("/status", data={"state": "false"}).status_code == 200  # PVC's alias
    back = wait_until(lambda: faults(api).get("VM_FAILED_BROKEN"), timeout=TIMEOUT,
                      interval=0.2)
    assert back["status"] == "new" and health(api) == 90
    cli_ok(pvc(the_lab, "cluster", "fault", "ack-all"))
    assert health(api) == 100
