"""Device attach and detach (extensions.md §11.2) in process: the real API over the real store,
simulated nodes whose VM controllers run the libvirt test driver, and the real `vm.device_*`
task kinds run by a real `TaskRunner`. Assertions are on what the API answers, what the store
holds and what libvirt has (the test driver cannot hot-plug: its refusal is the failing
hot-plug here; the QEMU e2e test tests/e2e/test_vm_devices.py hot-plugs for real)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import libvirt
import pytest
from click.testing import CliRunner

from pvcd.cli.main import cli
from pvcd.controllers.tasks import TaskRegistry
from pvcd.controllers.tasks.runner import TaskRunner, task_key
from pvcd.controllers.vm_devices import DeviceTasks
from pvcd.domain.records import Migration, VmSpec, from_dict
from pvcd.domain.tasks import TaskRecord
from pvcd.drivers.libvirt import LibvirtDriver
from pvcd.lab.guest import tiny_guest_xml
from pvcd.state.tasks import read_tasks
from pvcd.vmdevices import devices_of
from tests.fakes.api import TOKEN, ApiClient
from tests.fakes.nodes import SimCluster

DISK = "<disk type='file' device='disk'><source file='/var/lib/x.img'/>" \
       "<target dev='sdb' bus='scsi'/></disk>"
NIC = "<interface type='bridge'><mac address='52:54:00:aa:00:01'/><source bridge='vmbr10'/>" \
      "<model type='virtio'/></interface>"


def refused(response: Any, text: str) -> None:
    assert response.status_code == 510, response.text
    assert text in response.json()["message"], response.json()


def define(api: ApiClient, sim: SimCluster, name: str, running: bool = True) -> str:
    response = api.post("/vm", data={"xml": tiny_guest_xml(name), "node": "node1"})
    assert response.status_code == 200, response.text
    if not running:
        assert api.post(f"/vm/{name}/state", data={"state": "stop"}).status_code == 200
    sim.step()
    state = api.get(f"/vm/{name}").json()[0]["state"]
    assert state == ("start" if running else "stop"), state
    return str(api.get(f"/vm/{name}").json()[0]["uuid"])


def spec(sim: SimCluster, uuid: str) -> VmSpec:
    return from_dict(VmSpec, sim.state.doc(sim.state.paths.vm(uuid)))


def stored(sim: SimCluster, uuid: str) -> list[str]:
    """The disks and interfaces of the VM's stored XML."""
    return [d.label for d in devices_of(spec(sim, uuid).xml) if d.tag in ("disk", "interface")]


def device(api: ApiClient, method: str, vm: str, xml: str, **values: str) -> Any:
    return api.call(method, f"/vm/{vm}/device", data={"xml": xml, **values})


@pytest.fixture
def net(api3: ApiClient) -> ApiClient:
    response = api3.post("/network", data={"vni": 10, "description": "n10",
                                           "nettype": "managed"})
    assert response.status_code == 200, response.text
    return api3


class LiveDevices:
    """A node's libvirt test driver (which cannot hot-plug) with the live device changes
    kept beside it: what the task handed to the running guest."""

    def __init__(self, driver: LibvirtDriver) -> None:
        self.driver = driver
        self.changes: list[tuple[str, str, bool, bool]] = []

    def domain_state(self, uuid: str) -> Any:
        return self.driver.domain_state(uuid)

    def xml(self, uuid: str) -> str:
        return self.driver.xml(uuid)

    def attach_device(self, uuid: str, xml: str, live: bool = True,
                      persistent: bool = False) -> None:
        self.changes.append(("attach", xml, live, persistent))

    def detach_device(self, uuid: str, xml: str, live: bool = True,
                      persistent: bool = False) -> None:
        self.changes.append(("detach", xml, live, persistent))


def attach_to_running(api: ApiClient, sim: SimCluster, name: str) -> tuple[str, dict[str, Any]]:
    """A VM running on node1, and the answer (202, a task) to attaching DISK to it."""
    uuid = define(api, sim, name)
    response = device(api, "POST", name, DISK)
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/api/v1/tasks/{response.json()['task_id']}"
    return uuid, dict(response.json())


