"""High availability on a lab: dead-node detection, fencing, VM recovery, maintenance mode.

The lab's fence driver really kills a node's daemon (its test:/// guests die with it) and
starts it again. Throughout, a sampler checks every 100 ms that no VM runs on two nodes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from pvcd.lab.netns import in_ns
from tests.e2e.labclient import LabClient, LabFactory, wait_until

pytestmark = pytest.mark.slow

NODES = ("node1", "node2", "node3")
# a long session and a short keepalive threshold: a hung daemon keeps its session alive,
# and is still found dead by its stale keepalive (dead after 3 x 1 s)
HA_LAB = {"nodes": 3, "session_timeout": 10.0, "keepalive_interval": 1.0, "dead_threshold": 3}


class DoubleRunSampler:
    """Samples every node's libvirt every 100 ms; records any VM running on two nodes."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.violations: list[tuple[str, list[str]]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DoubleRunSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            seen = running(self.lab)
            self.samples += 1
            self.violations += [(u, n) for u, n in seen.items() if len(n) > 1]


def define_on(api: LabClient, node: str, count: int, prefix: str) -> list[str]:
    uuids = []
    for i in range(count):
        name = f"{prefix}{i}"
        response = api.post("/vm", data={"xml": tiny_guest_xml(name), "node": node})
        assert response.status_code == 200, response.text
        uuids.append(api.get(f"/vm/{name}").json()[0]["uuid"])
    return uuids


def running(lab: Lab) -> dict[str, list[str]]:
    """VM UUID → the nodes whose libvirt runs it (a frozen or fenced node answers nothing)."""
    found: dict[str, list[str]] = {}
    for node in NODES:
        try:
            domains = lab.domains(node)
        except (OSError, RuntimeError, ValueError):
            continue
        for uuid, domain in domains.items():
            if domain["state"] == "running":
                found.setdefault(uuid, []).append(node)
    return found


def hosts(lab: Lab, uuid: str) -> list[str]:
    return running(lab).get(uuid, [])


def all_elsewhere(lab: Lab, uuids: list[str], node: str) -> bool:
    now = running(lab)
    return all(len(now.get(u, [])) == 1 and now[u] != [node] for u in uuids)


def all_on(lab: Lab, uuids: list[str], node: str) -> bool:
    now = running(lab)
    return all(now.get(u) == [node] for u in uuids)


@pytest.fixture
def ha_lab(make_lab: LabFactory) -> Iterator[tuple[Lab, LabClient]]:
    yield make_lab(**HA_LAB)


def victim_of(api: LabClient) -> str:
    primary = api.primary()
    return next(n for n in NODES if n != primary)


def vms_on_a_victim(lab: Lab, api: LabClient, count: int, prefix: str) -> tuple[str, list[str]]:
    """A node other than the primary, running `count` new VMs: (its name, their UUIDs)."""
    victim = victim_of(api)
    uuids = define_on(api, victim, count, prefix)
    wait_until(lambda: all_on(lab, uuids, victim), timeout=10)
    return victim, uuids


def cut_off(lab: Lab, node: str) -> None:
    """Take `node`'s link to the underlay (ZooKeeper, the other nodes) down."""
    in_ns(lab.network().node_ns(node), "ip", "link", "set", "eth0", "down")


def test_a_hung_node_is_fenced_and_its_vms_recovered(ha_lab: tuple[Lab, LabClient]) -> None:
    lab, api = ha_lab
    victim = victim_of(api)
    uuids = define_on(api, victim, 4, "h")
    wait_until(lambda: all_on(lab, uuids, victim), timeout=10)
    with DoubleRunSampler(lab) as sampler:
        lab.signal_node(victim, signal.SIGSTOP)  # hung: session alive, keepalive stale
        stopped = time.monotonic()
        wait_until(lambda: all_elsewhere(lab, uuids, victim), timeout=30)
        recovered = time.monotonic() - stopped
        node = api.nodes()[victim]
        assert node["fence_state"] == "fenced"
        # the fence restarted the node's daemon: it rejoins flushed, running none of them
        wait_until(lambda: api.nodes()[victim]["daemon_state"] == "run", timeout=20)
        lab.refresh_pids()
        time.sleep(1.0)
        assert all(victim not in hosts(lab, u) for u in uuids)
    assert sampler.samples > 10 and sampler.violations == []
    for uuid in uuids:
        obj = api.get(f"/vm/{uuid}").json()[0]
        assert obj["node"] != victim and obj["last_node"] == victim
    print(f"hung node: VMs running elsewhere {recovered:.2f} s after SIGSTOP")
    # `ready` on the returned node brings its VMs back
    wait_until(lambda: api.get(f"/node/{victim}/domain-state").json()["domain_state"]
               == "flushed", timeout=10)
    assert api.post(f"/node/{victim}/domain-state",
                    data={"domain-state": "ready"}).status_code == 200
    wait_until(lambda: all_on(lab, uuids, victim), timeout=20)


