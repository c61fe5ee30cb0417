"""The `pvc` CLI against real labs: every action goes through the CLI (a subprocess, as an
operator would run it, with `--lab DIR`); every effect is checked through the API, and for VMs
in the nodes' libvirt (the lab agent).

`--wait` is checked by looking right after the command returns, without polling: a wait that
returned early fails these tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient, LabFactory, wait_until

pytestmark = pytest.mark.slow

ROOT = str(Path(__file__).resolve().parents[2])
NODES = ("node1", "node2", "node3")


def pvc(lab: Lab | None, *args: str, input: str = "", env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m pvcd.cli.main [--lab DIR] ARGS`, isolated from the caller's PVC_*
    variables and config file."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PVC_")}
    clean.update({"PYTHONPATH": ROOT, "PVC_CONFIG": "/nonexistent/pvc/connections.yaml"})
    clean.update(env or {})
    argv = [sys.executable, "-m", "pvcd.cli.main"]
    if lab is not None:
        argv += ["--lab", str(lab.workdir)]
    return subprocess.run([*argv, *args], input=input, capture_output=True, text=True,
                          env=clean, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabClient]]:
    """One 3-node lab (test-driver libvirt) for the node and VM tests of this module."""
    the_lab = Lab(tmp_path_factory.mktemp("clilab") / "lab")
    info = the_lab.up(nodes=3)
    try:
        yield the_lab, LabClient(info)
    finally:
        the_lab.down()


# --- nodes ------------------------------------------------------------------------------


def test_node_list_and_info_as_tables_and_json(lab: tuple[Lab, LabClient]) -> None:
    the_lab, api = lab
    lines = ok(pvc(the_lab, "node", "list")).splitlines()
    assert lines[0].split()[:4] == ["NAME", "DAEMON", "COORDINATOR", "DOMAIN"]
    assert [line.split()[0] for line in lines[1:]] == list(NODES)
    assert all(line.split()[1] == "run" for line in lines[1:])

    listed = as_json(pvc(the_lab, "node", "list", "--format", "json"))
    assert [n["name"] for n in listed] == list(NODES)
    assert {n["name"]: n["coordinator_state"] for n in listed} == \
        {n: v["coordinator_state"] for n, v in api.nodes().items()}
    assert [n["name"] for n in as_json(pvc(the_lab, "-f", "json", "node", "list", "^node[13]$"))] \
        == ["node1", "node3"]

    info = ok(pvc(the_lab, "node", "info", "node2"))
    assert "Name:" in info and "node2" in info and "Daemon state:" in info
    assert [n["name"] for n in as_json(pvc(the_lab, "node", "info", "node2", "-f", "json"))] \
        == ["node2"]


def test_unknown_node_is_a_failure_with_the_api_message(lab: tuple[Lab, LabClient]) -> None:
    the_lab, api = lab
    expected = api.get("/node/node9").json()["message"]
    for args in (["node", "info", "node9"], ["node", "flush", "node9", "--wait"],
                 ["node", "primary", "node9"]):
        result = pvc(the_lab, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.strip() == f"Error: {expected}"
        assert result.stdout == ""
    bad_limit = pvc(the_lab, "node", "list", "node(")
    assert bad_limit.returncode == 1 and "not a valid regular expression" in bad_limit.stderr


def test_authentication_and_connection_failures_are_clear(lab: tuple[Lab, LabClient],
                                                          tmp_path: Path) -> None:
    _, api = lab
    url = api.base
    wrong = pvc(None, "node", "list", env={"PVC_URL": url, "PVC_TOKEN": "not-the-token"})
    assert wrong.returncode == 4
    assert f"authentication failed: the PVC API at {url} rejected the token" in wrong.stderr
    assert "PVC_TOKEN" in wrong.stderr
    missing = pvc(None, "node", "list", env={"PVC_URL": url})
    assert missing.returncode == 4 and "authentication required" in missing.stderr

    config = tmp_path / "connections.yaml"
    config.write_text(f"default: good\nconnections:\n  good: {{url: '{url}', token: "
                      f"'{api.info.token}'}}\n  stale: {{url: '{url}', token: 'old'}}\n")
    env = {"PVC_CONFIG": str(config)}
    assert [n["name"] for n in as_json(pvc(None, "-f", "json", "node", "list", env=env))] \
        == list(NODES)
    stale = pvc(None, "--connection", "stale", "node", "list", env=env)
    assert stale.returncode == 4
    assert f"rejected the token from connection 'stale' in {config}" in stale.stderr

    closed = pvc(None, "node", "list", env={"PVC_URL": "http://127.0.0.1:9/api/v1"})
    assert closed.returncode == 3
    assert "cannot connect to the PVC API at http://127.0.0.1:9/api/v1" in closed.stderr


def test_primary_and_secondary_wait_until_the_api_has_moved(
        lab: tuple[Lab, LabClient]) -> None:
    the_lab, api = lab
    first = api.primary()
    target = next(n for n in NODES if n != first)
    result = pvc(the_lab, "node", "primary", target, "--wait", "--timeout", "30")
    assert "Waiting for node" in ok(result) + result.stderr
    assert api.primary() == target  # no polling: --wait returned after the move
    assert api.nodes()[first]["coordinator_state"] == "secondary"

    ok(pvc(the_lab, "node", "secondary", target, "--wait", "--timeout", "30"))
    after = api.primary()
    assert after is not None and after != target
    assert api.nodes()[target]["coordinator_state"] == "secondary"


def test_flush_and_ready_wait_for_the_vms(lab: tuple[Lab, LabClient], tmp_path: Path) -> None:
    the_lab, api = lab
    xml = tmp_path / "flushme.xml"
    xml.write_text(tiny_guest_xml("flushme"))
    ok(pvc(the_lab, "vm", "define", str(xml), "--node", "node1"))
    uuid = vm(api, "flushme")["uuid"]
    ok(pvc(the_lab, "vm", "start", "flushme", "--wait", "--timeout", "30"))
    assert running_on(the_lab, uuid) == ["node1"]

    ok(pvc(the_lab, "node", "flush", "node1", "--wait", "--timeout", "60"))
    assert api.get("/node/node1").json()[0]["domain_state"] == "flushed"
    moved = vm(api, "flushme")
    assert moved["node"] != "node1" and moved["last_node"] == "node1"
    assert running_on(the_lab, uuid) == [moved["node"]]

    ok(pvc(the_lab, "node", "ready", "node1", "--wait", "--timeout", "60"))
    assert api.get("/node/node1").json()[0]["domain_state"] == "ready"
    wait_until(lambda: vm(api, "flushme")["node"] == "node1", timeout=10)
    ok(pvc(the_lab, "vm", "undefine", "flushme", "--yes"))


# --- VMs --------------------------------------------------------------------------------


def vm(api: LabClient, name: str) -> dict[str, Any]:
    response = api.get(f"/vm/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json()[0])


def running_on(lab: Lab, uuid: str) -> list[str]:
    return [n for n in NODES if lab.domains(n).get(uuid, {}).get("state") == "running"]


def test_vm_define_states_migrate_and_dump(lab: tuple[Lab, LabClient], tmp_path: Path) -> None:
    the_lab, api = lab
    xml = tmp_path / "web1.xml"
    xml.write_text(tiny_guest_xml("web1", memory_mib=64))
    message = ok(pvc(the_lab, "vm", "define", str(xml), "--node", "node2"))
    assert "web1" in message
    obj = vm(api, "web1")
    uuid = obj["uuid"]
    assert obj["node"] == "node2" and obj["memory"] == 64

    # define from standard input, and a definition the API refuses
    ok(pvc(the_lab, "vm", "define", "-", "--node", "node3", "--wait",
           input=tiny_guest_xml("web2")))
    assert vm(api, "web2")["node"] == "node3"
    assert running_on(the_lab, vm(api, "web2")["uuid"]) == ["node3"]  # --wait: running now
    again = pvc(the_lab, "vm", "define", str(xml))
    assert again.returncode == 1
    assert again.stderr.strip() == "Error: A VM named 'web1' already exists"

    ok(pvc(the_lab, "vm", "start", "web1", "--wait", "--timeout", "30"))
    assert running_on(the_lab, uuid) == ["node2"]
    ok(pvc(the_lab, "vm", "stop", "web1", "--wait", "--timeout", "30"))
    assert the_lab.domains("node2")[uuid]["state"] == "shutoff"
    assert vm(api, "web1")["state"] == "stop"
    ok(pvc(the_lab, "vm", "start", "web1", "-w", "--timeout", "30"))
    assert running_on(the_lab, uuid) == ["node2"]

    migrated = as_json(pvc(the_lab, "-f", "json", "vm", "migrate", "web1", "--node", "node1",
                           "--wait", "--timeout", "60"))
    assert "node1" in migrated["message"]
    assert migrated["result"]["node"] == "node1" and migrated["result"]["last_node"] == "node2"
    assert running_on(the_lab, uuid) == ["node1"]
    table = ok(pvc(the_lab, "vm", "list", "web1"))
    assert "from node2" in table

    ok(pvc(the_lab, "vm", "unmigrate", "web1", "--wait", "--timeout", "60"))
    assert running_on(the_lab, uuid) == ["node2"]
    assert vm(api, "web1")["last_node"] is None
    ok(pvc(the_lab, "vm", "move", "web1", "--node", "node3", "--wait", "--timeout", "60"))
    assert running_on(the_lab, uuid) == ["node3"]
    assert vm(api, "web1")["last_node"] is None

    dump = ok(pvc(the_lab, "vm", "dump", "web1"))
    assert dump.rstrip("\n") == api.get("/vm/web1/dump").text.rstrip("\n")
    assert "<name>web1</name>" in dump

    listed = as_json(pvc(the_lab, "vm", "list", "--format", "json", "--node", "node3"))
    assert sorted(v["name"] for v in listed) == ["web1", "web2"]
    info = ok(pvc(the_lab, "vm", "info", uuid))
    assert "web1" in info and "Running on:" in info

    status = ok(pvc(the_lab, "cluster", "status"))
    assert re.search(rf"Primary:\s+{api.primary()}\n", status)
    assert "VMs:" in status and "2 start" in status
    summary = as_json(pvc(the_lab, "-f", "json", "cluster", "status"))  # GET /status
    assert summary["vms"] == {"total": 2, "start": 2} and summary["nodes"]["total"] == 3

    for name in ("web1", "web2"):
        ok(pvc(the_lab, "vm", "undefine", name, "--yes"))


def test_vm_modify_in_the_editor(lab: tuple[Lab, LabClient], tmp_path: Path) -> None:
    the_lab, api = lab
    ok(pvc(the_lab, "vm", "define", "-", "--node", "node1", input=tiny_guest_xml("edited")))
    assert vm(api, "edited")["vcpu"] == 1
    script = tmp_path / "editor.py"
    script.write_text("import pathlib, sys\n"
                      "path = pathlib.Path(sys.argv[1])\n"
                      "path.write_text(path.read_text().replace('<vcpu>1</vcpu>', "
                      "'<vcpu>2</vcpu>'))\n")
    editor = f"{sys.executable} {script}"  # an editor command with an argument
    result = pvc(the_lab, "vm", "modify", "edited", "--restart", env={"EDITOR": editor})
    assert "Modified VM 'edited'" in ok(result)
    assert "+  <vcpu>2</vcpu>" in result.stderr  # the diff
    assert vm(api, "edited")["vcpu"] == 2
    assert "<vcpu>2</vcpu>" in api.get("/vm/edited/dump").text

    # an editor that changes nothing: nothing is sent
    unchanged = pvc(the_lab, "vm", "modify", "edited", env={"EDITOR": "true"})
    assert "unchanged; nothing sent" in ok(unchanged)
    # an editor that fails: nothing is sent either
    failed = pvc(the_lab, "vm", "modify", "edited", env={"EDITOR": "false"})
    assert failed.returncode == 1 and "editor exited with status 1" in failed.stderr
    assert vm(api, "edited")["vcpu"] == 2

    # a file instead of the editor
    new = tmp_path / "edited.xml"
    new.write_text(api.get("/vm/edited/dump").text.replace("<vcpu>2</vcpu>", "<vcpu>3</vcpu>"))
    ok(pvc(the_lab, "vm", "modify", "edited", str(new)))
    assert vm(api, "edited")["vcpu"] == 3
    ok(pvc(the_lab, "vm", "undefine", "edited", "--yes"))


def test_undefine_asks_first(lab: tuple[Lab, LabClient]) -> None:
    the_lab, api = lab
    ok(pvc(the_lab, "vm", "define", "-", "--node", "node2", input=tiny_guest_xml("victim")))
    uuid = vm(api, "victim")["uuid"]
    wait_until(lambda: running_on(the_lab, uuid) == ["node2"], timeout=10)

    declined = pvc(the_lab, "vm", "undefine", "victim", input="n\n")
    assert declined.returncode == 1
    assert "Stop and undefine VM 'victim'?" in declined.stderr
    assert vm(api, "victim")["uuid"] == uuid  # still there
    no_terminal = pvc(the_lab, "vm", "undefine", "victim")  # nobody to answer: no
    assert no_terminal.returncode == 1 and vm(api, "victim")["uuid"] == uuid

    ok(pvc(the_lab, "vm", "undefine", "victim", input="y\n"))
    assert api.get("/vm/victim").status_code == 510
    wait_until(lambda: uuid not in the_lab.domains("node2"), timeout=10)

    ok(pvc(the_lab, "vm", "define", "-", input=tiny_guest_xml("victim2")))
    ok(pvc(the_lab, "vm", "undefine", "victim2", "--yes"))
    assert api.get("/vm/victim2").status_code == 510
    gone = pvc(the_lab, "vm", "info", "victim2")
    assert gone.returncode == 1 and gone.stderr.strip() == "Error: VM 'victim2' not found"


# --- TLS ----------------------------------------------------------------------------------


def test_a_tls_lab_is_trusted_through_its_certificate(make_lab: LabFactory) -> None:
    the_lab, api = make_lab(nodes=1, tls=True)
    assert api.base.startswith("https://")
    assert [n["name"] for n in as_json(pvc(the_lab, "-f", "json", "node", "list"))] == ["node1"]
    shown = as_json(pvc(the_lab, "connection", "show", "-f", "json"))
    assert shown["ca_file"] == str((the_lab.workdir / "tls" / "cert.pem").resolve())
    untrusted = pvc(None, "node", "list", env={"PVC_URL": api.base, "PVC_TOKEN": "x"})
    assert untrusted.returncode == 3 and "TLS certificate" in untrusted.stderr


# --- networks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def netlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabClient]]:
    the_lab = Lab(tmp_path_factory.mktemp("clinetlab") / "lab")
    info = the_lab.up(nodes=3, network=True)
    try:
        yield the_lab, LabClient(info)
    finally:
        the_lab.down()


def test_networks_leases_and_acls(netlab: tuple[Lab, LabClient]) -> None:
    the_lab, api = netlab
    ok(pvc(the_lab, "network", "add", "140", "--description", "net140", "--type", "managed",
           "--ip4-network", "10.140.0.0/24", "--ip4-gateway", "10.140.0.1", "--dhcp4",
           "--dhcp4-start", "10.140.0.100", "--dhcp4-end", "10.140.0.199",
           "--domain", "net140.test"))
    net = api.get("/network/140").json()[0]
    assert net["description"] == "net140" and net["ip4"]["dhcp_flag"] is True
    assert net["domain"] == "net140.test"
    table = ok(pvc(the_lab, "network", "list"))
    assert "net140" in table and "10.140.0.100-10.140.0.199" in table
    assert as_json(pvc(the_lab, "network", "info", "net140", "-f", "json"))[0]["vni"] == 140

    refused = pvc(the_lab, "network", "add", "141", "-d", "x", "-t", "managed",
                  "--ip4-network", "10.141.0.0/24")
    assert refused.returncode == 1 and "ip4_gateway is required" in refused.stderr

    ok(pvc(the_lab, "network", "modify", "140", "--no-dhcp4", "--domain", "other.test"))
    net = api.get("/network/140").json()[0]
    assert net["ip4"]["dhcp_flag"] is False and net["domain"] == "other.test"
    assert net["ip4"]["network"] == "10.140.0.0/24"  # untouched

    mac = "52:54:00:14:00:01"
    ok(pvc(the_lab, "network", "lease", "add", "net140", "10.140.0.50", mac,
           "--hostname", "db1"))
    leases = api.get("/network/140/lease").json()
    assert [(le["mac_address"], le["ip4_address"], le["hostname"]) for le in leases] == \
        [(mac, "10.140.0.50", "db1")]
    table = ok(pvc(the_lab, "network", "lease", "list", "140", "--static"))
    assert mac in table and "static" in table
    assert as_json(pvc(the_lab, "network", "lease", "info", "140", mac, "-f", "json")) == \
        api.get(f"/network/140/dhcp/{mac}").json()
    declined = pvc(the_lab, "network", "lease", "remove", "140", mac, input="n\n")
    assert declined.returncode == 1 and len(api.get("/network/140/lease").json()) == 1
    ok(pvc(the_lab, "network", "lease", "remove", "140", mac, "--yes"))
    assert api.get("/network/140/lease").json() == []

    ok(pvc(the_lab, "network", "acl", "add", "140", "ssh", "--direction", "in",
           "--rule", "tcp dport 22 accept"))
    ok(pvc(the_lab, "network", "acl", "add", "140", "web", "--direction", "in",
           "--rule", "tcp dport 80 accept", "--order", "0"))
    acls = api.get("/network/140/acl").json()
    assert [(a["description"], a["order"]) for a in acls] == [("web", 0), ("ssh", 1)]
    lines = ok(pvc(the_lab, "network", "acl", "list", "140")).splitlines()
    assert lines[0].split() == ["DIRECTION", "ORDER", "DESCRIPTION", "RULE"]
    assert [line.split()[2] for line in lines[1:]] == ["web", "ssh"]
    assert "tcp dport 80 accept" in ok(pvc(the_lab, "network", "acl", "info", "140", "web"))
    absent = pvc(the_lab, "network", "acl", "info", "140", "nope")
    assert absent.returncode == 1 and "not found" in absent.stderr
    ok(pvc(the_lab, "network", "acl", "remove", "140", "web", "--yes"))  # direction found
    assert [a["description"] for a in api.get("/network/140/acl").json()] == ["ssh"]
    unknown = pvc(the_lab, "network", "acl", "remove", "140", "nope", "--yes")
    assert unknown.returncode == 1 and "not found" in unknown.stderr

    declined = pvc(the_lab, "network", "remove", "net140", input="n\n")
    assert declined.returncode == 1 and api.get("/network/140").status_code == 200
    ok(pvc(the_lab, "network", "remove", "net140", "--yes"))
    assert api.get("/network/140").status_code == 510
    assert ok(pvc(the_lab, "network", "list")).strip() == "No networks found."


# --- storage --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cephlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabClient]]:
    the_lab = Lab(tmp_path_factory.mktemp("clicephlab") / "lab")
    info = the_lab.up(nodes=3, ceph=True)
    try:
        yield the_lab, LabClient(info)
    finally:
        the_lab.down()


@pytest.mark.timeout(300)
@pytest.mark.ceph
def test_storage_pools_volumes_snapshots_and_osds(cephlab: tuple[Lab, LabClient]) -> None:
    the_lab, api = cephlab
    wait_until(lambda: api.get("/storage/ceph/status").status_code == 200, timeout=30)
    assert "health:" in ok(pvc(the_lab, "storage", "status"))
    assert "total_objects" in ok(pvc(the_lab, "storage", "util"))
    wait_until(lambda: as_json(pvc(the_lab, "cluster", "status", "-f", "json"))["osds"][
        "total"] == 2, timeout=15)

    # each OSD's node comes from the periodic sync of the CRUSH tree: give the first one time
    osds = wait_until(lambda: (found := as_json(pvc(the_lab, "storage", "osd", "list", "-f",
                                                    "json"))) and
                      all(o["node"] for o in found) and found, timeout=15)
    assert len(osds) == 2 and {o["node"] for o in osds} <= set(NODES)
    ok(pvc(the_lab, "storage", "osd", "set", "noout"))
    wait_until(lambda: "noout" in api.get("/storage/ceph/status").json()["ceph_data"],
               timeout=10)
    ok(pvc(the_lab, "storage", "osd", "unset", "noout"))

    ok(pvc(the_lab, "storage", "pool", "add", "vms", "16"))
    assert [p["name"] for p in api.get("/storage/ceph/pool").json()] == ["vms"]
    ok(pvc(the_lab, "storage", "volume", "add", "vms", "disk1", "64M"))
    assert api.get("/storage/ceph/volume/vms/disk1").json()[0]["stats"]["size"] == 64 * 2 ** 20
    ok(pvc(the_lab, "storage", "volume", "resize", "vms", "disk1", "128M"))
    assert api.get("/storage/ceph/volume/vms/disk1").json()[0]["stats"]["size"] == \
        128 * 2 ** 20
    shrink = pvc(the_lab, "storage", "volume", "resize", "vms", "disk1", "32M")
    assert shrink.returncode == 1 and "allow_shrink" in shrink.stderr
    table = ok(pvc(the_lab, "storage", "volume", "list", "--pool", "vms"))
    assert "disk1" in table and "128 MiB" in table

    ok(pvc(the_lab, "storage", "snapshot", "add", "vms", "disk1", "before"))
    snaps = as_json(pvc(the_lab, "storage", "snapshot", "list", "--volume", "disk1",
                        "-f", "json"))
    assert snaps == [{"pool": "vms", "volume": "disk1", "snapshot": "before"}]
    ok(pvc(the_lab, "storage", "snapshot", "remove", "vms", "disk1", "before", "--yes"))
    assert api.get("/storage/ceph/volume/snapshot").json() == []

    ok(pvc(the_lab, "storage", "volume", "rename", "vms", "disk1", "disk2"))
    assert [v["name"] for v in api.get("/storage/ceph/volume").json()] == ["disk2"]
    ok(pvc(the_lab, "storage", "volume", "remove", "vms", "disk2", "-y"))

    declined = pvc(the_lab, "storage", "pool", "remove", "vms", input="n\n")
    assert declined.returncode == 1 and "DELETE ALL ITS VOLUMES" in declined.stderr
    assert [p["name"] for p in api.get("/storage/ceph/pool").json()] == ["vms"]
    ok(pvc(the_lab, "storage", "pool", "remove", "vms", "--yes"))
    assert api.get("/storage/ceph/pool").json() == []
    missing = pvc(the_lab, "storage", "osd", "remove", "7", "--yes")
    assert missing.returncode == 1 and missing.stderr.strip() == "Error: OSD 7 not found"


def test_shell_completion_offers_the_clusters_names(lab: tuple[Lab, LabClient]) -> None:
    the_lab, _ = lab

    def complete(words: str) -> list[str]:
        env = {"COMP_WORDS": f"pvc --lab {the_lab.workdir} {words}",
               "COMP_CWORD": str(len(words.split(" ")) + 2), "_PVC_COMPLETE": "bash_complete"}
        out = ok(pvc(None, env=env))
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert complete("node info ") == list(NODES)
    assert complete("node flush node") == list(NODES)
    assert complete("vm mi") == ["migrate"]
    assert "bash_complete" in ok(pvc(None, env={"_PVC_COMPLETE": "bash_source"}))
