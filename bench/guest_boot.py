"""Create request → a real guest's DHCP lease, on a `--netns --ceph --libvirt qemu` lab.

Issue 14's number: from `POST /provisioner/create` (a `clone` profile of the lab's 1 GiB Debian
cloud image, `pvcd.lab.guest_image`) to the guest's lease on its managed network: ≤ 90 s under
TCG, faster under KVM where it works. It first tries whether the image boots under this
machine's KVM (`kvm_boots_linux`: QEMU straight on an overlay) and uses KVM if so, else TCG, and
prints which. It prints the task's time, the first lease (the image's own host name), and the
lease under the name the user-data gives (after cloud-init has read the metadata service).

    .venv/bin/python -m bench.guest_boot [--accel auto|kvm|tcg]

Root; the image is built on first use (≈ 1 min, Debian's archive). Not run by CI.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from pvcd.lab.guest_image import build_guest_image
from pvcd.lab.guest_provision import (
    GuestPlan,
    ProvisionApi,
    add_network,
    add_profile,
    lease_named,
    linux_guest_lab,
    upload_image,
)
from pvcd.lab.linux_guest import kvm_boots_linux

BOOT_TIMEOUT = 900.0
VM = "bench1"


def wait_for(what: str, predicate: Any, started: float, timeout: float) -> tuple[Any, float]:
    """Poll `predicate` each 0.2 s until truthy; its value and the seconds since `started`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value, time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def run(accel: str) -> None:
    image = build_guest_image(log=print)
    print(f"image: {image.path} ({image.size >> 20} MiB virtual; "
          f"{'built' if image.built else 'cached'} in {image.seconds:.1f} s)")
    if accel == "auto":
        probe_started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="pvcd-kvm-probe-") as probe:
            accel = "kvm" if kvm_boots_linux(image.path, Path(probe)) else "tcg"
        print(f"KVM probe: {'boots' if accel == 'kvm' else 'no Linux boot'} "
              f"({time.monotonic() - probe_started:.1f} s) -> {accel.upper()}")
    started = time.monotonic()
    with linux_guest_lab("pvcd-bgb", memstore_bytes=3 << 30,
                         domain_type="kvm" if accel == "kvm" else "qemu") as lab:
        print(f"lab up: {time.monotonic() - started:.1f} s")
        info = lab._info()
        api = ProvisionApi(info.api, info.token)
        plan = GuestPlan()
        seconds = upload_image(api, plan, image.path)
        print(f"upload: {seconds:.1f} s ({image.size / seconds / 1e6:.0f} MB/s)")
        add_network(api, plan)
        add_profile(api, plan)

        started = time.monotonic()
        response = api.call("create", "POST", "/provisioner/create", ok=(200, 202),
                            data={"name": VM, "profile": plan.profile})
        task = api.wait_task("create", response.json()["task_id"], BOOT_TIMEOUT)
        print(f"create task success: {time.monotonic() - started:.1f} s")
        macs = set((task.get("result") or {}).get("macs", []))
        lease, first = wait_for("the guest's lease", lambda: next(
            (lease for lease in api.leases(plan.vni) if lease["mac_address"] in macs), None),
            started, BOOT_TIMEOUT)
        print(f"create -> first lease ({lease['hostname']!r}, {lease['ip4_address']}): "
              f"{first:.1f} s [{accel.upper()}; target <= 90 s under TCG]")
        _, named = wait_for("the lease with the user-data's host name",
                            lambda: lease_named(api, plan), started, BOOT_TIMEOUT)
        print(f"create -> lease named {plan.hostname!r} (cloud-init read the metadata): "
              f"{named:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    args = parser.parse_args()
    run(args.accel)


if __name__ == "__main__":
    main()
