"""`pvc provisioner ...` against the API in process: a round trip through every kind of object
(add, list, info, modify, remove), read back through the API's JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pvcd.cli.main import cli
from tests.fakes.api import TOKEN, running_api
from tests.fakes.nodes import SimCluster


@pytest.fixture
def env(sim: SimCluster) -> Iterator[dict[str, str]]:
    sim.add_node("node1")
    sim.step()
    sim.state.put(sim.state.paths.storage_pool("vms"), {"name": "vms"})
    with running_api(sim.state, sim.clock) as api:
        assert api.post("/network", data={"vni": 100, "description": "lan",
                                          "nettype": "bridged"}).status_code == 200
        yield {"PVC_URL": api.base, "PVC_TOKEN": TOKEN, "PVC_CONNECTION": "",
               "PVC_CONFIG": "/nonexistent"}


def pvc(env: dict[str, str], *args: str, code: int = 0, stdin: str | None = None) -> str:
    result = CliRunner().invoke(cli, ["provisioner", *args], env=env, input=stdin)
    assert result.exit_code == code, result.output
    return result.output


def doc(env: dict[str, str], *args: str) -> Any:
    return json.loads(pvc(env, *args, "--format", "json"))


def test_round_trip(env: dict[str, str], tmp_path: Path) -> None:
    pvc(env, "template", "system", "add", "small", "--vcpus", "2", "--vram", "1024",
        "--no-serial", "--node-limit", "node1", "--migration-method", "live")
    pvc(env, "template", "system", "modify", "small", "--vram", "2048")
    system = doc(env, "template", "system", "info", "small")[0]
    assert (system["vram_mb"], system["serial"], system["node_limit"]) == (2048, False, ["node1"])
    assert "small" in pvc(env, "template", "system", "list")

    pvc(env, "template", "network", "add", "lan", "--mac-template",
        "{prefix}:a0:0{vmid}:0{netid}")
    pvc(env, "template", "network", "net", "add", "lan", "100")
    pvc(env, "template", "network", "net", "add", "lan", "100", "--permit-duplicate")
    assert doc(env, "template", "network", "info", "lan")[0]["networks"] == [{"vni": 100}] * 2
    pvc(env, "template", "network", "net", "remove", "lan", "100", "--yes")
    assert doc(env, "template", "network", "info", "lan")[0]["networks"] == []

    pvc(env, "template", "storage", "add", "disks")
    pvc(env, "template", "storage", "disk", "add", "disks", "sda", "--pool", "vms", "--size",
        "4", "--filesystem", "ext4", "--filesystem-arg", "-L=root", "--filesystem-arg", "-m=1",
        "--mountpoint", "/")
    disks = doc(env, "template", "storage", "disk", "list", "disks")
    assert disks[0]["filesystem_args"] == ["-L=root", "-m=1"]
    listed = pvc(env, "template", "list")
    assert "System templates:" in listed and "sda: vms, 4 GiB, ext4 -L=root -m=1" in listed

    data = tmp_path / "user-data"
    data.write_text("#cloud-config\nhostname: web\n")
    pvc(env, "userdata", "add", "web", str(data))
    pvc(env, "userdata", "modify", "web", "-", stdin="#cloud-config\nhostname: web2\n")
    assert pvc(env, "userdata", "info", "web").strip() == "#cloud-config\nhostname: web2"
    bad = pvc(env, "userdata", "add", "bad", "-", stdin="#cloud-config\n- x\n", code=1)
    assert "not a YAML mapping" in bad

    assert "source_snapshot" in pvc(env, "script", "list")
    assert "cdrom" in pvc(env, "script", "info", "blank")

    pvc(env, "profile", "add", "web", "--system-template", "small", "--network-template",
        "lan", "--storage-template", "disks", "--userdata", "web", "--arg",
        "source_snapshot=gold")
    profile = doc(env, "profile", "info", "web")[0]
    assert (profile["script"], profile["arguments"]) == ("clone", ["source_snapshot=gold"])
    pvc(env, "profile", "modify", "web", "--arg", "")
    assert doc(env, "profile", "info", "web")[0]["arguments"] == []
    refused = pvc(env, "template", "storage", "remove", "disks", "--yes", code=1)
    assert "used by profile web" in refused
    pvc(env, "profile", "remove", "web", "--yes")
    for kind, name in (("system", "small"), ("network", "lan"), ("storage", "disks")):
        pvc(env, "template", kind, "remove", name, "--yes")
    pvc(env, "userdata", "remove", "web", "--yes")
    assert doc(env, "template", "list") == {"system-templates": [], "network-templates": [],
                                            "storage-templates": []}
