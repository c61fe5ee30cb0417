"""Volume clone, resize/rename, snapshot rename and rollback through the API of a lab with a
throwaway Ceph (extensions.md §2.2-§2.4). The bytes are written and read with Ceph's own `rbd`
(import, bench, export), so a clone and a rollback are judged by what the volumes hold. One lab
serves the module; each test has its own pool. (Every refusal of the spec, in process:
tests/fast/test_volume_api.py.)"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcd.lab.guest import tiny_guest_xml
from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient, ok, refused, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.ceph]

TIMEOUT = 60
MIB = 1 << 20


class Rbd:
    """`rbd` pointed at the lab's cluster."""

    def __init__(self, lab: Lab) -> None:
        info = lab._info().ceph
        assert info is not None
        self.args = ["--conf", info["conf"], "--keyring", info["keyring"]]

    def run(self, *args: str) -> bytes:
        result = subprocess.run(["rbd", *self.args, *args], capture_output=True,
                                timeout=TIMEOUT, check=False)
        assert result.returncode == 0, f"rbd {' '.join(args)}: {result.stderr!r}"
        return result.stdout

    def watchers(self, spec: str) -> list[Any]:
        return list(json.loads(self.run("status", spec, "--format", "json"))["watchers"])

    def export(self, spec: str) -> bytes:
        return self.run("export", "--no-progress", spec, "-")

    def overwrite(self, spec: str) -> None:
        """Change the volume's first 64 KiB behind pvcd's back (as a guest would)."""
        self.run("bench", "--io-type", "write", "--io-size", "4K", "--io-total", "64K",
                 "--io-pattern", "seq", spec)


@pytest.fixture(scope="module")
def volume_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabClient]]:
    lab = Lab(tmp_path_factory.mktemp("volumes") / "lab")
    info = lab.up(nodes=1, ceph=True)
    try:
        yield lab, LabClient(info)
    finally:
        lab.down()


@pytest.fixture
def api(volume_lab: tuple[Lab, LabClient]) -> LabClient:
    return volume_lab[1]


@pytest.fixture
def rbd(volume_lab: tuple[Lab, LabClient]) -> Rbd:
    return Rbd(volume_lab[0])


def call(api: LabClient, method: str, path: str, **values: Any) -> Any:
    return api.call(method, path, params=values, timeout=TIMEOUT)


