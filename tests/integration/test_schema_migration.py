"""The schema 2 migration (extensions.md Appendix A) on a schema-1 tree written by hand, as a
cluster upgraded from pvcd with schema 1 has it: `selector` becomes `node_selector`, a VM a
flush shut down for want of a target gets `node_autostart`, every VM gets the metadata
defaults; then a real daemon runs on the upgraded tree and starts its VM."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from kazoo.client import KazooClient

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.zookeeper import ZooKeeperEnsemble
from pvcd.state.codec import decode, encode
from pvcd.state.schema import SCHEMA_VERSION, Paths, ensure_schema
from tests.integration.daemon_process import start_daemon

UUID_A = "6f1c3a52-5f36-4b0e-9d5e-6e0c6b8f2a01"
UUID_B = "6f1c3a52-5f36-4b0e-9d5e-6e0c6b8f2a02"


def schema_1_vm(uuid: str, name: str, node: str, **fields: object) -> dict[str, object]:
    """A VM document as schema-1 pvcd wrote it (no metadata fields, `selector`)."""
    return {"uuid": uuid, "name": name, "xml": tiny_guest_xml(name, uuid), "node": node,
            "memory": 64, "vcpu": 1, "state": "start", "last_node": None, "selector": None,
            "restart_request": 0, "state_request": 0, "migration": None, "resume_on": None,
            "info": {}, "remove": None, **fields}


def write_schema_1_tree(zk: KazooClient, paths: Paths, vms: list[dict[str, object]]) -> None:
    zk.create(paths.schema_version, encode({"version": 1}), makepath=True)
    for path in (paths.vms, paths.vm_names, paths.nodes):
        zk.ensure_path(path)
    for doc in vms:
        zk.create(paths.vm(str(doc["uuid"])), encode(doc))
        zk.create(paths.vm_name(str(doc["name"])), encode({"uuid": doc["uuid"]}))


def vm_doc(zk: KazooClient, paths: Paths, uuid: str) -> dict[str, object]:
    return dict(decode(zk.get(paths.vm(uuid))[0]))


def test_schema_1_vms_are_upgraded_once(zk: KazooClient, zk_root: str) -> None:
    paths = Paths(zk_root)
    write_schema_1_tree(zk, paths, [
        schema_1_vm(UUID_A, "web", "n1", selector="vcpus"),
        schema_1_vm(UUID_B, "db", "n1", state="shutdown", resume_on="n1")])
    assert SCHEMA_VERSION == 2
    assert ensure_schema(zk, paths) == 2
    assert decode(zk.get(paths.schema_version)[0]) == {"version": 2}
    web, db = vm_doc(zk, paths, UUID_A), vm_doc(zk, paths, UUID_B)
    assert "selector" not in web and "resume_on" not in db
    assert {k: web[k] for k in ("node_limit", "node_selector", "node_autostart",
                                "migration_method", "migration_max_downtime", "profile",
                                "tags")} == {
        "node_limit": [], "node_selector": "vcpus", "node_autostart": False,
        "migration_method": "none", "migration_max_downtime": 300, "profile": None,
        "tags": []}
    assert (db["node_selector"], db["node_autostart"], db["state"]) == \
        ("none", True, "shutdown")
    version = zk.exists(paths.vm(UUID_A)).version
    assert ensure_schema(zk, paths) == 2  # a second run changes nothing
    assert zk.exists(paths.vm(UUID_A)).version == version


def test_a_daemon_upgrades_a_schema_1_tree_and_runs_its_vm(
        zk: KazooClient, zk_root: str, zookeeper: ZooKeeperEnsemble, tmp_path: Path) -> None:
    paths = Paths(zk_root)
    write_schema_1_tree(zk, paths, [schema_1_vm(UUID_A, "web", "n1", selector="load")])
    port = int(zookeeper.connect_string.rsplit(":", 1)[1])
    process = start_daemon(tmp_path, port, zk_root, "n1", session_timeout=5.0)
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            raw = zk.exists(paths.vm_status(UUID_A)) and zk.get(paths.vm_status(UUID_A))[0]
            status = decode(raw) if raw else None
            if status and status.get("state") == "running":
                break
            assert process.poll() is None, (tmp_path / "pvcd.log").read_text()
            time.sleep(0.05)
        assert status and status["state"] == "running" and status["node"] == "n1", \
            (tmp_path / "pvcd.log").read_text()[-3000:]
        assert decode(zk.get(paths.schema_version)[0]) == {"version": 2}
        assert vm_doc(zk, paths, UUID_A)["node_selector"] == "load"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
