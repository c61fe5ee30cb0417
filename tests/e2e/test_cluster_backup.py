"""Cluster state backup and restore on real labs (extensions.md §9, docs/backups.md): the CLI
and the HTTP API against real daemons, ZooKeeper read directly for what the daemons wrote.

One lab is backed up with VMs (metadata, tags), networks with static leases and ACLs, and
provisioner templates, userdata and a profile; a fresh lab takes the backup and ends with the
same desired state, its VMs defined on its nodes. The same lab then refuses a restore outside
maintenance mode, a malformed and a foreign document, with nothing changed in ZooKeeper
(`tests/e2e/desired_state.py`). Last, its primary is killed in the middle of a large restore:
the marker stays, the indexes stay consistent, the nodes hold (none of the VMs written is
defined) and the restore run again converges.

Labs without Ceph (storage templates need pools: their rules are in the fast and unit tiers).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from pvcd.state.schema import Paths
from tests.e2e.desired_state import DesiredState, changes
from tests.e2e.labclient import LabClient, LabFactory, ok, refused, wait_until, zookeeper_client
from tests.e2e.test_cli import pvc

pytestmark = pytest.mark.slow

NODES = ("node1", "node2")
YES = {"yes_i_really_mean_it": ""}
BULK = 1500  # VMs of the interrupted restore: several transactions of about 512 KiB


def populate(api: LabClient) -> dict[str, str]:
    """VMs, networks, leases, ACLs and provisioner objects; the VMs' UUIDs by name."""
    ok(api.post("/network", data={
        "vni": "100", "description": "prod", "nettype": "managed", "domain": "prod.example",
        "ip4_network": "10.100.0.0/24", "ip4_gateway": "10.100.0.1", "dhcp4": "",
        "dhcp4_start": "10.100.0.100", "dhcp4_end": "10.100.0.200"}))
    ok(api.post("/network/prod/lease", data={"macaddress": "52:54:00:00:00:01",
                                              "ipaddress": "10.100.0.10", "hostname": "db"}))
    for order, (name, rule) in enumerate((("ssh", "tcp dport 22 accept"),
                                          ("web", "tcp dport { 80, 443 } accept"))):
        ok(api.post("/network/prod/acl", data={"description": name, "direction": "in",
                                                "rule": rule, "order": str(order)}))
    ok(api.post("/network", data={"vni": "200", "description": "backend",
                                  "nettype": "bridged"}))
    uuids = {}
    for name, node, state in (("web1", "node1", "start"), ("db1", "node2", "stop")):
        ok(api.post("/vm", data={"xml": tiny_guest_xml(name), "node": node,
                                 "user_tags": "prod", "node_limit": "node1,node2"}))
        uuids[name] = api.get(f"/vm/{name}").json()[0]["uuid"]
        if state == "stop":
            ok(api.post(f"/vm/{name}/state", data={"state": "stop"}))
    for path, values in (
            ("/template/system", {"name": "small", "vcpus": "1", "vram": "256",
                                  "node_limit": "node1"}),
            ("/template/network", {"name": "prod"}),
            ("/template/network/prod/net", {"vni": "100"}),
            ("/userdata", {"name": "basic", "data": "#cloud-config\nhostname: web\n"}),
            ("/profile", {"name": "web", "profile_type": "provisioner",
                          "system_template": "small", "network_template": "prod",
                          "userdata": "basic", "script": "blank"})):
        ok(api.post("/provisioner" + path, data=values))
    return uuids


def defined_on(lab: Lab, uuid: str) -> list[str]:
    return [node for node in NODES if uuid in lab.domains(node)]


