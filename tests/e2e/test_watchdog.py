"""Self-fencing by watchdog on a lab (issue 12): a node cut off from the cluster, or hung, resets
itself before the primary recovers its VMs elsewhere, and no VM ever runs twice.

The watchdog is the lab's fake (`pvcd.lab.watchdog`: this machine has no watchdog device): the
node daemons arm and pet it through the same interface as `/dev/watchdog`, and a board process
of the lab resets (kills and starts again) a node whose timer ran out, as the lab fence does.
The primary's side is production code: the `watchdog` fence driver waits the node's published
timeout out. Timings: keepalive 1 s, dead after 3 s, watchdog 5 s.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from pvcd.lab.lab import Lab
from pvcd.lab.netns import in_ns
from pvcd.lab.watchdog import read_state, resets
from tests.e2e.labclient import LabClient, LabFactory, wait_until
from tests.e2e.test_ha import (
    HA_LAB,
    DoubleRunSampler,
    cut_off,
    running,
    vms_on_a_victim,
)

pytestmark = pytest.mark.slow

WATCHDOG = 5


def first_time_elsewhere(lab: Lab, uuids: list[str], node: str, timeout: float) -> float:
    """Wall-clock time at which the first of `uuids` was seen running off `node`."""
    def moved() -> float | None:
        now = running(lab)
        return time.time() if any(now.get(u) and now[u] != [node] for u in uuids) else None

    return float(wait_until(moved, timeout=timeout, interval=0.02))


def folder(lab: Lab, node: str) -> Path:
    return Path(lab._info().node(node).config).parent


def watchdog_lab(make_lab: LabFactory, **extra: object) -> tuple[Lab, LabClient]:
    return make_lab(**{**HA_LAB, **extra}, fencing="watchdog", watchdog_timeout=WATCHDOG)


def test_every_node_arms_its_watchdog_and_publishes_it_for_the_primary(
        make_lab: LabFactory) -> None:
    lab, api = watchdog_lab(make_lab)
    for node in ("node1", "node2", "node3"):
        state = read_state(folder(lab, node) / "watchdog")
        assert state is not None and state["armed"] and state["timeout"] == WATCHDOG
    # petted with every keepalive: the count starts again at least once a second
    device = folder(lab, "node2") / "watchdog"
    first = read_state(device)
    assert first is not None
    wait_until(lambda: (read_state(device) or first)["petted"] > first["petted"], timeout=3)
    # a clean stop disarms it: the board resets nothing
    lab.signal_node("node3", signal.SIGTERM)
    assert lab.wait_node_exit("node3")
    state = read_state(folder(lab, "node3") / "watchdog")
    assert state is not None and not state["armed"]
    wait_until(lambda: api.nodes()["node3"]["daemon_state"] == "stop", timeout=5)
    assert resets(folder(lab, "node3")) == []


def test_a_partitioned_node_resets_itself_before_its_vms_start_elsewhere(
        make_lab: LabFactory) -> None:
    # network lab: the daemons in their node namespaces, ZooKeeper on the underlay
    lab, api = watchdog_lab(make_lab, session_timeout=3.0, network=True)
    victim, uuids = vms_on_a_victim(lab, api, 3, "w")
    with DoubleRunSampler(lab) as sampler:
        cut_off(lab, victim)
        cut = time.time()
        moved = first_time_elsewhere(lab, uuids, victim, timeout=45)
        wait_until(lambda: all(len(running(lab).get(u, [])) == 1 for u in uuids), timeout=15)
        reset = resets(folder(lab, victim))
        assert len(reset) == 1, reset
        assert cut < reset[0]["at"] < moved, (cut, reset, moved)
        assert api.nodes()[victim]["fence_state"] == "fenced"
        # back on the network, the node (booted again) joins and runs none of them twice
        in_ns(lab.network().node_ns(victim), "ip", "link", "set", "eth0", "up")
        wait_until(lambda: api.nodes()[victim]["daemon_state"] == "run", timeout=30)
        time.sleep(1.0)
    assert sampler.samples > 10 and sampler.violations == []
    assert all(victim not in running(lab).get(u, []) for u in uuids)
    print(f"partition: reset {reset[0]['at'] - cut:.2f} s after the cut, VMs elsewhere "
          f"{moved - cut:.2f} s after it ({moved - reset[0]['at']:.2f} s after the reset)")


def test_a_hung_node_resets_itself_and_waits_for_the_fence_before_it_joins_again(
        make_lab: LabFactory) -> None:
    lab, api = watchdog_lab(make_lab)
    victim, uuids = vms_on_a_victim(lab, api, 3, "h")
    with DoubleRunSampler(lab) as sampler:
        lab.signal_node(victim, signal.SIGSTOP)  # hung: its session lives, it pets nothing
        stopped = time.time()
        moved = first_time_elsewhere(lab, uuids, victim, timeout=45)
        reset = resets(folder(lab, victim))
        assert len(reset) == 1, reset
        assert stopped < reset[0]["at"] < moved
        # the daemon started by the reset found itself marked dead: it did not arm its
        # watchdog or register over that; it joins once the fence is over
        wait_until(lambda: api.nodes()[victim]["daemon_state"] == "run", timeout=30)
        time.sleep(1.0)
    assert sampler.samples > 10 and sampler.violations == []
    log = Path(lab._info().node(victim).log).read_text()
    assert "event=register-deferred" in log
    print(f"hung: reset {reset[0]['at'] - stopped:.2f} s after SIGSTOP, VMs elsewhere "
          f"{moved - stopped:.2f} s after it")