def run_task(sim: SimCluster, task_id: str, driver: Any = None) -> TaskRecord:
    node = sim.nodes["node1"]
    tasks = DeviceTasks("node1", sim.state.view, sim.state.store, driver or node.libvirt)
    runner = TaskRunner("node1", sim.state.view, sim.state.store, TaskRegistry(tasks.kinds()),
                        executor="node1/1")
    runner.reconcile(task_key(task_id))
    return TaskRecord.from_doc(sim.state.doc(sim.state.paths.task(task_id)))


def domain_id(sim: SimCluster, uuid: str) -> int:
    return int(sim.nodes["node1"].libvirt._connection().lookupByUUIDString(uuid).ID())


def persistent_xml(sim: SimCluster, uuid: str) -> str:
    domain = sim.nodes["node1"].libvirt._connection().lookupByUUIDString(uuid)
    return str(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def test_a_stopped_vm_only_gets_its_xml_changed(api3: ApiClient, sim: SimCluster) -> None:
    uuid = define(api3, sim, "web", running=False)
    response = device(api3, "POST", "web", DISK)
    assert response.status_code == 200, response.text
    assert "not running" in response.json()["message"]
    assert stored(sim, uuid) == ["disk sdb"]
    assert [d["dev"] for d in api3.get("/vm/web").json()[0]["disks"]] == ["sdb"]
    assert api3.get("/tasks").json() == []  # no task for a stopped VM
    sim.step()  # its node defines the new XML
    assert "dev='sdb'" in persistent_xml(sim, uuid).replace('"', "'")
    # detached by its target alone
    response = device(api3, "DELETE", "web", "<disk><target dev='sdb'/></disk>")
    assert response.status_code == 200, response.text
    assert stored(sim, uuid) == []
    sim.step()
    assert "sdb" not in persistent_xml(sim, uuid)
    # starting it now starts it without the disk
    assert api3.post("/vm/web/state", data={"state": "start"}).status_code == 200
    sim.step()
    assert sim.where_running(uuid) == ["node1"]


def test_a_running_vm_gets_a_task_on_its_node_that_hot_plugs_it_live(
        api3: ApiClient, sim: SimCluster) -> None:
    uuid, started = attach_to_running(api3, sim, "web")
    booted = domain_id(sim, uuid)
    assert (started["task_name"], started["run_on"]) == ("vm.device_attach", "node1")
    assert stored(sim, uuid) == []  # the task writes it, on the node
    # a second change while it is pending is refused, naming it
    refused(device(api3, "POST", "web", "<rng model='virtio'><backend model='random'/></rng>"),
            f"busy with task {started['task_id']}")
    live = LiveDevices(sim.nodes["node1"].libvirt)
    task = run_task(sim, started["task_id"], live)
    assert task.state == "success", task.message
    assert task.result["device"] == "disk sdb" and task.result["node"] == "node1"
    assert stored(sim, uuid) == ["disk sdb"]
    assert [(c[0], c[2], c[3]) for c in live.changes] == [("attach", True, False)]
    assert "sdb" in live.changes[0][1]
    # the node defines the stored XML (its next boot) and leaves the guest running
    sim.step()
    assert domain_id(sim, uuid) == booted
    assert "sdb" in persistent_xml(sim, uuid)
    assert api3.get("/vm/web").json()[0]["state"] == "start"
    response = device(api3, "DELETE", "web", "<disk><target dev='sdb'/></disk>")
    assert response.status_code == 202, response.text
    assert response.json()["task_name"] == "vm.device_detach"
    task = run_task(sim, response.json()["task_id"], live)
    assert task.state == "success" and task.result["released"] is True, task.message
    assert live.changes[-1][0] == "detach" and "sdb" in live.changes[-1][1]
    assert stored(sim, uuid) == []
    sim.step()
    assert domain_id(sim, uuid) == booted and "sdb" not in persistent_xml(sim, uuid)


def test_a_failing_hot_plug_restores_the_xml_and_fails_the_task(
        api3: ApiClient, sim: SimCluster) -> None:
    uuid, started = attach_to_running(api3, sim, "web")
    before = spec(sim, uuid)
    task = run_task(sim, started["task_id"])  # the test driver cannot hot-plug
    assert (task.state, task.error) == ("failure", "BackendError")
    assert "not supported" in task.message and "stored XML was restored" in task.message
    after = spec(sim, uuid)
    assert (after.xml, after.info) == (before.xml, before.info)
    sim.step()
    assert "sdb" not in persistent_xml(sim, uuid)
    assert sim.where_running(uuid) == ["node1"]


def test_a_vm_that_stopped_before_its_task_ran_fails_it_with_nothing_changed(
        api3: ApiClient, sim: SimCluster) -> None:
    uuid, started = attach_to_running(api3, sim, "web")
    assert api3.post("/vm/web/state", data={"state": "stop"}).status_code == 200
    sim.step()
    live = LiveDevices(sim.nodes["node1"].libvirt)
    task = run_task(sim, started["task_id"], live)
    assert (task.state, task.error) == ("failure", "Conflict")
    assert "no longer runs on node node1" in task.message
    assert stored(sim, uuid) == [] and live.changes == []


def test_interfaces_on_client_networks(net: ApiClient, sim: SimCluster) -> None:
    api = net
    web = define(api, sim, "web", running=False)
    define(api, sim, "db", running=False)
    assert device(api, "POST", "web", NIC).status_code == 200
    assert stored(sim, web) == ["interface 52:54:00:aa:00:01"]
    assert api.get("/vm/web").json()[0]["networks"][0]["source"] == "vmbr10"
    refused(device(api, "POST", "web", NIC), "already has an interface with MAC")
    refused(device(api, "POST", "db", NIC.replace("AA", "aa")), "already used by VM 'web'")
    refused(device(api, "POST", "db", NIC.replace(":01'", ":02'").replace("vmbr10", "vmbr11")),
            "not a client network's vmbr<vni> (the bridges of the client networks are: "
            "vmbr10)")
    refused(device(api, "POST", "db", "<interface type='network'><source network='default'/>"
                                      "</interface>"), "not type 'network'")
    # no MAC: one no VM uses is chosen and stored
    response = device(api, "POST", "db", "<interface type='bridge'><source bridge='vmbr10'/>"
                                         "</interface>")
    assert response.status_code == 200, response.text
    mac = api.get("/vm/db").json()[0]["networks"][0]["mac"]
    assert mac.startswith("52:54:00:") and mac != "52:54:00:aa:00:01"
    # detached by MAC only; without one it cannot be named
    refused(device(api, "DELETE", "db", "<interface type='bridge'/>"), "detached by its MAC")
    refused(device(api, "DELETE", "db", NIC), "has no interface 52:54:00:aa:00:01")
    assert device(api, "DELETE", "db", f"<interface type='bridge'><mac address='{mac}'/>"
                                       "</interface>").status_code == 200
    assert api.get("/vm/db").json()[0]["networks"] == []


@pytest.mark.parametrize("method,xml,message", [
    ("POST", DISK + DISK, "exactly one element"),
    ("POST", "<devices>" + DISK + "</devices>", "one libvirt device element"),
    ("POST", "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><disk>&e;</disk>",
     "DOCTYPE or ENTITY"),
    ("POST", "<disk type='file'><source file='/x'/><target dev='vda'/></disk>",
     "already has a disk vda"),
    ("POST", "<serial type='pty'><target port='0'/></serial>", "already has this <serial>"),
    ("POST", "<disk type='network' device='disk'><source protocol='rbd' name='vms/gone'/>"
             "<target dev='vdb'/></disk>", "RBD volume vms/gone not found"),
    ("DELETE", "<disk><target dev='vdz'/></disk>", "has no disk vdz to detach (its disk "
                                                   "devices: disk vda)"),
    ("DELETE", "<rng model='virtio'><backend model='random'/></rng>", "it has no rng device"),
    ("DELETE", "", "missing mandatory value 'xml'"),
])
def test_each_refusal_changes_nothing(api3: ApiClient, sim: SimCluster, method: str, xml: str,
                                      message: str) -> None:
    uuid = define(api3, sim, "web", running=False)
    assert device(api3, "POST", "web", "<disk type='file'><source file='/x'/>"
                                       "<target dev='vda'/></disk>").status_code == 200
    before = sim.state.doc(sim.state.paths.vm(uuid))
    refused(device(api3, method, "web", xml), message)
    assert sim.state.doc(sim.state.paths.vm(uuid)) == before
    assert api3.get("/tasks").json() == []


def test_an_rbd_disk_on_a_known_volume_is_accepted(api3: ApiClient, sim: SimCluster) -> None:
    uuid = define(api3, sim, "web", running=False)
    sim.state.put(sim.state.paths.storage_pool_volumes("vms"), {})
    sim.state.put(sim.state.paths.storage_volume("vms", "data"), {"name": "data"})
    rbd = "<disk type='network' device='disk'><source protocol='rbd' name='vms/data'/>" \
          "<target dev='vdb' bus='virtio'/></disk>"
    assert device(api3, "POST", "web", rbd).status_code == 200
    assert stored(sim, uuid) == ["disk vdb"]


def test_a_vm_being_started_is_refused_until_it_runs(api3: ApiClient, sim: SimCluster) -> None:
    response = api3.post("/vm", data={"xml": tiny_guest_xml("web"), "node": "node1"})
    assert response.status_code == 200, response.text
    uuid = str(api3.get("/vm/web").json()[0]["uuid"])
    refused(device(api3, "POST", "web", DISK), "is starting on node1")  # not yet booted
    assert stored(sim, uuid) == []
    sim.step()
    assert device(api3, "POST", "web", DISK).status_code == 202  # it runs now: a task


def test_migrating_provisioning_and_unknown_vms_are_refused(
        api3: ApiClient, sim: SimCluster) -> None:
    uuid = define(api3, sim, "web")
    refused(device(api3, "POST", "ghost", DISK), "not found")
    sim.state.change(sim.state.paths.vm(uuid), node="node2",
                     migration=Migration(source="node1", request=1).__dict__)
    refused(device(api3, "POST", "web", DISK), "is migrating")
    sim.state.change(sim.state.paths.vm(uuid), node="node1", migration=None,
                     state="provision")
    refused(device(api3, "POST", "web", DISK), "is being provisioned")
    assert stored(sim, uuid) == []


def test_the_cli_attaches_and_detaches_and_follows_the_task(
        api3: ApiClient, sim: SimCluster, tmp_path: Path) -> None:
    env = {"PVC_URL": api3.base, "PVC_TOKEN": TOKEN, "PVC_CONNECTION": "",
           "PVC_CONFIG": "/nonexistent"}
    xml_file = tmp_path / "disk.xml"
    xml_file.write_text(DISK)
    uuid = define(api3, sim, "cold", running=False)
    result = CliRunner().invoke(cli, ["vm", "device", "attach", "cold", str(xml_file)], env=env)
    assert result.exit_code == 0 and "not running" in result.output, result.output
    assert stored(sim, uuid) == ["disk sdb"]
    again = CliRunner().invoke(cli, ["vm", "device", "attach", "cold", str(xml_file)], env=env)
    assert again.exit_code == 1 and "already has a disk sdb" in again.output
    result = CliRunner().invoke(cli, ["vm", "device", "detach", "cold", str(xml_file)], env=env)
    assert result.exit_code == 0, result.output
    assert stored(sim, uuid) == []
    # a running VM: --wait follows its task (the test driver refuses the hot-plug)
    hot = define(api3, sim, "hot")
    stop = threading.Event()

    def run_pending() -> None:
        while not stop.is_set():
            for record in read_tasks(sim.state.view):
                if record.state == "pending":
                    run_task(sim, record.id)
            stop.wait(0.02)

    threading.Thread(target=run_pending, daemon=True).start()
    try:
        result = CliRunner().invoke(cli, ["vm", "device", "attach", "hot", str(xml_file),
                                          "--wait", "--timeout", "30"], env=env)
    finally:
        stop.set()
    assert result.exit_code == 1, result.output
    assert "vm.device_attach" in result.output and "not supported" in result.output
    assert stored(sim, hot) == []
