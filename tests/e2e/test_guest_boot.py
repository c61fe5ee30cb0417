"""The lab's Linux guest image boots in a `--netns --ceph --libvirt qemu` lab, from a file and
from an RBD volume, and gets a DHCP lease on a managed network.

What this proves, piece by piece, for the end-to-end provisioning test (test_guest_provision):
the image built from Debian packages (`pvcd.lab.guest_image`) boots under TCG through SeaBIOS,
syslinux and its virtio disk; each node's libvirtd runs in the node's network namespace, so the
guest's NIC joins the node's `vmbr<vni>` and the primary's dnsmasq leases it an address; the
primary (the gateway) pings it; QEMU opens an RBD disk on the lab's Ceph as `client.libvirt`
through the libvirt secret the lab defined (`pvcd.lab.libvirt_ceph`), with the monitors on the
underlay. The VMs are defined with hand-written XML through `POST /vm` (not the provisioner). The
guests print cloud-init's output on the serial console; the metadata service is another part's
(test_guest_provision checks what cloud-init does with it).

Needs root, network access to Debian's archive the first time (the image is cached in
/var/cache/pvcd-lab/guest-image), and a few minutes: each guest boots in ≈ 20-60 s under TCG.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvcd.lab import netns
from pvcd.lab.ceph import ThrowawayCeph
from pvcd.lab.guest_image import build_guest_image
from pvcd.lab.guest_provision import GuestPlan, ProvisionApi, add_network, linux_guest_lab
from pvcd.lab.lab import Lab
from pvcd.lab.libvirt_ceph import LIBVIRT_CEPH_USER
from pvcd.lab.linux_guest import (
    boot_progress,
    file_disk,
    linux_guest_xml,
    overlay,
    rbd_disk,
    serial_text,
)
from pvcd.lab.netns import SERVICE_IP
from tests.e2e.labclient import LabClient, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.ceph, pytest.mark.needs_root,
              pytest.mark.timeout(1800)]

VNI = 100
METADATA_ADDRESS = "169.254.169.254"
# TCG: ≈ 35 s on a quiet 2-core machine, several minutes when other labs load it
LEASE_TIMEOUT = 600.0
CLOUD_INIT_INIT = re.compile(r"Cloud-init v\. \S+ running 'init' ")


@pytest.fixture(scope="module")
def guest_lab() -> Iterator[tuple[Lab, LabClient, Path]]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    image = build_guest_image(log=print).path
    with linux_guest_lab("pvcd-e2e-gboot", memstore_bytes=2 << 30) as lab:
        info = lab._info()
        add_network(ProvisionApi(info.api, info.token), GuestPlan(vni=VNI))
        api = LabClient(info)
        wait_until(lambda: f"vmbr{VNI}" in netns.links(lab.network().node_ns("node1")),
                   timeout=10)
        yield lab, api, image


# A stand-in for pvcd's metadata service (spec §4): the EC2 paths cloud-init reads, any version
STAND_IN_METADATA = """
import http.server, sys
meta = {"instance-id": sys.argv[1], "local-hostname": sys.argv[2], "hostname": sys.argv[2]}
userdata = sys.argv[3].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        parts = self.path.strip("/").split("/")
        body = None
        if len(parts) == 2 and parts[1] == "user-data":
            body = userdata
        elif len(parts) == 2 and parts[1] == "meta-data":
            body = "\\n".join(meta).encode()
        elif len(parts) == 3 and parts[1] == "meta-data" and parts[2] in meta:
            body = meta[parts[2]].encode()
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_PUT(self):
        self.send_error(404)
