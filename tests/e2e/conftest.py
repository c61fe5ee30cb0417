"""A lab (real ZooKeeper + real node daemons, `python -m pvcd.lab.node`) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient, LabFactory


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[LabFactory]:
    labs: list[Lab] = []

    def factory(**kwargs: Any) -> tuple[Lab, LabClient]:
        lab = Lab(tmp_path / f"lab{len(labs)}")
        labs.append(lab)
        info = lab.up(**kwargs)
        verify: str | bool = str(lab.workdir / "tls" / "cert.pem") if kwargs.get("tls") else True
        return lab, LabClient(info, verify)

    yield factory
    for lab in labs:
        lab.down()


@pytest.fixture
def lab3(make_lab: LabFactory) -> tuple[Lab, LabClient]:
    # no fencing: these tests kill and stop daemons on purpose and look at what follows
    return make_lab(nodes=3, fencing="none")