def restore(api: LabClient, document: dict[str, Any]) -> dict[str, Any]:
    """POST /restore (the document as the JSON body) with `wait`: the finished task's answer."""
    response = api.post("/restore", params={**YES, "wait": ""}, data=json.dumps(document),
                        headers={"Content-Type": "application/json"}, timeout=150)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_backup_into_a_fresh_lab_refusals_and_an_interrupted_restore(
        make_lab: LabFactory, tmp_path: Path) -> None:
    lab_a, api_a = make_lab(nodes=2, fencing="none")
    uuids = populate(api_a)
    wait_until(lambda: lab_a.domains("node1").get(uuids["web1"], {}).get("state") == "running",
               timeout=10)
    backup_file = tmp_path / "cluster.json"
    out = pvc(lab_a, "cluster", "backup", "-f", str(backup_file))
    assert out.returncode == 0, out.stderr
    assert backup_file.stat().st_mode & 0o777 == 0o600
    document = json.loads(backup_file.read_text())
    assert document["format"] == "pvcd-cluster-backup"
    assert not [p for p in document["znodes"] if p.startswith(("nodes/", "sessions/"))]

    # a fresh, empty lab takes it outside maintenance mode, through the CLI
    lab_b, api_b = make_lab(nodes=2, fencing="none")
    out = pvc(lab_b, "cluster", "restore", str(backup_file), "--yes", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Restored the cluster's state (2 VMs, 2 networks, 4 provisioner objects)" in \
        out.stdout, out.stdout
    restored = ok(api_b.get("/backup"))
    assert restored["znodes"] == document["znodes"]
    saved = list(Path(lab_b.load().backup_path or "").glob("pvcd-pre-restore-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["znodes"] == \
        {"schema/version": {"version": 2}}
    wait_until(lambda: defined_on(lab_b, uuids["web1"]) == ["node1"] and
               defined_on(lab_b, uuids["db1"]) == ["node2"], timeout=10)
    wait_until(lambda: lab_b.domains("node1")[uuids["web1"]]["state"] == "running", timeout=10)
    assert lab_b.domains("node2")[uuids["db1"]]["state"] != "running"
    assert [a["description"] for a in ok(api_b.get("/network/prod/acl"))] == ["ssh", "web"]
    assert ok(api_b.get("/network/prod/lease?static"))[0]["hostname"] == "db"
    assert ok(api_b.get("/provisioner/profile/web"))[0]["userdata"] == "basic"
    assert ok(api_b.get("/vm/web1"))[0]["tags"][0]["name"] == "prod"

    refusals_change_nothing(lab_b, api_b, document)
    interrupted_restore_converges(lab_b, api_b, document)


def refusals_change_nothing(lab: Lab, api: LabClient, document: dict[str, Any]) -> None:
    info = lab.load()
    with zookeeper_client(lab) as client:
        state = DesiredState(client, Paths(info.zk_root))

        def unchanged(response: Any, *words: str) -> None:
            before = state.current()
            refused(response, *words)
            assert changes(before, state.current()) == []

        body = {"data": json.dumps(document), "headers": {"Content-Type": "application/json"}}
        unchanged(api.post("/restore", params=YES, **body), "maintenance mode")
        ok(api.post("/maintenance", data={"state": "on"}))
        unchanged(api.post("/restore", params=YES, **body), "web1", "still run")
        ok(api.post("/vm/web1/state", data={"state": "stop"}))
        wait_until(lambda: ok(api.get("/vm/web1"))[0]["running_on"] is None, timeout=10)
        unchanged(api.post("/restore", params=YES, data="{not json",
                           headers={"Content-Type": "application/json"}), "not a JSON")
        pvc_dump = {"/pvc/nodes": "", "/pvc/domains": "", "/pvc/config/maintenance": "true"}
        unchanged(api.post("/restore", data={"cluster_data": json.dumps(pvc_dump), **YES}),
                  "PVC 1.0 dump")
        foreign = json.loads(json.dumps(document))
        foreign["znodes"]["nodes/node1"] = {"name": "node1", "coordinator": True}
        unchanged(api.post("/restore", params=YES, data=json.dumps(foreign),
                           headers={"Content-Type": "application/json"}), "never holds")
        unchanged(api.post("/restore", params=YES, data=json.dumps(
            {**document, "schema_version": 1}), headers={"Content-Type": "application/json"}),
            "schema version")


def big_document(document: dict[str, Any], count: int) -> dict[str, Any]:
    """`document` with `count` more stopped VMs: a restore of many transactions."""
    big = json.loads(json.dumps(document))
    template = big["znodes"][next(p for p in big["znodes"] if p.startswith("vms/"))]
    for index in range(count):
        name = f"bulk{index:04d}"
        uuid = f"00000000-0000-4000-8000-{index:012d}"
        big["znodes"][f"vms/{uuid}"] = {
            **template, "uuid": uuid, "name": name, "xml": tiny_guest_xml(name, uuid),
            "state": "stop", "node": NODES[index % 2], "tags": []}
        big["znodes"][f"vm-names/{name}"] = {"uuid": uuid}
    return big


def consistent(client: KazooClient, paths: Paths) -> int:
    """Check both name indexes against their objects in ZooKeeper; the number of VMs."""
    def doc(path: str) -> Any:
        return json.loads(client.get(path)[0])

    vms = client.get_children(paths.vms)
    for uuid in vms:
        assert doc(paths.vm_name(doc(paths.vm(uuid))["name"])) == {"uuid": uuid}
    for name in client.get_children(paths.vm_names):
        assert doc(paths.vm(doc(paths.vm_name(name))["uuid"]))["name"] == name
    for vni in client.get_children(paths.networks):
        description = doc(paths.network(vni))["description"]
        assert doc(paths.network_name(description)) == {"vni": int(vni)}
    return len(vms)


def interrupted_restore_converges(lab: Lab, api: LabClient, document: dict[str, Any]) -> None:
    primary = api.primary()
    assert primary is not None
    big = big_document(document, BULK)
    info = lab.load()
    paths = Paths(info.zk_root)
    with zookeeper_client(lab) as client:
        killed = threading.Event()

        def on_names(names: list[str]) -> bool:
            # the first transaction of VMs is in: the restore's daemon dies mid-way
            if len(names) > 2 and not killed.is_set():
                lab.signal_node(primary, signal.SIGKILL)
                killed.set()
            return not killed.is_set()

        client.ChildrenWatch(paths.vm_names, on_names)
        response = api.post("/restore", params=YES, data=json.dumps(big),
                            headers={"Content-Type": "application/json"}, timeout=60)
        assert response.status_code == 202, response.text
        assert killed.wait(30), "the restore never wrote a VM"
        assert lab.wait_node_exit(primary)
        written = consistent(client, paths)
        assert client.exists(paths.restore_marker), "an interrupted restore keeps its marker"
        assert written < BULK + 2, "the restore finished before the kill"
        lab.start_node(primary)
        wait_until(lambda: api.primary() is not None, timeout=30)
        task = response.json()["task_id"]
        wait_until(lambda: ok(api.get(f"/tasks/{task}"))["error"] == "Interrupted", timeout=30)
        assert client.exists(paths.restore_marker), "the primary's cleanup keeps the marker"
        # the nodes hold while the marker is there: none of the VMs written before the kill is
        # defined (the other node lived through it all, and would have defined its share long
        # since), and the restarted node (the test driver forgets its domains) defines nothing
        other = next(n for n in NODES if n != primary)
        wait_until(lambda: lab.domains(primary) is not None, timeout=30)  # its agent is up
        assert len(lab.domains(primary)) == 0
        assert len(lab.domains(other)) == 1

        started = time.monotonic()
        result = restore(api, big)
        assert result["result"]["kept"] > 0, result  # the groups written before the kill
        assert consistent(client, paths) == BULK + 2
        assert not client.exists(paths.restore_marker)
        print(f"restore finished after the interruption in {time.monotonic() - started:.1f} s")
    restored = ok(api.get("/backup"))["znodes"]
    assert restored == big["znodes"]
    wait_until(lambda: sum(len(lab.domains(n)) for n in NODES) == BULK + 2, timeout=60)
