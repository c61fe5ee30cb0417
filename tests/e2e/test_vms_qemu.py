"""VMs on a QEMU lab: one real libvirtd per node, tiny guests that boot (TCG) and live-migrate.

Every effect is checked in the nodes' own libvirtd (libvirt-python on each node's URI), not
only in the API: the state and its reason ("booted" or "migrated"), the guest's serial console,
and its boot stamp in guest memory (the same value after a live migration: the memory moved,
the guest did not boot again). Needs root (mount namespaces, libvirtd, QEMU).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvcd.lab.lab import Lab
from pvcd.lab.libvirtd import LibvirtdLab, processes_in_namespace
from pvcd.lab.qemu_guest import GUEST_SERIAL_UP, qemu_guest_xml, read_boot_stamp
from tests.e2e.labclient import LabClient, wait_until

libvirt = pytest.importorskip("libvirt")

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.needs_root]


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("the QEMU lab mounts and starts libvirtd: run as root")
    for tool in ("libvirtd", "qemu-system-x86_64", "tini", "unshare", "as", "ld"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/setup"


class QemuLab:
    """A lab with `libvirt="qemu"`, and a way into each node's libvirtd."""

    def __init__(self, nodes: int) -> None:
        # short: libvirtd's unix socket paths are limited to 107 bytes
        self.workdir = Path(f"/tmp/pvcd-e2e-qemu-{uuidlib.uuid4().hex[:6]}")
        self.lab = Lab(self.workdir)
        self.info = self.lab.up(nodes=nodes, libvirt="qemu", fencing="none")
        self.api = LabClient(self.info)
        self.nodes = [n.name for n in self.info.nodes]

    def down(self) -> None:
        self.lab.down()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def kernel(self) -> Path:
        assert self.info.qemu is not None
        return Path(self.info.qemu["kernel"])

    def uri(self, node: str) -> str:
        config = yaml.safe_load(Path(self.info.node(node).config).read_text())
        return str(config["drivers"]["libvirt"]["uri"])

    def libvirtd(self) -> LibvirtdLab:
        assert self.info.qemu is not None
        return LibvirtdLab(Path(self.info.qemu["workdir"]), len(self.nodes))

    def serial_log(self, name: str) -> Path:
        return self.workdir / f"{name}.serial"

    def define(self, name: str, **values: str) -> str:
        uuid = str(uuidlib.uuid4())
        xml = qemu_guest_xml(name, uuid, kernel=self.kernel, serial_log=self.serial_log(name))
        response = self.api.post("/vm", data={"xml": xml, **values})
        assert response.status_code == 200, response.text
        return uuid

    def vm(self, name: str) -> dict[str, Any]:
        response = self.api.get(f"/vm/{name}")
        assert response.status_code == 200, response.text
        return dict(response.json()[0])

    def running(self, uuid: str) -> dict[str, str]:
        """{node: libvirt's reason} for every node whose libvirtd runs `uuid`."""
        found = {}
        for node in self.nodes:
            domain = self.lab.domains(node).get(uuid)
            if domain is not None and domain["state"] == "running":
                found[node] = domain["reason"]
        return found

    def known_by(self, uuid: str) -> list[str]:
        """The nodes whose libvirtd knows `uuid` at all (defined or running)."""
        return [node for node in self.nodes if uuid in self.lab.domains(node)]

    def boot_stamp(self, node: str, uuid: str) -> int | None:
        conn = libvirt.open(self.uri(node))
        try:
            return read_boot_stamp(conn.lookupByUUIDString(uuid))
        finally:
            conn.close()

    def boots(self, name: str) -> int:
        """How often the guest printed its boot line on its serial console (every node's QEMU
        appends to the same file)."""
        path = self.serial_log(name)
        return path.read_text(errors="replace").count(GUEST_SERIAL_UP) if path.exists() else 0

    def post_node(self, name: str, **values: str) -> None:
        response = self.api.post(f"/vm/{name}/node", data=values)
        assert response.status_code == 200, response.text


@pytest.fixture
def qlab2() -> Iterator[QemuLab]:
    lab = QemuLab(2)
    yield lab
    lab.down()


@pytest.fixture
def qlab3() -> Iterator[QemuLab]:
    lab = QemuLab(3)
    yield lab
    lab.down()


def wait_booted(lab: QemuLab, name: str, uuid: str, node: str) -> int:
    """Wait until `uuid` runs on `node` only, its kernel is up, and the cluster has recorded it
    running (the API live-migrates only a VM recorded running); return its boot stamp."""
    wait_until(lambda: lab.running(uuid) == {node: "booted"}, timeout=10)
    stamp = int(wait_until(lambda: lab.boot_stamp(node, uuid), timeout=5))
    wait_until(lambda: lab.vm(name)["running_on"] == node, timeout=5)
    return stamp


