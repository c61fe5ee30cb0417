"""VM metadata on a lab (extensions.md §6.2): `node_limit` keeps a VM off other nodes in every
placement path (define, migrate without a node, flush, recovery after a fence), and
`node_autostart` brings a VM with nowhere to go back when its node becomes ready, once. The
metadata and tags are set through the `pvc` CLI. Outcomes are read from the nodes' libvirt
(through the lab agent) and the API."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient, LabFactory, wait_until
from tests.e2e.test_cli import ok, pvc
from tests.e2e.test_ha import HA_LAB, running, victim_of
from tests.e2e.test_vms import define, vm

pytestmark = pytest.mark.slow


def hosts(lab: Lab, uuid: str) -> list[str]:
    return running(lab).get(uuid, [])


def set_domain_state(api: LabClient, node: str, state: str) -> None:
    response = api.post(f"/node/{node}/domain-state", data={"domain-state": state})
    assert response.status_code == 200, response.text


def domain_state(api: LabClient, node: str) -> str:
    return str(api.get(f"/node/{node}/domain-state").json()["domain_state"])


def meta(api: LabClient, name: str) -> dict[str, Any]:
    return dict(api.get(f"/vm/{name}/meta").json())


def test_node_limit_and_autostart_in_define_migrate_flush_and_ready(
        lab3: tuple[Lab, LabClient]) -> None:
    lab, api = lab3
    fillers = [define(api, f"filler{i}", node="node1") for i in range(2)]
    # define: node2 and node3 are emptier than node1, but the limit names node1 alone
    pinned = define(api, "pinned", limit="node1", selector="vms")
    assert vm(api, "pinned")["node"] == "node1"
    # the CLI sets the rest of the metadata and the tags
    roamer = define(api, "roamer", node="node1", selector="vms")
    ok(pvc(lab, "vm", "meta", "roamer", "--limit", "node1,node2",
           "--migration-method", "none", "--migration-max-downtime", "500"))
    ok(pvc(lab, "vm", "tag", "add", "roamer", "web", "--protected"))
    assert meta(api, "roamer")["node_limit"] == ["node1", "node2"]
    shown = json.loads(ok(pvc(lab, "vm", "meta", "roamer", "--format", "json")))
    assert shown["migration_max_downtime"] == 500
    ok(pvc(lab, "vm", "define", "-", "--limit", "node3", "--migration-method", "live",
           "--tag", "web", "--tag", "extra", "--protected-tag", "keep",
           input=tiny_guest_xml("cli")))
    assert (vm(api, "cli")["node"], meta(api, "cli")["migration_method"]) == ("node3", "live")
    tags = json.loads(ok(pvc(lab, "vm", "tag", "get", "cli", "--format", "json")))["tags"]
    assert [(t["name"], t["protected"]) for t in tags] == \
        [("web", False), ("extra", False), ("keep", True)]
    listed = json.loads(ok(pvc(lab, "vm", "list", "--tag", "web", "--format", "json")))
    assert sorted(v["name"] for v in listed) == ["cli", "roamer"]
    listed = json.loads(ok(pvc(lab, "vm", "list", "--tag", "web", "--negate", "--format",
                               "json")))
    assert "cli" not in {v["name"] for v in listed} and "pinned" in {v["name"] for v in listed}
    refused = pvc(lab, "vm", "tag", "remove", "roamer", "web")
    assert refused.returncode != 0 and "protected" in refused.stdout + refused.stderr
    wait_until(lambda: all(hosts(lab, u) == ["node1"] for u in [*fillers, pinned, roamer]),
               timeout=15)
    # migrate without a node: node3 has the fewest VMs, the limit allows node2 only
    response = api.post("/vm/roamer/node", data={"action": "migrate", "wait": ""})
    assert response.status_code == 200, response.text
    wait_until(lambda: hosts(lab, roamer) == ["node2"], timeout=15)
    ok(pvc(lab, "vm", "unmigrate", "roamer", "--wait"))
    wait_until(lambda: hosts(lab, roamer) == ["node1"], timeout=15)
    # flush node1: the fillers may go anywhere, roamer only to node2, pinned nowhere: it is
    # shut down with node_autostart and the flush completes
    set_domain_state(api, "node1", "flush")
    wait_until(lambda: domain_state(api, "node1") == "flushed", timeout=30)
    assert hosts(lab, roamer) == ["node2"]
    assert hosts(lab, pinned) == []
    assert all(len(hosts(lab, u)) == 1 and hosts(lab, u) != ["node1"] for u in fillers)
    assert (vm(api, "pinned")["state"], vm(api, "pinned")["node"]) == ("shutdown", "node1")
    assert meta(api, "pinned")["node_autostart"] is True
    # ready: pinned starts again there (autostart acts once) and the others come back
    set_domain_state(api, "node1", "ready")
    wait_until(lambda: domain_state(api, "node1") == "ready", timeout=30)
    wait_until(lambda: all(hosts(lab, u) == ["node1"] for u in [*fillers, pinned, roamer]),
               timeout=20)
    assert vm(api, "pinned")["state"] == "start"
    assert meta(api, "pinned")["node_autostart"] is False


def test_recovery_after_a_fence_stays_within_the_node_limit(make_lab: LabFactory) -> None:
    lab, api = make_lab(**HA_LAB)
    victim = victim_of(api)
    others = [n for n in ("node1", "node2", "node3") if n != victim]
    # the busier of the other two is the only one `limited` may go to
    busy, idle = others
    busy_vms = [define(api, f"busy{i}", node=busy) for i in range(2)]
    limited = define(api, "limited", node=victim, limit=f"{victim},{busy}", selector="vms")
    pinned = define(api, "pinned", node=victim, limit=victim)
    free = define(api, "free", node=victim, selector="vms")
    wait_until(lambda: all(hosts(lab, u) == [victim] for u in (limited, pinned, free)) and
               all(hosts(lab, u) == [busy] for u in busy_vms), timeout=15)
    lab.signal_node(victim, signal.SIGSTOP)  # hung: found dead, fenced, its VMs recovered
    wait_until(lambda: hosts(lab, limited) == [busy] and hosts(lab, free) == [idle],
               timeout=40)
    wait_until(lambda: api.nodes()[victim]["fence_state"] == "fenced", timeout=10)
    assert hosts(lab, pinned) == []
    assert (vm(api, "pinned")["state"], vm(api, "pinned")["node"]) == ("shutdown", victim)
    assert meta(api, "pinned")["node_autostart"] is True
    # the fence restarted the node: it rejoins flushed; made ready, it starts `pinned` again
    wait_until(lambda: api.nodes()[victim]["daemon_state"] == "run", timeout=30)
    lab.refresh_pids()
    wait_until(lambda: domain_state(api, victim) == "flushed", timeout=10)
    assert hosts(lab, pinned) == []
    set_domain_state(api, victim, "ready")
    wait_until(lambda: hosts(lab, pinned) == [victim], timeout=20)
    wait_until(lambda: meta(api, "pinned")["node_autostart"] is False, timeout=10)
    assert vm(api, "pinned")["state"] == "start"
