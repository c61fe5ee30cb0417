"""The provisioning walk-through of docs/provisioning.md, through the API, for a test and a bench.

From an image file to a profile that creates a VM booting it: a pool and a volume, the image
streamed into the volume (`POST /storage/ceph/volume/<pool>/<volume>/upload?image_format=raw`,
spec §2.1), a managed network with DHCP, system, network and storage templates, `#cloud-config`
user-data setting the host name, and a `clone` profile (spec §3). Every call is the operator's:
the spec's endpoints and values, nothing behind the API's back. `tests/e2e/test_guest_provision`
and `bench/guest_boot.py` run it; they differ in what they measure.

Uses `requests` (installed with the test extras, which the lab's users have); a refused call
raises `ProvisionStepError` with the step, the status and the API's message, so a failing test
names the first missing or broken endpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from pvcd.lab.lab import Lab

UPLOAD_TIMEOUT = 900.0
TASK_POLL = 0.5


@contextmanager
def linux_guest_lab(prefix: str, memstore_bytes: int, domain_type: str = "qemu") -> Iterator[Lab]:
    """A one-node `--netns --ceph --libvirt qemu` lab for Linux guests, in a fresh folder
    `/tmp/<prefix>-<random>` (short: libvirtd's socket paths are limited to 107 bytes), with
    OSDs of `memstore_bytes` each (images and their clones, two copies, in memory); taken down
    and removed afterwards. One node is the primary: gateway, DHCP, metadata and API."""
    workdir = Path(f"/tmp/{prefix}-{uuidlib.uuid4().hex[:6]}")
    lab = Lab(workdir)
    lab.up(nodes=1, network=True, ceph=True, libvirt="qemu", ceph_memstore_gib=memstore_bytes >> 30,
           domain_type=domain_type)
    try:
        yield lab
    finally:
        lab.down()
        shutil.rmtree(workdir, ignore_errors=True)


class ProvisionStepError(AssertionError):
    """A step of the walk-through was refused or failed (the message says which and why)."""


@dataclass(frozen=True)
class GuestPlan:
    """The objects the walk-through creates, by name."""

    pool: str = "vms"
    image_volume: str = "debian-12"
    vni: int = 100
    system_template: str = "small"
    network_template: str = "net100"
    storage_template: str = "debian"
    userdata: str = "hostname"
    profile: str = "debian"
    hostname: str = "cloudy1"  # what the user-data makes the guest call itself
    vram_mb: int = 768

    @property
    def subnet(self) -> str:
        return f"10.{self.vni % 250}.0"

    @property
    def cloud_config(self) -> str:
        return f"#cloud-config\nhostname: {self.hostname}\nfqdn: {self.hostname}.pvcd.test\n"


@dataclass(frozen=True)
class UploadAnswer:
    status: int
    doc: dict[str, Any]


class ProvisionApi:
    """The API at `base` (…/api/v1) with `token`."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.headers["X-Api-Key"] = token

    def call(self, step: str, method: str, path: str, ok: tuple[int, ...] = (200,),
             **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        response = self.session.request(method, self.base + path, **kwargs)
        if response.status_code not in ok:
            raise ProvisionStepError(f"{step}: {method} {path} answered {response.status_code}: "
                                     f"{response.text[:500]}")
        return response

    def upload(self, step: str, path: str, params: dict[str, str], file: Path) -> UploadAnswer:
        """POST `file` as the body, streamed by curl with `Expect: 100-continue`: a refusal
        before the body (spec §0.2 uploads) comes back at once instead of after the whole file
        (`requests` would send it all first, or stall against a server that stopped reading).
        The token goes to curl in a private header file, not on its command line."""
        with tempfile.TemporaryDirectory(prefix="pvcd-upload-") as work:
            headers, out = Path(work) / "headers", Path(work) / "answer"
            fd = os.open(headers, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"X-Api-Key: {self.session.headers['X-Api-Key']}\n"
                             "Content-Type: application/octet-stream\n")
            result = subprocess.run(
                ["curl", "-sS", "-X", "POST", "-T", str(file), "-H", f"@{headers}",
                 "-o", str(out), "-w", "%{http_code}", "--max-time", str(int(UPLOAD_TIMEOUT)),
                 f"{self.base}{path}?{urllib.parse.urlencode(params)}"],
                capture_output=True, text=True, timeout=UPLOAD_TIMEOUT + 30, check=False)
            text = out.read_text() if out.exists() else ""
        status = int(result.stdout or 0)
        if status not in (200, 202):
            raise ProvisionStepError(f"{step}: POST {path} answered {status or result.stderr}: "
                                     f"{text[:500]}")
        try:
            return UploadAnswer(status, dict(json.loads(text)))
        except ValueError as exc:
            raise ProvisionStepError(f"{step}: POST {path} answered {status} without JSON: "
                                     f"{text[:200]!r}") from exc

    def wait_task(self, step: str, task_id: str, timeout: float) -> dict[str, Any]:
        """Follow `GET /tasks/<id>` until it ends; its object (ProvisionStepError on failure)."""
        deadline = time.monotonic() + timeout
        while True:
            task = self.call(step, "GET", f"/tasks/{task_id}").json()
            task = task[0] if isinstance(task, list) else task
            if task["state"] == "success":
                return dict(task)
            if task["state"] == "failure":
                raise ProvisionStepError(f"{step}: task {task_id} failed: {task.get('message')}")
            if time.monotonic() > deadline:
                raise ProvisionStepError(f"{step}: task {task_id} still {task['state']} after "
                                         f"{timeout:.0f} s ({task.get('progress')})")
            time.sleep(TASK_POLL)

    def leases(self, vni: int) -> list[dict[str, Any]]:
        return list(self.call("leases", "GET", f"/network/{vni}/lease").json())


def upload_image(api: ProvisionApi, plan: GuestPlan, image: Path) -> float:
    """Create `plan`'s pool and image volume, stream `image` into it; return the upload's
    seconds (request start → task success)."""
    api.call("create the pool", "POST", "/storage/ceph/pool",
             params={"pool": plan.pool, "pgs": 16})
    api.call("create the image volume", "POST", "/storage/ceph/volume",
             params={"pool": plan.pool, "volume": plan.image_volume,
                     "size": str(image.stat().st_size)})
    started = time.monotonic()
    response = api.upload("upload the image",
                          f"/storage/ceph/volume/{plan.pool}/{plan.image_volume}/upload",
                          {"image_format": "raw"}, image)
    if response.status == 202:
        api.wait_task("upload the image", response.doc["task_id"], UPLOAD_TIMEOUT)
    return time.monotonic() - started


def add_network(api: ProvisionApi, plan: GuestPlan) -> None:
    """A managed network with DHCP: the primary is its gateway and serves its metadata."""
    net = plan.subnet
    api.call("create the managed network", "POST", "/network", data={
        "vni": plan.vni, "description": f"guests{plan.vni}", "nettype": "managed",
        "domain": "pvcd.test", "ip4_network": f"{net}.0/24", "ip4_gateway": f"{net}.1",
        "dhcp4": "yes", "dhcp4_start": f"{net}.100", "dhcp4_end": f"{net}.199"})


def add_profile(api: ProvisionApi, plan: GuestPlan) -> None:
    """System, network and storage templates, the user-data, and a `clone` profile of them."""
    api.call("create the system template", "POST", "/provisioner/template/system", data={
        "name": plan.system_template, "vcpus": 1, "vram": plan.vram_mb, "serial": "yes"})
    api.call("create the network template", "POST", "/provisioner/template/network",
             data={"name": plan.network_template})
    api.call("add the network to its template", "POST",
             f"/provisioner/template/network/{plan.network_template}/net",
             data={"vni": plan.vni})
    api.call("create the storage template", "POST", "/provisioner/template/storage",
             data={"name": plan.storage_template})
    api.call("add the disk to its template", "POST",
             f"/provisioner/template/storage/{plan.storage_template}/disk",
             data={"disk_id": "vda", "pool": plan.pool, "source_volume": plan.image_volume})
    api.call("create the user-data", "POST", "/provisioner/userdata",
             data={"name": plan.userdata, "data": plan.cloud_config})
    api.call("create the profile", "POST", "/provisioner/profile", data={
        "name": plan.profile, "profile_type": "provisioner",
        "system_template": plan.system_template, "network_template": plan.network_template,
        "storage_template": plan.storage_template, "userdata": plan.userdata,
        "script": "clone"})


def lease_named(api: ProvisionApi, plan: GuestPlan) -> dict[str, Any] | None:
    """The network's lease whose host name is the one the user-data gives, if any."""
    for lease in api.leases(plan.vni):
        if lease.get("hostname") == plan.hostname:
            return lease
    return None