def test_lab_ships_a_guest_that_boots_through_the_api(qlab2: QemuLab) -> None:
    lab = qlab2
    assert lab.info.qemu is not None
    guest_xml = Path(lab.info.qemu["guest_xml"]).read_text()
    assert "<uuid>" not in guest_xml and str(lab.kernel) in guest_xml
    response = lab.api.post("/vm", data={"xml": guest_xml, "node": "node2"})
    assert response.status_code == 200, response.text
    uuid = lab.vm("guest")["uuid"]
    wait_until(lambda: lab.running(uuid) == {"node2": "booted"}, timeout=10)
    assert wait_until(lambda: lab.boot_stamp("node2", uuid), timeout=5)
    wait_until(lambda: lab.vm("guest")["running_on"] == "node2", timeout=5)

    # graceful shutdown is the ACPI power button: the guest powers itself off
    assert lab.api.post("/vm/guest/state", data={"state": "shutdown"}).status_code == 200
    wait_until(lambda: lab.lab.domains("node2")[uuid]["state"] == "shutoff", timeout=10)
    assert lab.lab.domains("node2")[uuid]["reason"] == "shutdown"
    assert lab.api.post("/vm/guest/state", data={"state": "start"}).status_code == 200
    wait_until(lambda: lab.running(uuid) == {"node2": "booted"}, timeout=10)


def test_live_migration_unmigrate_and_move(qlab3: QemuLab) -> None:
    lab = qlab3
    uuid = lab.define("mover", node="node1")
    stamp = wait_booted(lab, "mover", uuid, "node1")

    lab.post_node("mover", action="migrate", node="node2")
    wait_until(lambda: lab.running(uuid) == {"node2": "migrated"}, timeout=15)
    wait_until(lambda: lab.known_by(uuid) == ["node2"], timeout=5)  # undefined on the source
    assert lab.boot_stamp("node2", uuid) == stamp  # the same memory: not booted again
    wait_until(lambda: lab.vm("mover")["state"] == "start", timeout=5)
    assert lab.api.get("/vm/mover/node").json() == {"name": "mover", "node": "node2",
                                                    "last_node": "node1"}

    lab.post_node("mover", action="unmigrate")
    wait_until(lambda: lab.running(uuid) == {"node1": "migrated"}, timeout=15)
    wait_until(lambda: lab.known_by(uuid) == ["node1"], timeout=5)
    assert lab.boot_stamp("node1", uuid) == stamp
    assert lab.vm("mover")["last_node"] is None

    lab.post_node("mover", action="migrate", node="node3", permanent="")
    wait_until(lambda: lab.running(uuid) == {"node3": "migrated"}, timeout=15)
    wait_until(lambda: lab.known_by(uuid) == ["node3"], timeout=5)
    assert lab.boot_stamp("node3", uuid) == stamp
    moved = lab.vm("mover")
    assert moved["node"] == "node3" and moved["last_node"] is None and not moved["migrated"]
    assert lab.boots("mover") == 1  # one boot, three live migrations


def test_back_to_back_migrations_stay_live(qlab2: QemuLab) -> None:
    """The next migration is requested the moment the API reports the previous one done: it
    must not meet libvirt's migration job of the previous one (and fall back to a reboot)."""
    lab = qlab2
    uuid = lab.define("pingpong", node="node1")
    stamp = wait_booted(lab, "pingpong", uuid, "node1")
    for target, values in [("node2", {"action": "migrate", "node": "node2"}),
                           ("node1", {"action": "unmigrate"})] * 2:
        lab.post_node("pingpong", **values)
        wait_until(lambda t=target: (lambda vm: vm["state"] == "start" and
                                     vm["running_on"] == t)(lab.vm("pingpong")),
                   timeout=15, interval=0.002)
    # every one of the four was live: one boot, the same memory, and libvirt says "migrated"
    assert lab.running(uuid) == {"node1": "migrated"}
    assert lab.boot_stamp("node1", uuid) == stamp and lab.boots("pingpong") == 1


def block_migration_ports(lab: QemuLab, node: str) -> ExitStack:
    """Listen on every port of `node`'s migration range: its libvirtd can accept no incoming
    migration (no free port), as if a firewall closed the migration path."""
    low, high = lab.libvirtd()[lab.nodes.index(node)].migration_ports
    stack = ExitStack()
    for port in range(low, high + 1):
        sock = stack.enter_context(socket.socket())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past migrations' TIME_WAIT
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            continue  # in use (the range is within the ephemeral ports): libvirt skips it too
        sock.listen()
    return stack


