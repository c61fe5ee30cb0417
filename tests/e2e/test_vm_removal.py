"""The VM lifecycle at its edges, on a Ceph lab: removal with disks, and rename.

`DELETE /vm/<vm>?delete_disks` must remove the volumes only after the VM's node has taken the
guest down and undefined it. The test holds the node's daemon still (SIGSTOP) while the removal
is pending: its libvirt cannot change then, so the domain is still defined there, and Ceph
(`rbd ls`) must still hold every volume. Only after the node goes on are the VM and its volumes
gone. A rename (`POST /vm/<vm>/rename`) is checked in the node's libvirt (new name, same UUID)
and in Ceph (the volumes named after the VM follow it).
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from pvcd.lab.lab import Lab
from pvcd.state.codec import decode
from pvcd.state.schema import Paths
from tests.e2e.labclient import LabClient, wait_until, zookeeper_client
from tests.e2e.test_cli import ok as cli_ok
from tests.e2e.test_cli import pvc as cli
from tests.e2e.test_storage import Ceph, call, ok, refused

pytestmark = pytest.mark.slow

TIMEOUT = 60


@pytest.fixture(scope="module")
def ceph_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabClient]]:
    lab = Lab(tmp_path_factory.mktemp("vm-removal") / "lab")
    # no fencing, and a session that outlives the short SIGSTOP these tests hold a node in
    info = lab.up(nodes=2, ceph=True, fencing="none", session_timeout=5.0)
    try:
        yield lab, LabClient(info)
    finally:
        lab.down()


@pytest.fixture(scope="module")
def zk(ceph_lab: tuple[Lab, LabClient]) -> Iterator[KazooClient]:
    with zookeeper_client(ceph_lab[0]) as client:
        yield client


@pytest.fixture
def ceph(ceph_lab: tuple[Lab, LabClient]) -> Ceph:
    return Ceph(ceph_lab[0])


@pytest.fixture
def pool(ceph_lab: tuple[Lab, LabClient], ceph: Ceph) -> Iterator[str]:
    api = ceph_lab[1]
    name = f"p{secrets.token_hex(3)}"
    ok(call(api, "POST", "/storage/ceph/pool", pool=name, pgs=16))
    yield name
    if name in ceph.pools():
        ok(call(api, "DELETE", f"/storage/ceph/pool/{name}", yes_i_really_mean_it=1))


def read(zk: KazooClient, path: str) -> Any:
    try:
        return decode(zk.get(path)[0])
    except NoNodeError:
        return None


def secondary(api: LabClient) -> str:
    """A node that is not the primary (the API and the storage requests run there)."""
    return next(n for n in ("node1", "node2") if n != api.primary())


def define_with_disks(api: LabClient, name: str, node: str, disks: list[str]) -> str:
    devices = "".join(
        "    <disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<source protocol='rbd' name='{disk}'/><target dev='vd{chr(97 + i)}' bus='virtio'/>"
        "</disk>\n" for i, disk in enumerate(disks))
    xml = (f"<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>64</memory>\n"
           "  <vcpu>1</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n  <devices>\n"
           f"{devices}  </devices>\n</domain>\n")
    ok(api.post("/vm", data={"xml": xml, "node": node}))
    return str(ok(api.get(f"/vm/{name}"))[0]["uuid"])


def add_volumes(api: LabClient, pool: str, *names: str) -> None:
    for volume in names:
        ok(call(api, "POST", "/storage/ceph/volume", pool=pool, volume=volume, size="8M"))


def test_delete_disks_waits_until_the_node_has_undefined_the_vm(
        ceph_lab: tuple[Lab, LabClient], ceph: Ceph, pool: str, zk: KazooClient) -> None:
    lab, api = ceph_lab
    paths = Paths(lab._info().zk_root)
    node = secondary(api)
    add_volumes(api, pool, "gone-root", "gone-data", "other")
    ok(call(api, "POST", "/storage/ceph/volume/snapshot", pool=pool, volume="gone-data",
            snapshot="before"))
    uuid = define_with_disks(api, "gone", node, [f"{pool}/gone-root", f"{pool}/gone-data"])
    wait_until(lambda: lab.domains(node).get(uuid, {}).get("state") == "running", timeout=10)

    answer: dict[str, requests.Response] = {}
    lab.signal_node(node, signal.SIGSTOP)  # its libvirt (inside the daemon) cannot change now
    try:
        deleting = threading.Thread(target=lambda: answer.update(response=api.call(
            "DELETE", "/vm/gone", params={"delete_disks": 1}, timeout=TIMEOUT)))
        deleting.start()
        # the API records the removal for the node to carry out...
        spec = wait_until(lambda: (read(zk, paths.vm(uuid)) or {}).get("remove"), timeout=5)
        request_ids = [disk[2] for disk in spec["disks"]]
        assert [disk[:2] for disk in spec["disks"]] == \
            [[pool, "gone-root"], [pool, "gone-data"]]
        # ...and, while the domain is still defined on the node, nothing touches the disks
        assert ceph.volumes(pool) == ["gone-data", "gone-root", "other"]
        assert not any(zk.exists(paths.storage_request(i)) for i in request_ids)
        assert deleting.is_alive()
        # a VM being removed is not started, migrated or modified meanwhile
        refused(api.post("/vm/gone/state", data={"state": "start"}), "being removed")
        refused(api.post("/vm/gone/node", data={"action": "migrate"}), "being removed")
        refused(api.call("DELETE", "/vm/gone"), "being removed")
    finally:
        lab.signal_node(node, signal.SIGCONT)
    deleting.join(TIMEOUT)
    message = ok(answer["response"])["message"]
    assert f"{pool}/gone-root" in message and f"{pool}/gone-data" in message, message
    assert f"node {node} stopped and undefined it" in message, message

    assert uuid not in lab.domains(node)
    assert ceph.volumes(pool) == ["other"]  # no orphaned volume
    assert [read(zk, paths.storage_request(i))["state"] for i in request_ids] == ["done"] * 2
    assert not zk.exists(paths.vm(uuid)) and not zk.exists(paths.vm_name("gone"))
    refused(api.get("/vm/gone"), "not found")
    assert [v["name"] for v in ok(call(api, "GET", "/storage/ceph/volume", pool=pool))] == \
        ["other"]


def test_delete_disks_is_refused_while_the_node_is_dead(
        ceph_lab: tuple[Lab, LabClient], ceph: Ceph, pool: str) -> None:
    lab, api = ceph_lab
    node = secondary(api)
    add_volumes(api, pool, "orphan-root")
    uuid = define_with_disks(api, "orphan", node, [f"{pool}/orphan-root"])
    wait_until(lambda: lab.domains(node).get(uuid, {}).get("state") == "running", timeout=10)
    lab.signal_node(node, signal.SIGKILL)
    try:
        wait_until(lambda: api.get(f"/node/{node}").json()[0]["daemon_state"] == "dead",
                   timeout=20)
        refused(api.call("DELETE", "/vm/orphan", params={"delete_disks": 1}),
                "not running", "may still hold them")
        assert ceph.volumes(pool) == ["orphan-root"]
        assert ok(api.get("/vm/orphan"))[0]["uuid"] == uuid
        # without the disks the VM is forgotten at once; the disks stay
        message = ok(api.call("DELETE", "/vm/orphan"))["message"]
        assert "undefines it when it runs again" in message, message
        refused(api.get("/vm/orphan"), "not found")
        assert ceph.volumes(pool) == ["orphan-root"]
    finally:
        lab.start_node(node)
        lab.wait_ready(60)
    assert uuid not in lab.domains(node)


def test_rename_moves_the_name_and_the_volumes_named_after_the_vm(
        ceph_lab: tuple[Lab, LabClient], ceph: Ceph, pool: str) -> None:
    lab, api = ceph_lab
    node = secondary(api)
    add_volumes(api, pool, "db", "db_data", "shared")
    uuid = define_with_disks(api, "db", node, [f"{pool}/db", f"{pool}/db_data",
                                               f"{pool}/shared"])
    wait_until(lambda: lab.domains(node).get(uuid, {}).get("state") == "running", timeout=10)
    xml = api.get("/vm/db/dump").text

    # a name change through PUT is refused: libvirt cannot apply it to the same UUID
    renamed_xml = xml.replace("<name>db</name>", "<name>db2</name>")
    refused(api.call("PUT", "/vm/db", data={"xml": renamed_xml}), "/vm/db/rename")
    # a running VM is not renamed
    refused(api.post("/vm/db/rename", data={"new_name": "db2"}), "must be stopped")
    ok(api.post("/vm/db/state", data={"state": "stop"}))
    wait_until(lambda: lab.domains(node).get(uuid, {}).get("state") == "shutoff", timeout=10)
    wait_until(lambda: ok(api.get("/vm/db"))[0]["running_on"] is None and
               uuid not in api.nodes()[node]["running_domains"], timeout=10)

    # refused before any change: an invalid or taken name, a target volume that exists
    refused(api.post("/vm/db/rename", data={"new_name": "a/b"}), "invalid VM name")
    refused(api.post("/vm/db/rename", data={"new_name": "autobackup"}), "reserved")
    add_volumes(api, pool, "db2_data")
    before = ceph.volumes(pool)
    refused(api.post("/vm/db/rename", data={"new_name": "db2"}), f"{pool}/db2_data",
            "already exists")
    assert ceph.volumes(pool) == before
    ok(call(api, "DELETE", f"/storage/ceph/volume/{pool}/db2_data"))

    message = ok(api.post("/vm/db/rename", data={"new_name": "db2"}))["message"]
    assert "Renamed VM 'db' to 'db2'" in message and f"{pool}/db2_data" in message, message
    assert ceph.volumes(pool) == ["db2", "db2_data", "shared"]
    obj = ok(api.get("/vm/db2"))[0]
    assert obj["uuid"] == uuid and obj["name"] == "db2"
    assert [d["name"] for d in obj["disks"]] == [f"{pool}/db2", f"{pool}/db2_data",
                                                 f"{pool}/shared"]
    assert [v["name"] for v in ok(api.get("/vm"))] == ["db2"]
    refused(api.get("/vm/db"), "not found")
    # the node redefined the domain: the new name, the same UUID
    wait_until(lambda: lab.domains(node).get(uuid, {}).get("name") == "db2", timeout=10)
    assert [d["name"] for d in lab.domains(node).values() if d["uuid"] == uuid] == ["db2"]
    assert "db" not in [d["name"] for d in lab.domains(node).values()]
    ok(api.post("/vm/db2/state", data={"state": "start"}))
    wait_until(lambda: lab.domains(node).get(uuid, {}).get("state") == "running", timeout=10)
    # the old name is free again
    other = define_with_disks(api, "db", node, [])
    assert other != uuid
    wait_until(lambda: lab.domains(node).get(other, {}).get("name") == "db", timeout=10)

    for name in ("db", "db2"):  # every RBD disk of the VM goes, `shared` too
        ok(api.call("DELETE", f"/vm/{name}", params={"delete_disks": 1}, timeout=TIMEOUT))
    assert ceph.volumes(pool) == []
    assert not {uuid, other} & set(lab.domains(node))


def test_pvc_vm_rename(ceph_lab: tuple[Lab, LabClient]) -> None:
    lab, api = ceph_lab
    node = secondary(api)
    uuid = define_with_disks(api, "clivm", node, [])
    running = cli(lab, "vm", "rename", "clivm", "clivm2")
    assert running.returncode != 0 and "must be stopped" in running.stderr + running.stdout
    ok(api.post("/vm/clivm/state", data={"state": "stop"}))
    wait_until(lambda: ok(api.get("/vm/clivm"))[0]["running_on"] is None and
               uuid not in api.nodes()[node]["running_domains"], timeout=10)
    output = cli_ok(cli(lab, "vm", "rename", "clivm", "clivm2"))
    assert "Renamed VM 'clivm' to 'clivm2'" in output, output
    assert ok(api.get("/vm/clivm2"))[0]["uuid"] == uuid
    wait_until(lambda: lab.domains(node).get(uuid, {}).get("name") == "clivm2", timeout=10)
    ok(api.call("DELETE", "/vm/clivm2"))


def test_a_disk_held_open_elsewhere_is_named_in_a_510(
        ceph_lab: tuple[Lab, LabClient], ceph: Ceph, pool: str) -> None:
    lab, api = ceph_lab
    node = secondary(api)
    add_volumes(api, pool, "held-root", "held-data")
    uuid = define_with_disks(api, "held", node, [f"{pool}/held-root", f"{pool}/held-data"])
    wait_until(lambda: lab.domains(node).get(uuid, {}).get("state") == "running", timeout=10)
    # another client keeps held-data open (`rbd watch` opens the image, as QEMU would)
    # (it waits for a line on its standard input, kept open until the end)
    watcher = subprocess.Popen(["rbd", *ceph.args, "watch", f"{pool}/held-data"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: ceph.json("rbd", "status", f"{pool}/held-data")["watchers"],
                   timeout=10)
        response = api.call("DELETE", "/vm/held", params={"delete_disks": 1}, timeout=TIMEOUT)
        refused(response, "Removed VM 'held', but not all of its disks", f"{pool}/held-data")
        assert f"{pool}/held-root" not in response.json()["message"]
    finally:
        watcher.kill()
        watcher.wait()
    refused(api.get("/vm/held"), "not found")
    assert uuid not in lab.domains(node)
    assert ceph.volumes(pool) == ["held-data"]  # only the one held open elsewhere stays
