"""Creating VMs from profiles (extensions.md §3.9) on a lab with a throwaway Ceph: the task
copies and formats real RBD volumes, the VM is defined and started on the node's libvirt (the
test driver), every refusal before the task changes nothing, and a create that fails at a step
leaves nothing behind, judged in Ceph (`rbd ls`, `dumpe2fs` on an export) and in ZooKeeper.

The provisioner's objects are written straight into ZooKeeper with their records' `to_doc()`
(their API is another piece). The Ceph mirror is refreshed only every 30 s here, so a volume
removed behind pvcd's back still looks present to the API: that is how a source volume goes
missing between the API's check and the task's copy."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcd.domain.provisioner import (
    NetworkTemplate,
    Profile,
    StorageTemplate,
    SystemTemplate,
    TemplateDisk,
    TemplateNetwork,
)
from pvcd.domain.records import VmSpec
from pvcd.domain.tasks import TaskRecord, new_id
from pvcd.lab.lab import Lab
from pvcd.state.codec import decode, encode
from pvcd.state.schema import Paths
from tests.e2e.labclient import (
    LabClient,
    LabFactory,
    ok,
    refused,
    wait_until,
    zookeeper_client,
)

pytestmark = [pytest.mark.slow, pytest.mark.ceph]

TIMEOUT = 120
MIB = 1 << 20
GIB = 1 << 30
POOL = "vms"
SOURCE = os.urandom(MIB) + b"pvcd source image " * (MIB // 18)


class Cluster:
    """The lab, its API, and `rbd` / ZooKeeper access beside the API."""

    def __init__(self, lab: Lab, api: LabClient) -> None:
        self.lab, self.api = lab, api
        info = lab._info()
        assert info.ceph is not None
        self.conf, self.keyring = info.ceph["conf"], info.ceph["keyring"]
        self.paths = Paths(info.zk_root)

    def rbd(self, *args: str) -> bytes:
        result = subprocess.run(["rbd", "--conf", self.conf, "--keyring", self.keyring, *args],
                                capture_output=True, timeout=TIMEOUT, check=False)
        assert result.returncode == 0, f"rbd {' '.join(args)}: {result.stderr!r}"
        return result.stdout

    def volumes(self) -> set[str]:
        return set(self.rbd("ls", POOL).decode().split())

    def write(self, kind: str, record: Any) -> None:
        with zookeeper_client(self.lab) as client:
            path = self.paths.provisioner_object(kind, record.name)
            if client.exists(path):
                client.set(path, encode(record.to_doc()))
            else:
                client.create(path, encode(record.to_doc()), makepath=True)
        if kind == "profile":  # written past the daemon: wait until its cache has it (and
            # what it names, written before it), judged by a refusal after the profile's lookup
            wait_until(lambda: f"profile '{record.name}' not found" not in self.create(
                name="probe", profile=record.name, arg="probe=1").text, 10)

    def zk(self, path: str) -> Any:
        with zookeeper_client(self.lab) as client:
            found = client.exists(path)
            return decode(client.get(path)[0]) if found else None

    def zk_children(self, path: str) -> list[str]:
        with zookeeper_client(self.lab) as client:
            return sorted(client.get_children(path)) if client.exists(path) else []

    def create(self, **values: Any) -> Any:
        return self.api.post("/provisioner/create", data=values, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    lab = Lab(tmp_path_factory.mktemp("provision") / "lab")
    info = lab.up(nodes=1, ceph=True, ceph_memstore_gib=4, ceph_stats_interval=30.0)
    try:
        api = LabClient(info)
        made = Cluster(lab, api)
        ok(api.post("/storage/ceph/pool", data={"pool": POOL, "pgs": 16}, timeout=TIMEOUT))
        ok(api.post("/storage/ceph/volume", data={"pool": POOL, "volume": "image",
                                                  "size": "8M"}, timeout=TIMEOUT))
        image = tmp_path_factory.mktemp("image") / "image.raw"
        image.write_bytes(SOURCE)
        subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image),
                        f"rbd:{POOL}/image:id=admin:conf={made.conf}:keyring={made.keyring}"],
                       check=True, timeout=TIMEOUT)
        ok(api.post("/network", data={"vni": 100, "description": "guests",
                                      "nettype": "bridged"}))
        made.write("system", SystemTemplate("small", 1, 64))
        made.write("network", NetworkTemplate("net", None, [TemplateNetwork(100)]))
        made.write("storage", StorageTemplate("disks", [
            TemplateDisk("sda", POOL, source_volume="image", disk_size_gb=1),
            TemplateDisk("sdb", POOL, disk_size_gb=1, filesystem="ext4",
                         filesystem_args=["-L=data", "-m=0"])]))
        made.write("profile", Profile("p", system_template="small", network_template="net",
                                      storage_template="disks"))
        yield made
    finally:
        lab.down()


def provision_tasks(api: LabClient) -> list[dict[str, Any]]:
    return list(ok(api.get("/tasks", params={"limit": "^provisioner.create$"})))


def ext4_superblock(cluster: Cluster, spec: str, folder: Path) -> dict[str, str]:
    exported = folder / "disk.img"
    cluster.rbd("export", "--no-progress", spec, str(exported))
    out = subprocess.run(["dumpe2fs", "-h", str(exported)], capture_output=True, text=True,
                         timeout=TIMEOUT, check=True).stdout
    exported.unlink()
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def test_a_vm_from_a_clone_profile_is_made_defined_and_started(cluster: Cluster,
                                                               tmp_path: Path) -> None:
    api = cluster.api
    done = ok(cluster.create(name="web1", profile="p", wait=1))
    result = done["result"]
    assert (result["name"], result["node"], result["defined"], result["started"]) == \
        ("web1", "node1", True, True)
    assert result["volumes"] == [f"{POOL}/web1_sda", f"{POOL}/web1_sdb"]
    assert len(result["macs"]) == 1 and result["macs"][0].startswith("52:54:00:")
    assert "xml" not in result
    # the copy holds the source's bytes, grown to 1 GiB
    head = cluster.rbd("export", "--no-progress", f"{POOL}/web1_sda", "-")
    assert len(head) == GIB and head[:len(SOURCE)] == SOURCE
    assert not head[len(SOURCE):len(SOURCE) + MIB].strip(b"\0")
    # the blank disk holds an ext4 of its whole size, made with the template's arguments
    superblock = ext4_superblock(cluster, f"{POOL}/web1_sdb", tmp_path)
    assert superblock["Filesystem volume name"] == "data"
    assert int(superblock["Block count"]) * int(superblock["Block size"]) == GIB
    assert superblock["Reserved block count"] == "0"
    # the VM: defined and started by its node, from the generated XML
    vm = wait_until(lambda: (obj := ok(api.get("/vm/web1"))[0])["running_on"] == "node1"
                    and obj, TIMEOUT)
    assert vm["state"] == "start" and vm["uuid"] == result["uuid"]
    assert [d["name"] for d in vm["disks"]] == result["volumes"]
    assert [(n["source"], n["mac"]) for n in vm["networks"]] == [("vmbr100", result["macs"][0])]
    assert cluster.zk(cluster.paths.vm(vm["uuid"]))["profile"] == "p"
    task = ok(api.get(f"/tasks/{done['task_id']}"))
    assert (task["state"], task["current"], task["total"]) == ("success", 4, 4)
    assert [(a["kind"], a["ref"]) for a in task["artifacts"]] == \
        [("vm", vm["uuid"]), ("volume", f"{POOL}/web1_sda"), ("volume", f"{POOL}/web1_sdb")]
    # POST /vm/<vm> with vm_template: the same task; start_vm false leaves it stopped
    done = ok(api.post("/vm/web2", data={"vm_template": "p", "start_vm": "false", "wait": 1},
                       timeout=TIMEOUT))
    assert (done["result"]["started"], ok(api.get("/vm/web2"))[0]["state"]) == (False, "stop")
    # define_vm false: only the disks, and the XML to define later
    done = ok(cluster.create(name="web3", profile="p", define_vm="false", wait=1))
    assert done["result"]["defined"] is False and "<name>web3</name>" in done["result"]["xml"]
    assert api.get("/vm/web3").status_code == 510
    assert {"web3_sda", "web3_sdb"} <= cluster.volumes()


def test_every_refusal_before_the_task_changes_nothing(cluster: Cluster) -> None:
    api = cluster.api
    ok(api.post("/storage/ceph/volume", data={"pool": POOL, "volume": "held_sda",
                                              "size": "1M"}, timeout=TIMEOUT))
    cluster.write("storage", StorageTemplate("ghost", [
        TemplateDisk("sda", POOL, source_volume="nothing", disk_size_gb=1)]))
    cluster.write("profile", Profile("ghostly", system_template="small",
                                     storage_template="ghost"))
    cluster.write("profile", Profile("hollow", system_template="gone"))
    before = (cluster.volumes(), provision_tasks(api),
              cluster.zk_children(cluster.paths.vm_names))
    for values, words in [
        ({"name": "-x", "profile": "p"}, ["VM name '-x' is invalid"]),
        ({"name": "autobackup", "profile": "p"}, ["reserved"]),
        ({"name": "new", "profile": "nope"}, ["profile 'nope' not found"]),
        ({"name": "new", "profile": "hollow"}, ["system template 'gone' not found"]),
        ({"name": "new", "profile": "ghostly"}, [f"source volume {POOL}/nothing"]),
        ({"name": "new", "profile": "p", "arg": "cdrom=vms/image"},
         ["knows no argument cdrom"]),
        ({"name": "new", "profile": "p", "arg": "source_snapshot=nope"},
         [f"{POOL}/image@nope"]),
        ({"name": "new", "profile": "p", "define_vm": "false", "start_vm": "true"},
         ["start_vm"]),
        ({"name": "new", "profile": "p", "define_vm": "maybe"}, ["define_vm 'maybe'"]),
        ({"name": "held", "profile": "p"}, [f"RBD volume {POOL}/held_sda already exists"]),
        ({"profile": "p"}, ["missing mandatory value 'name'"]),
    ]:
        refused(cluster.create(**values), *words)
    refused(api.post("/vm/new", data={}), "exactly one of vm_template")
    refused(api.post("/vm/new", data={"vm_template": "p", "xml": "<domain/>"}),
            "exactly one of vm_template")
    xml = "<domain type='kvm'><name>other</name><memory>65536</memory></domain>"
    refused(api.post("/vm/new", data={"xml": xml}), "names the VM 'other', not 'new'")
    assert (cluster.volumes(), provision_tasks(api),
            cluster.zk_children(cluster.paths.vm_names)) == before


def assert_nothing_left(cluster: Cluster, name: str, task: dict[str, Any]) -> None:
    assert task["state"] == "failure" and task["artifacts"] == [], task
    assert not {v for v in cluster.volumes() if v.startswith(f"{name}_")}
    assert name not in cluster.zk_children(cluster.paths.vm_names)
    assert all((cluster.zk(cluster.paths.vm(u)) or {}).get("name") != name
               for u in cluster.zk_children(cluster.paths.vms))


def failed_create(cluster: Cluster, **values: Any) -> dict[str, Any]:
    response = cluster.create(wait=1, **values)
    assert response.status_code == 510, response.text
    task_id = response.json()["task_id"]
    return dict(ok(cluster.api.get(f"/tasks/{task_id}")))


def test_a_create_that_fails_at_a_step_leaves_nothing(cluster: Cluster) -> None:
    # the pool is too small for the disks: refused by the task before its first step
    cluster.write("storage", StorageTemplate("huge", [TemplateDisk("sda", POOL,
                                                                   disk_size_gb=64)]))
    cluster.write("profile", Profile("big", system_template="small", storage_template="huge"))
    task = failed_create(cluster, name="big1", profile="big")
    assert "need 68719476736 bytes" in task["message"]
    assert_nothing_left(cluster, "big1", task)

    # formatting fails on the second disk: the first disk's copy, the second disk and the VM
    # record (made before them) are removed again
    cluster.write("storage", StorageTemplate("badfs", [
        TemplateDisk("sda", POOL, source_volume="image", disk_size_gb=1),
        TemplateDisk("sdb", POOL, disk_size_gb=1, filesystem="ext4",
                     filesystem_args=["-b=3"])]))
    cluster.write("profile", Profile("badfs", system_template="small",
                                     storage_template="badfs"))
    task = failed_create(cluster, name="fs1", profile="badfs")
    assert "mkfs.ext4" in task["message"] and task["error"] == "BackendError"
    assert_nothing_left(cluster, "fs1", task)

    # a source volume that is gone when the copy runs (removed behind pvcd's back: the API
    # still sees it in the mirror)
    ok(cluster.api.post("/storage/ceph/volume/vms/image/clone", data={"new_volume": "doomed"},
                        timeout=TIMEOUT))
    cluster.write("storage", StorageTemplate("doomed", [
        TemplateDisk("sda", POOL, source_volume="image"),
        TemplateDisk("sdb", POOL, source_volume="doomed")]))
    cluster.write("profile", Profile("doomed", system_template="small",
                                     storage_template="doomed"))
    cluster.rbd("rm", "--no-progress", f"{POOL}/doomed")
    task = failed_create(cluster, name="gone1", profile="doomed")
    assert "doomed" in task["message"] and task["error"] == "NotFound", task
    assert_nothing_left(cluster, "gone1", task)


def test_a_vm_being_provisioned_takes_no_requests(cluster: Cluster) -> None:
    """A VM in state provision (written as its task writes it) refuses state, node and XML
    changes; its delete is refused while a task works on it."""
    api = cluster.api
    uuid = "3a3c6f0e-6d2c-4f0e-9a55-6f4c3c2b1a00"
    xml = (f"<domain type='kvm'><name>prov1</name><uuid>{uuid}</uuid>"
           "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>")
    spec = VmSpec(uuid=uuid, name="prov1", xml=xml, node="node1", memory=64, vcpu=1,
                  state="provision")
    with zookeeper_client(cluster.lab) as client:
        now = client.get(cluster.paths.schema_version)[1].mtime / 1000.0
        task = TaskRecord(id=new_id(now), name="provisioner.create", run_on="nowhere",
                          follows_primary=False, objects=[f"vm:{uuid}"], created=now)
        client.create(cluster.paths.task(task.id), encode(task.to_doc()))
        client.create(cluster.paths.vm(uuid), encode(spec.to_doc()))
        client.create(cluster.paths.vm_name("prov1"), encode({"uuid": uuid}))
    vm = wait_until(lambda: api.get("/vm/prov1").status_code == 200 and
                    ok(api.get("/vm/prov1"))[0], 10)
    assert vm["state"] == "provision"
    refused(api.post("/vm/prov1/state", data={"state": "start"}), "is being provisioned",
            task.id)
    refused(api.post("/vm/prov1/node", data={"action": "migrate"}), "is being provisioned")
    refused(api.call("PUT", "/vm/prov1", data={"xml": xml}), "is being provisioned")
    refused(api.call("DELETE", "/vm/prov1"), "is being provisioned")
    assert cluster.zk(cluster.paths.vm_status(uuid)) is None  # its node left it alone
    ok(api.call("DELETE", f"/tasks/{task.id}"))  # cancelled: the VM is the operator's to remove
    ok(api.call("DELETE", "/vm/prov1"))


def test_a_create_cut_off_with_its_primary_is_cleaned_up_by_the_next(
        make_lab: LabFactory, tmp_path: Path) -> None:
    """The primary is SIGKILLed while the task copies its second disk: the next primary
    declares the task interrupted and removes the VM record and both volumes."""
    lab, api = make_lab(nodes=2, ceph=True, fencing="none", ceph_memstore_gib=2)
    cluster = Cluster(lab, api)
    first = wait_until(api.primary, 30)
    ok(api.post("/storage/ceph/pool", data={"pool": POOL, "pgs": 16}, timeout=TIMEOUT))
    for volume, size in (("small", "8M"), ("large", "384M")):
        ok(api.post("/storage/ceph/volume", data={"pool": POOL, "volume": volume, "size": size},
                    timeout=TIMEOUT))
    data = tmp_path / "large.raw"
    data.write_bytes(os.urandom(384 * MIB))  # real data: the copy takes a while
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(data),
                    f"rbd:{POOL}/large:id=admin:conf={cluster.conf}:keyring={cluster.keyring}"],
                   check=True, timeout=TIMEOUT)
    data.unlink()
    cluster.write("system", SystemTemplate("small", 1, 64))
    cluster.write("storage", StorageTemplate("two", [
        TemplateDisk("sda", POOL, source_volume="small"),
        TemplateDisk("sdb", POOL, source_volume="large")]))
    cluster.write("profile", Profile("two", system_template="small", storage_template="two"))
    accepted = api.post("/provisioner/create", data={"name": "cut1", "profile": "two"})
    assert accepted.status_code == 202, accepted.text
    task_id = accepted.json()["task_id"]
    running = wait_until(lambda: (doc := ok(api.get(f"/tasks/{task_id}")))["state"] == "running"
                         and len(doc["artifacts"]) == 3 and doc, TIMEOUT, interval=0.005)
    assert running["run_on"] == first
    lab.signal_node(first, signal.SIGKILL)
    ended = wait_until(lambda: (doc := ok(api.get(f"/tasks/{task_id}")))["state"] == "failure"
                       and not doc["cleanup"] and doc, 240, interval=0.5)
    assert ended["error"] == "Interrupted" and ended["artifacts"] == [], ended
    assert wait_until(api.primary, 30) != first
    assert_nothing_left(cluster, "cut1", ended)
