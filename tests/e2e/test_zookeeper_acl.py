"""ZooKeeper is a trust boundary (issue 13): on a lab (which runs with credentials, as a cluster
should), a ZooKeeper client without them can read nothing of pvcd's tree and change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import OPEN_ACL_UNSAFE

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from pvcd.lab.tls import make_self_signed_cert
from pvcd.state.client import ZkTls, zookeeper_client
from tests.e2e.labclient import LabClient, LabFactory, wait_until

pytestmark = pytest.mark.slow


def walk(client: KazooClient, path: str) -> list[str]:
    found, pending = [], [path]
    while pending:
        current = pending.pop()
        found.append(current)
        pending += [f"{current}/{child}" for child in client.get_children(current)]
    return found


def test_a_client_without_credentials_can_neither_read_nor_change_the_cluster(
        make_lab: LabFactory) -> None:
    lab, api = make_lab(nodes=2)
    assert api.post("/vm", data={"xml": tiny_guest_xml("web"), "node": "node1"}).status_code \
        == 200
    info = lab._info()
    root = info.zk_root
    trusted = info.zookeeper_client()
    trusted.start(timeout=10)
    stranger = KazooClient(hosts=info.zookeeper)
    stranger.start(timeout=10)
    try:
        uuid = trusted.get_children(f"{root}/vms")[0]
        vm = f"{root}/vms/{uuid}"
        spec = json.loads(trusted.get(vm)[0])
        hostile = json.dumps({**spec, "xml": spec["xml"].replace("web", "evil")}).encode()
        attempts = [
            ("read a VM", lambda: stranger.get(vm)),
            ("list the VMs", lambda: stranger.get_children(f"{root}/vms")),
            ("read a node record", lambda: stranger.get(f"{root}/nodes/node2")),
            ("change a VM", lambda: stranger.set(vm, hostile)),
            ("add a node record", lambda: stranger.create(f"{root}/nodes/evil", b"{}")),
            ("delete a VM", lambda: stranger.delete(vm, recursive=True)),
            ("open the tree", lambda: stranger.set_acls(root, [OPEN_ACL_UNSAFE[0]])),
        ]
        for what, attempt in attempts:
            with pytest.raises(NoAuthError):
                attempt()
                pytest.fail(f"a client without credentials could {what}")
        assert json.loads(trusted.get(vm)[0]) == spec  # nothing changed
        # every znode pvcd made carries the one digest ACL: its user, nobody else
        for path in walk(trusted, root):
            acls, _ = trusted.get_acls(path)
            assert [(a.id.scheme, a.id.id.split(":")[0]) for a in acls] == \
                [("digest", info.zookeeper_user)], path
    finally:
        for client in (trusted, stranger):
            client.stop()
            client.close()


def test_the_lab_file_with_the_credentials_is_for_its_owner_only(
        lab3: tuple[Lab, LabClient]) -> None:
    assert lab3[0].lab_file.stat().st_mode & 0o077 == 0


def test_a_cluster_on_tls_zookeeper_works_and_a_client_without_tls_gets_nothing(
        make_lab: LabFactory, tmp_path: Path) -> None:
    lab, api = make_lab(nodes=2, zookeeper_tls=True)  # the daemons reach it over TLS only
    response = api.post("/vm", data={"xml": tiny_guest_xml("web"), "node": "node2"})
    assert response.status_code == 200, response.text
    uuid = api.get("/vm/web").json()[0]["uuid"]
    wait_until(lambda: lab.domains("node2").get(uuid, {}).get("state") == "running", timeout=10)
    info = lab._info()
    trusted = info.zookeeper_client()  # TLS, the lab's CA, the credentials
    trusted.start(timeout=10)
    try:
        assert json.loads(trusted.get(f"{info.zk_root}/vms/{uuid}")[0])["name"] == "web"
    finally:
        trusted.stop()
        trusted.close()
    plain = KazooClient(hosts=info.zookeeper)  # the same port without TLS
    with pytest.raises(KazooTimeoutError):
        plain.start(timeout=3)
    plain.stop()
    plain.close()
    other_ca, _ = make_self_signed_cert(tmp_path / "other")  # a server it does not trust
    doubting = zookeeper_client([info.zookeeper], 3, tls=ZkTls(ca_file=str(other_ca)),
                                retry_forever=False)
    with pytest.raises(KazooTimeoutError):
        doubting.start(timeout=3)
    doubting.stop()
    doubting.close()
