"""A real guest, end to end (issue 14): image file → upload → profile → `pvc vm create --wait`
→ the guest boots, cloud-init takes its host name from the metadata service, the lease shows it,
and the gateway pings the guest.

The lab is `--netns --ceph --libvirt qemu` with one node (the primary: the gateway, dnsmasq,
the metadata service and the API). The image is the lab's Debian with cloud-init, built from
Debian packages at test time and cached (`pvcd.lab.guest_image`). Everything goes through the
API (`pvcd.lab.guest_provision`, the walk-through of docs/provisioning.md) and the `pvc` CLI;
what happened is read back from the API (the lease) and from the primary's namespace (a ping).
A failure prints the guest's serial console. Waits have deadlines sized for TCG on a busy
2-core machine; nothing sleeps to guess.

Needs root, and network access to Debian's archive the first time (≈ 1 min to build the image).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from pvcd.lab import guest_provision as walk
from pvcd.lab import netns
from pvcd.lab.guest_image import build_guest_image
from pvcd.lab.lab import Lab
from pvcd.lab.linux_guest import serial_text
from tests.e2e.labclient import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.ceph, pytest.mark.needs_root,
              pytest.mark.timeout(1800)]

VM = "guest1"
# TCG: the lease with the new name ≈ 60 s after the start on a quiet 2-core machine, several
# minutes while other labs load it
BOOT_TIMEOUT = 900.0


@pytest.fixture
def guest_lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    with walk.linux_guest_lab("pvcd-e2e-gprov", memstore_bytes=3 << 30) as lab:
        yield lab


def pvc(lab: Lab, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """The `pvc` CLI as an operator runs it against the lab."""
    return subprocess.run([sys.executable, "-m", "pvcd.cli.main", "--lab", str(lab.workdir),
                           *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={k: v for k, v in os.environ.items() if not k.startswith("PVC_")})


def console_of(lab: Lab, api: walk.ProvisionApi, vm: str) -> str:
    """The guest's serial console: the API's (spec §7), else the log file its libvirtd wrote."""
    try:
        response = api.session.get(f"{api.base}/vm/{vm}/console", params={"lines": 200},
                                   timeout=10)
        if response.status_code == 200 and response.json().get("data"):
            return str(response.json()["data"])
    except (OSError, ValueError):
        pass
    logs = sorted((lab.workdir / "libvirtd").glob(f"*/log/**/{vm}*.log"))
    return "\n".join(serial_text(log) for log in logs) or "(no console log found)"


def test_a_profile_creates_a_guest_that_takes_its_name_from_the_metadata_service(
        guest_lab: Lab) -> None:
    lab = guest_lab
    info = lab._info()
    image = build_guest_image(log=print).path
    api = walk.ProvisionApi(info.api, info.token)
    plan = walk.GuestPlan()

    upload_seconds = walk.upload_image(api, plan, image)
    print(f"upload of {image.stat().st_size >> 20} MiB: {upload_seconds:.1f} s")
    walk.add_network(api, plan)
    walk.add_profile(api, plan)

    started = time.monotonic()
    created = pvc(lab, "vm", "create", VM, "--profile", plan.profile, "--wait", timeout=600)
    assert created.returncode == 0, created.stdout + created.stderr
    print(f"pvc vm create --wait: {time.monotonic() - started:.1f} s")
    try:
        lease = wait_until(lambda: walk.lease_named(api, plan), timeout=BOOT_TIMEOUT, interval=1)
        print(f"lease named {plan.hostname!r} ({lease['ip4_address']}): "
              f"{time.monotonic() - started:.1f} s after the create request")
        # the gateway (the primary's side of vmbr<vni>) reaches the guest
        primary_ns = lab.network().node_ns("node1")
        wait_until(lambda: netns.in_ns(primary_ns, "ping", "-n", "-q", "-c", "1", "-W", "1",
                                       lease["ip4_address"], check=False).returncode == 0,
                   timeout=60, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- serial console of {VM} ---\n"
                             f"{console_of(lab, api, VM)[-6000:]}") from exc
    vm = api.call("read the VM", "GET", f"/vm/{VM}").json()[0]
    assert vm["state"] == "start" and vm["profile"] == plan.profile