http.server.ThreadingHTTPServer(("169.254.169.254", 80), Handler).serve_forever()
"""


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def lease_of(api: LabClient, mac: str) -> dict[str, Any] | None:
    for lease in ok(api.get(f"/network/{VNI}/lease")):
        if lease["mac_address"] == mac:
            return dict(lease)
    return None


def boot_and_check(lab: Lab, api: LabClient, name: str, disk: str,
                   hostname: str | None = None) -> dict[str, float]:
    """Define and start a guest on `disk`; wait for its lease, cloud-init's output and a ping
    from the primary, and with `hostname`, for its lease under that name and the login prompt;
    return the seconds from the define to each. On failure, the assertion carries the end of the
    guest's serial console."""
    mac = "52:54:00:" + ":".join(f"{byte:02x}" for byte in os.urandom(3))
    serial = lab.workdir / f"{name}.serial"
    xml = linux_guest_xml(name, disk, bridge=f"vmbr{VNI}", mac=mac, serial_log=serial)
    started = time.monotonic()
    ok(api.post("/vm", data={"xml": xml, "node": "node1"}))
    times: dict[str, float] = {}
    try:
        lease = wait_until(lambda: lease_of(api, mac), timeout=LEASE_TIMEOUT, interval=0.5)
        times["lease"] = time.monotonic() - started
        assert boot_progress(serial).kernel
        wait_until(lambda: CLOUD_INIT_INIT.search(serial_text(serial)), timeout=300,
                   interval=0.5)
        times["cloud-init"] = time.monotonic() - started
        node_ns = lab.network().node_ns("node1")
        wait_until(lambda: netns.in_ns(node_ns, "ping", "-n", "-q", "-c", "1", "-W", "1",
                                       lease["ip4_address"], check=False).returncode == 0,
                   timeout=30, interval=0.2)
        times["ping"] = time.monotonic() - started
        if hostname is not None:
            wait_until(lambda: (lease_of(api, mac) or {}).get("hostname") == hostname,
                       timeout=LEASE_TIMEOUT, interval=0.5)
            times["lease named " + hostname] = time.monotonic() - started
            # with metadata answering, cloud-init's init stage ends at once: the getty follows
            wait_until(lambda: boot_progress(serial).login, timeout=LEASE_TIMEOUT, interval=0.5)
            times["login prompt"] = time.monotonic() - started
    except AssertionError as exc:
        tail = "\n".join(serial_text(serial).splitlines()[-60:])
        raise AssertionError(f"{exc}\n--- serial console of {name} (last lines) ---\n{tail}") \
            from exc
    print(f"{name}: " + ", ".join(f"{what} after {seconds:.1f} s"
                                  for what, seconds in times.items()))
    ok(api.post(f"/vm/{name}/state", data={"state": "stop"}))
    return times


def test_the_image_boots_from_a_file_and_gets_a_lease(
        guest_lab: tuple[Lab, LabClient, Path]) -> None:
    lab, api, image = guest_lab
    disk = overlay(image, lab.workdir / "fileguest.qcow2")
    boot_and_check(lab, api, "fileguest", file_disk(disk))
    # the cached image is what it was: the guest wrote to its overlay only
    assert build_guest_image().path == image and not build_guest_image().built


def test_the_image_boots_from_an_rbd_volume_through_the_libvirt_secret(
        guest_lab: tuple[Lab, LabClient, Path]) -> None:
    lab, api, image = guest_lab
    info = lab._info()
    assert info.ceph is not None and info.qemu is not None
    config = yaml.safe_load(Path(info.node("node1").config).read_text())
    secret_uuid = info.qemu["ceph_secret_uuid"]
    # what the provisioner reads to write `<auth>` and the domain type
    assert config["drivers"]["ceph"]["libvirt_user"] == LIBVIRT_CEPH_USER
    assert config["drivers"]["ceph"]["libvirt_secret_uuid"] == secret_uuid
    assert config["drivers"]["libvirt"]["domain_type"] == "qemu"

    ok(api.post("/storage/ceph/pool", params={"pool": "vms", "pgs": 16}))
    ceph = ThrowawayCeph.load(info.ceph["workdir"])
    started = time.monotonic()
    subprocess.run(ceph.in_netns(["rbd", *ceph.cluster_args, "import", str(image),
                                  "vms/rbdguest"]), check=True, capture_output=True, timeout=300)
    print(f"rbd import of the image: {time.monotonic() - started:.1f} s")
    assert ceph.ports is not None
    disk = rbd_disk("vms", "rbdguest", [(SERVICE_IP, ceph.ports.mon_v1)], LIBVIRT_CEPH_USER,
                    secret_uuid)
    boot_and_check(lab, api, "rbdguest", disk)


def test_cloud_init_names_the_guest_from_ec2_metadata_and_the_lease_follows(
        guest_lab: tuple[Lab, LabClient, Path]) -> None:
    lab, api, image = guest_lab
    node_ns = lab.network().node_ns("node1")
    try:  # pvcd's own service puts the address on the primary's loopback soon after a network
        wait_until(lambda: METADATA_ADDRESS in netns.run("ip", "-n", node_ns, "addr", "show",
                                                         "dev", "lo").stdout, timeout=10)
        pytest.skip("pvcd's metadata service answers in this lab: test_guest_provision shows "
                    "the image using it")
    except AssertionError:
        pass  # no metadata service here: the stand-in takes its place
    netns.run("ip", "-n", node_ns, "addr", "add", f"{METADATA_ADDRESS}/32", "dev", "lo")
    server = subprocess.Popen(
        ["ip", "netns", "exec", node_ns, sys.executable, "-c", STAND_IN_METADATA,
         str(uuidlib.uuid4()), "mdguest", "#cloud-config\nhostname: named-by-userdata\n"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        disk = overlay(image, lab.workdir / "mdguest.qcow2")
        boot_and_check(lab, api, "mdguest", file_disk(disk), hostname="named-by-userdata")
        serial = serial_text(lab.workdir / "mdguest.serial")
        assert "Datasource DataSourceEc2" in serial or "DataSourceEc2" in serial, serial[-3000:]
    finally:
        server.kill()
        server.wait(timeout=10)