def test_a_failed_fence_never_starts_the_vms_elsewhere(make_lab: LabFactory) -> None:
    lab, api = make_lab(**HA_LAB, fencing="lab-fail")
    victim = victim_of(api)
    uuids = define_on(api, victim, 3, "f")
    wait_until(lambda: all_on(lab, uuids, victim), timeout=10)
    lab.signal_node(victim, signal.SIGSTOP)
    try:
        node = wait_until(lambda: (n := api.nodes()[victim])["fence_state"] == "failed" and n,
                          timeout=20)
        assert "always fails" in node["fence_message"]
        time.sleep(3.0)
        for uuid in uuids:
            assert hosts(lab, uuid) == []  # the victim is frozen; nobody else runs them
            assert api.get(f"/vm/{uuid}").json()[0]["node"] == victim
    finally:
        lab.signal_node(victim, signal.SIGCONT)
    # it was only hung: it resumes, reports again, and its VMs run where they were
    wait_until(lambda: api.nodes()[victim]["fence_state"] is None, timeout=20)
    wait_until(lambda: all_on(lab, uuids, victim), timeout=20)


def test_maintenance_mode_suspends_fencing(ha_lab: tuple[Lab, LabClient]) -> None:
    lab, api = ha_lab
    victim = victim_of(api)
    uuids = define_on(api, victim, 2, "m")
    wait_until(lambda: all_on(lab, uuids, victim), timeout=10)
    assert api.post("/maintenance", data={"state": "on"}).status_code == 200
    assert api.get("/maintenance").json()["maintenance"] is True
    lab.signal_node(victim, signal.SIGSTOP)
    time.sleep(6.0)  # twice the dead threshold
    assert api.nodes()[victim]["fence_state"] is None
    now = running(lab)  # the frozen victim answers nothing; nobody else may run them
    assert all(u not in now for u in uuids)
    assert all(api.get(f"/vm/{u}").json()[0]["node"] == victim for u in uuids)
    assert api.post("/maintenance", data={"state": "off"}).status_code == 200
    wait_until(lambda: api.nodes()[victim]["fence_state"] == "fenced", timeout=20)
    wait_until(lambda: all_elsewhere(lab, uuids, victim), timeout=20)
    bad = api.post("/maintenance", data={"state": "maybe"})
    assert bad.status_code == 510 and "valid values are: on, off" in bad.json()["message"]


def test_killed_primary_is_fenced_by_the_new_one(ha_lab: tuple[Lab, LabClient]) -> None:
    lab, api = ha_lab
    old = api.primary()
    assert old is not None
    uuids = define_on(api, old, 3, "p")
    wait_until(lambda: all_on(lab, uuids, old), timeout=10)
    with DoubleRunSampler(lab) as sampler:
        lab.signal_node(old, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: (p := api.primary()) not in (None, old) and p, timeout=15)
        failover = time.monotonic() - killed
        wait_until(lambda: all_elsewhere(lab, uuids, old), timeout=30)
        recovered = time.monotonic() - killed
    assert sampler.violations == []
    print(f"killed primary: new primary after {failover:.2f} s, VMs running after "
          f"{recovered:.2f} s")


def test_a_partitioned_node_is_fenced_and_no_vm_ever_runs_twice(make_lab: LabFactory) -> None:
    # network lab: daemons in their node namespaces, ZooKeeper on the underlay
    lab, api = make_lab(**{**HA_LAB, "session_timeout": 3.0}, network=True)
    victim, uuids = vms_on_a_victim(lab, api, 4, "x")
    with DoubleRunSampler(lab) as sampler:
        cut_off(lab, victim)
        cut = time.monotonic()
        wait_until(lambda: all_elsewhere(lab, uuids, victim), timeout=30)
        recovered = time.monotonic() - cut
        assert api.nodes()[victim]["fence_state"] == "fenced"
        time.sleep(1.0)
    assert sampler.samples > 10 and sampler.violations == []
    print(f"partition: VMs running elsewhere {recovered:.2f} s after the cut")