def test_a_failed_live_migration_falls_back_to_shutdown_and_start(qlab2: QemuLab) -> None:
    lab = qlab2
    uuid = lab.define("stubborn", node="node1")
    stamp = wait_booted(lab, "stubborn", uuid, "node1")
    with block_migration_ports(lab, "node2"):
        lab.post_node("stubborn", action="migrate", node="node2")
        # shut down on node1, booted afresh on node2
        wait_until(lambda: lab.running(uuid) == {"node2": "booted"}, timeout=20)
    wait_until(lambda: lab.known_by(uuid) == ["node2"], timeout=5)
    new_stamp = wait_until(lambda: lab.boot_stamp("node2", uuid), timeout=5)
    assert new_stamp != stamp
    wait_until(lambda: lab.boots("stubborn") == 2, timeout=5)
    log = Path(lab.info.node("node1").log).read_text()
    assert f"event=vm-live-migration-failed vm={uuid}" in log and "fallback=shutdown" in log
    assert lab.vm("stubborn")["last_node"] == "node1"
    wait_until(lambda: lab.vm("stubborn")["state"] == "start", timeout=5)

    # the path is open again: the next migration is live
    lab.post_node("stubborn", action="unmigrate")
    wait_until(lambda: lab.running(uuid) == {"node1": "migrated"}, timeout=15)
    assert lab.boot_stamp("node1", uuid) == new_stamp


def exactly_once(lab: QemuLab, uuids: list[str]) -> bool:
    return all(len(lab.running(uuid)) == 1 for uuid in uuids)


