"""The chaos test, short form (issue 12): 8 clients of mixed VM operations for 20 s on 20 VMs
against a 3-node lab, one node daemon SIGKILLed (systemd, played by the harness, or the lab
fence brings it back), a sampler on every node's libvirt throughout. The long form, with
repeated kills, a primary kill and a ZooKeeper restart, is `bench/chaos.py` (docs/testing.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.faults import FaultPlan
from tests.chaos.harness import ChaosConfig, chaos_lab, run_chaos

pytestmark = pytest.mark.slow

@pytest.mark.timeout(240)
def test_concurrent_clients_and_a_killed_daemon_leave_no_trace(tmp_path: Path) -> None:
    config = ChaosConfig(clients=8, seconds=20, vms=20, faults=FaultPlan(kill_every=12))
    lab = chaos_lab(tmp_path / "lab")
    try:
        result = run_chaos(lab, config)
    finally:
        lab.down()
    print(result.summary())
    figures = result.figures()
    assert [e.what for e in result.events if "kill" in e.what] == ["kill"], result.events
    assert figures["by_status"].get("200", 0) > 100, figures  # the load really ran
    assert result.sampler.sweeps > 50 and result.sampler.max_gap < 1.0, figures
    # a VM on two nodes, a ghost, a lost write, a 5xx, a stuck VM, a daemon that never came
    # back: each is a problem (tests/chaos/checks.py)
    assert result.problems() == [], result.summary()
    assert result.converged is not None and result.converged <= config.converge_timeout
