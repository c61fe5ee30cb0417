"""`pvc vm create NAME --profile P --wait` against the API in process, with the primary's task
runner carrying out the real `provisioner.create` kind (a profile without disks: no Ceph), and
the VM record it leaves: defined from the generated XML, handed over to its node; and a create
whose name is taken between the API's check and the task's first step."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from pvcd.cli.main import cli
from pvcd.config.schema import CephDriverSection, LibvirtDriverSection
from pvcd.controllers.provisioner import ProvisionerCreate
from pvcd.controllers.tasks import TaskRegistry
from pvcd.controllers.tasks.runner import TaskRunner, task_key
from pvcd.domain.pool_space import PoolSpace
from pvcd.domain.provisioner import Profile, SystemTemplate
from pvcd.drivers.disk_images import DiskImages
from pvcd.state.store import Op
from pvcd.state.tasks import read_tasks
from pvcd.vmxml import parse_domain_xml
from tests.apiclient import ApiClient
from tests.fakes.api import TOKEN, running_api
from tests.fakes.nodes import SimCluster


@pytest.fixture
def env(sim: SimCluster) -> Iterator[dict[str, str]]:
    sim.add_node("node1")
    sim.step()
    paths = sim.state.paths
    sim.state.store.commit([
        Op.create(paths.provisioner_object("system", "tiny"),
                  SystemTemplate("tiny", 1, 64, vnc=True).to_doc()),
        Op.create(paths.provisioner_object("profile", "empty"),
                  Profile("empty", system_template="tiny", script="blank",
                          arguments=[]).to_doc())])
    with running_api(sim.state, sim.clock) as api:
        yield {"PVC_URL": api.base, "PVC_TOKEN": TOKEN, "PVC_CONNECTION": "",
               "PVC_CONFIG": "/nonexistent"}


def primary_runner(sim: SimCluster) -> TaskRunner:
    def space(pool: str) -> PoolSpace:
        raise AssertionError("a profile without disks asks Ceph nothing")

    kind = ProvisionerCreate(sim.state.view, sim.state.store, space,
                             DiskImages("/etc/ceph/ceph.conf", "/etc/ceph/keyring"),
                             LibvirtDriverSection(domain_type="qemu"), CephDriverSection(),
                             lambda: (), "x86_64").kind()
    runner = TaskRunner("node1", sim.state.view, sim.state.store, TaskRegistry([kind]),
                        executor="node1/1")
    runner.primary_active = True
    return runner


def runner_thread(sim: SimCluster, stop: threading.Event) -> threading.Thread:
    """The primary's runner: runs every pending task as soon as it appears."""
    runner = primary_runner(sim)

    def loop() -> None:
        while not stop.wait(0.05):
            for task in read_tasks(sim.state.view):
                if task.state == "pending":
                    runner.reconcile(task_key(task.id))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_vm_create_follows_the_task_and_the_vm_is_handed_over(env: dict[str, str],
                                                              sim: SimCluster) -> None:
    stop = threading.Event()
    thread = runner_thread(sim, stop)
    try:
        result = CliRunner().invoke(cli, ["vm", "create", "web1", "--profile", "empty",
                                          "--description", "a test", "--wait"], env=env)
        assert result.exit_code == 0, result.output
        assert "Created VM 'web1' from profile 'empty' (0 disks); started on node node1" in \
            result.output
        refused = CliRunner().invoke(cli, ["vm", "create", "web1", "--profile", "empty"],
                                     env=env)
        assert refused.exit_code == 1 and "already exists" in refused.output
        stopped = CliRunner().invoke(cli, ["vm", "create", "web2", "--profile", "empty",
                                           "--no-start", "--wait"], env=env)
        assert stopped.exit_code == 0 and "defined on node node1" in stopped.output
    finally:
        stop.set()
        thread.join(5)
    view = sim.state.view
    spec = view.vm_spec(view.vm_uuid_by_name("web1") or "")
    assert spec is not None and (spec.state, spec.node, spec.profile, spec.state_request) == \
        ("start", "node1", "empty", 1)
    definition = parse_domain_xml(spec.xml)
    assert (definition.domain_type, definition.description, definition.memory) == \
        ("qemu", "a test", 64)
    assert definition.console == "pty"  # serial by default
    spec2 = view.vm_spec(view.vm_uuid_by_name("web2") or "")
    assert spec2 is not None and spec2.state == "stop"


def test_a_name_taken_before_the_record_step_fails_the_task_and_leaves_nothing(
        env: dict[str, str], sim: SimCluster) -> None:
    api = ApiClient(env["PVC_URL"], TOKEN)
    accepted = api.post("/provisioner/create", data={"name": "race", "profile": "empty"})
    assert accepted.status_code == 202, accepted.text
    task_id = accepted.json()["task_id"]
    paths, store = sim.state.paths, sim.state.store
    store.commit([Op.create(paths.vm_name("race"), {"uuid": "somebody-else"})])
    primary_runner(sim).reconcile(task_key(task_id))
    task = next(t for t in read_tasks(sim.state.view) if t.id == task_id)
    assert (task.state, task.error, task.artifacts) == ("failure", "Conflict", [])
    assert "a VM named 'race' already exists" in task.message  # judged again by the task
    assert sim.state.view.vm_uuids() == []  # its record is not left behind