def stays_exactly_once(lab: QemuLab, uuids: list[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        running = {uuid: lab.running(uuid) for uuid in uuids}
        assert all(len(nodes) == 1 for nodes in running.values()), running
        time.sleep(0.1)


@pytest.mark.parametrize("killed", ["source", "target"])
def test_sigkill_during_a_live_migration_keeps_the_guest_running_once(
        qlab3: QemuLab, killed: str) -> None:
    lab = qlab3
    uuid = lab.define("survivor", node="node1")
    wait_booted(lab, "survivor", uuid, "node1")
    victim = "node1" if killed == "source" else "node2"
    lab.post_node("survivor", action="migrate", node="node2")
    # the incoming guest exists on the target: the migration is in flight
    wait_until(lambda: uuid in lab.lab.domains("node2"), timeout=10, interval=0.005)
    lab.lab.signal_node(victim, signal.SIGKILL)
    assert lab.lab.wait_node_exit(victim)
    lab.lab.start_node(victim)
    wait_until(lambda: lab.api.nodes()[victim]["daemon_state"] == "run", timeout=20)

    wait_until(lambda: list(lab.running(uuid)) == ["node2"] and lab.known_by(uuid) == ["node2"],
               timeout=20)
    wait_until(lambda: lab.vm("survivor")["running_on"] == "node2", timeout=10)
    stays_exactly_once(lab, [uuid], seconds=3)
    assert lab.vm("survivor")["node"] == "node2"
    # libvirtd carried the migration on without the daemon: moved live, not booted again
    assert lab.running(uuid) == {"node2": "migrated"} and lab.boots("survivor") == 1


def test_flush_and_ready_move_running_guests_live(qlab3: QemuLab) -> None:
    lab = qlab3
    names = [f"fl{i}" for i in range(3)]
    uuids = [lab.define(name, node="node2") for name in names]
    stamps = {uuid: wait_booted(lab, name, uuid, "node2")
              for name, uuid in zip(names, uuids, strict=True)}

    response = lab.api.post("/node/node2/domain-state", data={"domain-state": "flush"})
    assert response.status_code == 200, response.text
    wait_until(lambda: lab.api.get("/node/node2/domain-state").json()["domain_state"] ==
               "flushed", timeout=30)
    for uuid in uuids:
        running = lab.running(uuid)
        assert list(running.values()) == ["migrated"] and "node2" not in running, running
        assert lab.boot_stamp(next(iter(running)), uuid) == stamps[uuid]
    assert not [uuid for uuid in lab.lab.domains("node2") if uuid in uuids]

    response = lab.api.post("/node/node2/domain-state", data={"domain-state": "ready"})
    assert response.status_code == 200, response.text
    wait_until(lambda: lab.api.get("/node/node2/domain-state").json()["domain_state"] ==
               "ready", timeout=30)
    wait_until(lambda: all(lab.running(uuid) == {"node2": "migrated"} for uuid in uuids),
               timeout=15)
    for uuid in uuids:
        assert lab.boot_stamp("node2", uuid) == stamps[uuid]
        assert lab.known_by(uuid) == ["node2"]
    assert all(lab.boots(name) == 1 for name in names)


def test_sigkill_during_a_flush_keeps_every_guest_running_once(qlab3: QemuLab) -> None:
    lab = qlab3
    names = [f"kf{i}" for i in range(3)]
    uuids = [lab.define(name, node="node3") for name in names]
    for name, uuid in zip(names, uuids, strict=True):
        wait_booted(lab, name, uuid, "node3")
    lab.api.post("/node/node3/domain-state", data={"domain-state": "flush"})
    # the first incoming guest exists on another node: migrations are in flight
    wait_until(lambda: any(uuid in lab.lab.domains(node)
                           for uuid in uuids for node in ("node1", "node2")),
               timeout=10, interval=0.005)
    lab.lab.signal_node("node3", signal.SIGKILL)
    assert lab.lab.wait_node_exit("node3")
    lab.lab.start_node("node3")
    wait_until(lambda: lab.api.nodes()["node3"]["daemon_state"] == "run", timeout=20)
    wait_until(lambda: lab.api.get("/node/node3/domain-state").json()["domain_state"] ==
               "flushed", timeout=30)
    wait_until(lambda: all(list(lab.running(uuid)) in (["node1"], ["node2"]) for uuid in uuids),
               timeout=20)
    stays_exactly_once(lab, uuids, seconds=3)
    assert not [uuid for uuid in lab.lab.domains("node3") if uuid in uuids]
    # all moved live: the one in flight carried on by libvirtd, the rest by the restarted daemon
    assert all(list(lab.running(uuid).values()) == ["migrated"] for uuid in uuids)
    assert all(lab.boots(name) == 1 for name in names)


def test_down_leaves_nothing_behind() -> None:
    lab = QemuLab(2)
    try:
        uuid = lab.define("leftover", node="node1")
        wait_booted(lab, "leftover", uuid, "node1")
        namespaces = {ns for instance in lab.libvirtd().instances for ns in instance.namespaces()}
        assert len(namespaces) == 2
    finally:
        lab.lab.down()
    assert not any((lab.workdir / part).exists()
                   for part in ("libvirtd", "guest", "guest.xml", "nodes", "lab.json"))
    assert all(processes_in_namespace(ns) == [] for ns in namespaces)
    assert str(lab.workdir) not in Path("/proc/self/mounts").read_text()
    shutil.rmtree(lab.workdir, ignore_errors=True)


def test_migration_methods_live_only_and_shutdown(qlab2: QemuLab) -> None:
    """extensions.md §6.2 on real guests: `live` never falls back (a failed live migration
    leaves the guest running where it was, assigned there again, with the reason), and
    `shutdown` always boots the guest afresh on the target, though a live migration would
    work."""
    lab = qlab2
    live = lab.define("liveonly", node="node1", migration_method="live",
                      migration_max_downtime="1000")
    cold = lab.define("cold", node="node1", migration_method="shutdown")
    live_stamp = wait_booted(lab, "liveonly", live, "node1")
    cold_stamp = wait_booted(lab, "cold", cold, "node1")
    with block_migration_ports(lab, "node2"):
        lab.post_node("liveonly", action="migrate", node="node2")
        wait_until(lambda: lab.vm("liveonly")["node"] == "node1" and
                   lab.vm("liveonly")["state"] == "start", timeout=20)
    assert lab.running(live) == {"node1": "booted"}
    assert lab.boot_stamp("node1", live) == live_stamp and lab.boots("liveonly") == 1
    assert "live migration to node2 failed" in (lab.vm("liveonly")["failed_reason"] or "")
    assert lab.vm("liveonly")["last_node"] is None
    # the path is open again: live, the same memory
    lab.post_node("liveonly", action="migrate", node="node2")
    wait_until(lambda: lab.running(live) == {"node2": "migrated"}, timeout=15)
    assert lab.boot_stamp("node2", live) == live_stamp
    wait_until(lambda: lab.vm("liveonly")["failed_reason"] is None, timeout=5)

    lab.post_node("cold", action="migrate", node="node2")
    wait_until(lambda: lab.running(cold) == {"node2": "booted"}, timeout=20)
    new_stamp = wait_until(lambda: lab.boot_stamp("node2", cold), timeout=5)
    assert new_stamp != cold_stamp
    wait_until(lambda: lab.boots("cold") == 2, timeout=5)
    log = Path(lab.info.node("node1").log).read_text()
    assert f"event=vm-migration-by-shutdown vm={cold}" in log
    assert f"event=vm-live-migration-failed vm={cold}" not in log
