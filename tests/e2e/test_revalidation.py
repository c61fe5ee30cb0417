"""Daemons re-validate what they read (issue 13, finding 3; docs/security.md): a VM document
written into a lab's ZooKeeper by a plain kazoo client, past the API, is refused by the node
named in it: its libvirt (the lab agent) gets no such domain, a running guest is left as it was,
and the API shows the VM failed with the node's reason."""

from __future__ import annotations

import json
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

from pvcd.domain.records import VmSpec
from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient, LabFactory, wait_until, zookeeper_client
from tests.e2e.test_vms import define, vm

pytestmark = pytest.mark.slow

ENTITY_XML = ("<!DOCTYPE domain [<!ENTITY x SYSTEM 'file:///etc/shadow'>]>"
              "<domain type='qemu'><name>evil</name><memory unit='MiB'>64</memory>"
              "<description>&x;</description><os><type>hvm</type></os></domain>")


@pytest.fixture
def lab1(make_lab: LabFactory) -> tuple[Lab, LabClient]:
    return make_lab(nodes=1, fencing="none")


@pytest.fixture
def zk(lab1: tuple[Lab, LabClient]) -> Iterator[KazooClient]:
    """A plain ZooKeeper client: what anything that reaches ZooKeeper can use."""
    with zookeeper_client(lab1[0]) as client:
        yield client


def write(zk: KazooClient, lab: Lab, relative: str, doc: Any) -> None:
    path = f"{lab._info().zk_root.rstrip('/')}/{relative}"
    data = json.dumps(doc).encode()
    if zk.exists(path):
        zk.set(path, data)
    else:
        zk.create(path, data)


def test_a_vm_document_written_past_the_api_is_refused_by_its_node(
        lab1: tuple[Lab, LabClient], zk: KazooClient) -> None:
    lab, api = lab1
    good = define(api, "good", node="node1")
    wait_until(lambda: lab.domains("node1").get(good, {}).get("state") == "running", 10)

    evil = str(uuidlib.uuid4())
    write(zk, lab, f"vms/{evil}", VmSpec(uuid=evil, name="evil", xml=ENTITY_XML,
                                         node="node1").to_doc())
    refused = wait_until(lambda: vm(api, evil)["state"] == "failed" and vm(api, evil), 10)
    assert "refused by node node1" in refused["failed_reason"]
    assert "DOCTYPE or ENTITY" in refused["failed_reason"]
    assert set(lab.domains("node1")) == {good}

    # the running VM's document now names another VM's UUID (and asks for a restart)
    doc = json.loads(zk.get(f"{lab._info().zk_root.rstrip('/')}/vms/{good}")[0])
    other = str(uuidlib.uuid4())
    write(zk, lab, f"vms/{good}", {**doc, "xml": tiny_guest_xml("good", other),
                                   "restart_request": doc["restart_request"] + 1})
    failed = wait_until(lambda: vm(api, good)["state"] == "failed" and vm(api, good), 10)
    assert f"is not the VM's UUID {good}" in failed["failed_reason"]
    domains = lab.domains("node1")
    assert set(domains) == {good} and domains[good]["state"] == "running"
