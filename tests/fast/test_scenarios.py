"""HA scenarios replayed in process (tests/scenarios/*.yaml, format in tests/fakes/scenario.py).

A scenario whose file says `xfail` describes the correct outcome that today's code does not
reach yet; it is expected to fail, strictly, so the fix shows up as an XPASS to remove the mark.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.nodes import SimCluster
from tests.fakes.scenario import Scenario, replay

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.yaml"))


def _param(path: Path) -> object:
    scenario = Scenario.load(path)
    marks = [pytest.mark.xfail(strict=True, reason=scenario.xfail, raises=AssertionError)] \
        if scenario.xfail else []
    return pytest.param(scenario, id=scenario.name, marks=marks)


@pytest.mark.parametrize("scenario", [_param(p) for p in SCENARIOS])
def test_scenario(scenario: Scenario, sim: SimCluster) -> None:
    replay(scenario, sim)


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 6
