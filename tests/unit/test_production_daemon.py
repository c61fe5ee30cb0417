"""A production node daemon carries nothing of the lab: building it from a production config
loads no `pvcd.lab` module, and it refuses a lab fence driver it was not given."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvcd.config import parse_config
from pvcd.daemon import NodeDaemon
from pvcd.domain.errors import ConfigError, InvalidValue
from pvcd.drivers.fence import FenceTarget, fence_driver
from pvcd.plugins import Plugins

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "etc" / "pvcd.example.yaml"

PROBE = """
import json, sys, yaml
from pvcd.config import parse_config
from pvcd.main import main  # the `pvcd` command itself, as `pvcd run` imports it
from pvcd.daemon import NodeDaemon

NodeDaemon(parse_config(yaml.safe_load(sys.stdin.read()), "pvcd.yaml"))
print(json.dumps(sorted(m for m in sys.modules if m == "pvcd.lab" or m.startswith("pvcd.lab."))))
"""


def production_config() -> dict[str, Any]:
    """The example config with everything on: a coordinator with client networks, Ceph, IPMI
    fencing; a libvirt that needs no daemon."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config["node"]["coordinator"] = True
    config["api"]["tls"] = {"enabled": False}
    config["api"]["auth"] = {"enabled": True, "secret_key": "s" * 32,
                             "tokens": [{"token": "production-token", "description": "ops"}]}
    config["drivers"]["libvirt"]["uri"] = "test:///default"
    config["drivers"]["ceph"]["enabled"] = True
    config["fencing"]["targets"] = [{"node": "hv2", "driver": "ipmi", "ipmi_host": "bmc-hv2",
                                     "ipmi_user": "admin", "ipmi_password": "secret-password"}]
    return config


def lab_modules_loaded(config: dict[str, Any]) -> set[str]:
    result = subprocess.run([sys.executable, "-c", PROBE], input=yaml.safe_dump(config),
                            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_a_production_daemon_loads_no_lab_module() -> None:
    assert lab_modules_loaded(production_config()) == set()


def test_a_lab_fence_driver_is_refused_without_the_labs_plugins() -> None:
    config = production_config()
    config["fencing"] = {"targets": [{"node": "hv2", "driver": "lab"}]}
    with pytest.raises(ConfigError, match=re.escape(
            "fencing.targets[0].driver: 'lab' is not available to this daemon")):
        NodeDaemon(parse_config(config, "pvcd.yaml"))


def test_a_coordinator_without_auth_on_a_public_address_refuses_to_start() -> None:
    config = production_config()
    config["api"]["auth"] = {"enabled": False}
    with pytest.raises(ConfigError, match=re.escape(
            "pvcd.yaml: api.auth.enabled is false and the API would listen on 0.0.0.0")):
        NodeDaemon(parse_config(config, "pvcd.yaml"))
    config["api"]["auth"]["allow_unauthenticated"] = True
    NodeDaemon(parse_config(config, "pvcd.yaml"))
    config["node"]["coordinator"] = False  # no API on this node: nothing to refuse
    config["api"]["auth"]["allow_unauthenticated"] = False
    NodeDaemon(parse_config(config, "pvcd.yaml"))


class RecordingFence:
    def __init__(self) -> None:
        self.fenced: list[str] = []

    def fence(self, target: FenceTarget, timeout: float) -> None:
        self.fenced.append(target.node)


def test_fence_drivers_are_the_production_ones_plus_those_given() -> None:
    with pytest.raises(InvalidValue):
        fence_driver("lab")
    given = RecordingFence()
    fence_driver("lab", {"lab": given}).fence(FenceTarget("hv2", "lab"), timeout=1)
    assert given.fenced == ["hv2"]
    config = production_config()
    config["fencing"] = {"targets": [{"node": "hv2", "driver": "lab"}]}
    daemon = NodeDaemon(parse_config(config, "pvcd.yaml"),
                        plugins=Plugins(fence_drivers={"lab": given}))
    assert daemon.fence_drivers("lab") is given
    assert daemon.fence_drivers("ipmi") is not given


def test_a_console_write_enqueues_no_vm_or_node_reconcile() -> None:
    """A VM's node rewrites `vms/<uuid>/console` every second while the guest writes: that
    must not reconcile the VM, nor refresh the node's domain counts, on every node."""
    daemon = NodeDaemon(parse_config(production_config(), "pvcd.yaml"))

    def enqueued(path: str) -> set[tuple[str, str]]:
        return {(controller.name, key) for watch, controller in daemon._watches
                if path.startswith(watch.prefix) and (key := watch.key_of(path)) is not None}

    uuid = "6d5a1c1e-0000-4000-8000-000000000001"
    vm_keys = enqueued(daemon.paths.vm(uuid))
    assert {name for name, _ in vm_keys} >= {"vm", "node"}
    assert {key for key in enqueued(daemon.paths.vm_status(uuid)) if key[0] != "dns"} == \
        {key for key in vm_keys if key[0] != "dns"}  # (DNS: the spec only)
    assert enqueued(daemon.paths.vm_console(uuid)) == set()
    assert "console" in [controller.name for controller in daemon.controllers]