@pytest.fixture
def source(api: LabClient, rbd: Rbd, tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """A pool of its own with volume `src` of known bytes (rbd import, adopted by the sync)."""
    pool = f"p{secrets.token_hex(3)}"
    ok(call(api, "POST", "/storage/ceph/pool", pool=pool, pgs=16))
    content = os.urandom(MIB) + b"pvcd" * (MIB // 4)
    image = tmp_path / "src.raw"
    image.write_bytes(content)
    rbd.run("import", "--no-progress", str(image), f"{pool}/src")
    wait_until(lambda: call(api, "GET", f"/storage/ceph/volume/{pool}/src").status_code == 200,
               timeout=TIMEOUT, interval=0.2)
    yield pool, content
    ok(call(api, "DELETE", f"/storage/ceph/pool/{pool}", yes_i_really_mean_it=1))


def test_clone_snapshot_rename_and_rollback_through_the_api(
        api: LabClient, rbd: Rbd, source: tuple[str, bytes]) -> None:
    pool, content = source
    ok(call(api, "POST", "/storage/ceph/volume/snapshot", pool=pool, volume="src",
            snapshot="s"))
    rbd.overwrite(f"{pool}/src")
    changed = rbd.export(f"{pool}/src")
    assert changed != content

    ok(call(api, "POST", f"/storage/ceph/volume/{pool}/src/clone", new_volume="now"))
    assert rbd.export(f"{pool}/now") == changed
    done = ok(call(api, "POST", f"/storage/ceph/volume/{pool}/src/clone", new_volume="then",
                   snapshot="s", wait=1))
    assert done["result"]["source"] == f"{pool}/src@s"
    assert rbd.export(f"{pool}/then") == content
    refused(call(api, "POST", f"/storage/ceph/volume/{pool}/src/clone", new_volume="then"),
            "already exists")

    ok(call(api, "PUT", f"/storage/ceph/volume/snapshot/{pool}/src/s", new_name="golden"))
    assert rbd.export(f"{pool}/src@golden") == content

    watcher = subprocess.Popen(["rbd", *rbd.args, "watch", f"{pool}/src"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: rbd.watchers(f"{pool}/src"), timeout=TIMEOUT)
        refused(call(api, "POST", f"/storage/ceph/volume/snapshot/{pool}/src/golden/rollback"),
                "is open (client.")
        assert rbd.export(f"{pool}/src") == changed
    finally:
        watcher.communicate(b"\n", timeout=10)  # `rbd watch` ends (and unwatches) on enter
    wait_until(lambda: not rbd.watchers(f"{pool}/src"), timeout=TIMEOUT)
    ok(call(api, "POST", f"/storage/ceph/snapshot/{pool}/src/golden/rollback"))  # PVC's path
    assert rbd.export(f"{pool}/src") == content
    tasks = ok(call(api, "GET", "/tasks", limit="^storage.snapshot-rollback$"))
    assert tasks and tasks[0]["state"] == "success"


def test_resize_and_rename_in_one_request(api: LabClient, rbd: Rbd,
                                          source: tuple[str, bytes]) -> None:
    pool, content = source
    refused(call(api, "PUT", f"/storage/ceph/volume/{pool}/src", size="4M", new_size="8M"),
            "different values")
    ok(call(api, "PUT", f"/storage/ceph/volume/{pool}/src", new_size="4M", new_name="big"))
    grown = rbd.export(f"{pool}/big")
    assert len(grown) == 4 * MIB and grown.startswith(content)
    assert ok(call(api, "GET", f"/storage/ceph/volume/{pool}/big"))[0]["stats"]["size"] == \
        4 * MIB
    refused(call(api, "GET", f"/storage/ceph/volume/{pool}/src"), "not found")


def test_growing_a_running_guests_volume_says_whether_the_guest_was_told(
        volume_lab: tuple[Lab, LabClient], api: LabClient, rbd: Rbd,
        source: tuple[str, bytes]) -> None:
    """The VM's node is asked to tell its guest (libvirt block resize, spec §2.3). libvirt's
    test driver cannot resize a block device, so here the answer must say the guest was NOT
    told and why, while the volume did grow. (The guest that is told: test_vms_qemu.py.)"""
    pool, _ = source
    xml = tiny_guest_xml(f"grow{secrets.token_hex(2)}", domain_type="test").replace(
        "  <devices>\n",
        "  <devices>\n    <disk type='network' device='disk'>"
        f"<source protocol='rbd' name='{pool}/src'/><target dev='vda' bus='virtio'/></disk>\n")
    name = xml.split("<name>")[1].split("</name>")[0]
    ok(call(api, "POST", "/vm", xml=xml))
    uuid = ok(call(api, "GET", f"/vm/{name}"))[0]["uuid"]
    wait_until(lambda: volume_lab[0].domains("node1").get(uuid, {}).get("state") == "running"
               and ok(call(api, "GET", f"/vm/{name}"))[0]["node"] == "node1",
               timeout=TIMEOUT, interval=0.2)
    try:
        message = ok(call(api, "PUT", f"/storage/ceph/volume/{pool}/src", size="8M"))["message"]
        assert f"VM {name} runs with it" in message and "was NOT told" in message, message
        assert "not supported" in message, message
        assert len(rbd.export(f"{pool}/src")) == 8 * MIB
    finally:
        ok(call(api, "POST", f"/vm/{name}/state", state="stop", wait=1))
        ok(call(api, "DELETE", f"/vm/{name}"))
