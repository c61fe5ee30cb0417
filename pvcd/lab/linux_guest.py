"""Booting the lab's Linux guest image (`pvcd.lab.guest_image`) by hand, and reading its console.

The provisioner generates its VMs' XML itself (spec §3.9). This module writes the same kind of
domain for tests and benchmarks that boot the image without the provisioner: one virtio disk
(a copy-on-write overlay of the cached image file, or an RBD volume with the lab's cephx user and
libvirt secret), one virtio NIC on a client network's bridge `vmbr<vni>`, and a serial console
appended to a file, from which `boot_progress` reads how far the guest got.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from pvcd.lab.qemu_guest import LAB_DOMAIN_BEHAVIOUR, QEMU_EMULATOR

TOOL_TIMEOUT = 60.0
SYSTEMD_WELCOME = "Welcome to"  # systemd's banner: the kernel booted and switched to the root
LOGIN_PROMPT = re.compile(r"^\S+ login: ", re.MULTILINE)
KERNEL_BANNER = "Linux version"
CLOUD_INIT_FINISHED = re.compile(r"Cloud-init v\. \S+ finished")


def overlay(base: Path, path: Path) -> Path:
    """A qcow2 file at `path` whose reads fall through to the raw image `base`; the guest writes
    only to it, so the cached image stays as built."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(path)], check=True, capture_output=True, timeout=TOOL_TIMEOUT)
    return path


def file_disk(path: Path, image_format: str = "qcow2", dev: str = "vda") -> str:
    return (f"<disk type='file' device='disk'>"
            f"<driver name='qemu' type={quoteattr(image_format)}/>"
            f"<source file={quoteattr(str(path))}/>"
            f"<target dev={quoteattr(dev)} bus='virtio'/></disk>")


def rbd_disk(pool: str, volume: str, monitors: list[tuple[str, int]], user: str,
             secret_uuid: str, dev: str = "vda") -> str:
    """An RBD volume as libvirt's network disk, as spec §3.9 generates it (raw, `cache='none'`,
    `discard='unmap'`, cephx `<auth>` through a libvirt secret)."""
    hosts = "".join(f"<host name={quoteattr(host)} port='{int(port)}'/>" for host, port in monitors)
    return (f"<disk type='network' device='disk'>"
            f"<driver name='qemu' type='raw' cache='none' discard='unmap'/>"
            f"<auth username={quoteattr(user)}>"
            f"<secret type='ceph' uuid={quoteattr(secret_uuid)}/></auth>"
            f"<source protocol='rbd' name={quoteattr(f'{pool}/{volume}')}>{hosts}</source>"
            f"<target dev={quoteattr(dev)} bus='virtio'/></disk>")


def linux_guest_xml(name: str, disk: str, *, bridge: str, mac: str, serial_log: Path,
                    memory_mib: int = 768, vcpus: int = 1, domain_type: str = "qemu",
                    uuid: str | None = None) -> str:
    """A guest that boots from `disk` through SeaBIOS (the image's MBR and syslinux), with one
    virtio NIC on `bridge`, its serial console appended to `serial_log`, and a virtio RNG (the
    kernel's entropy would otherwise take minutes under TCG). No `<cpu mode=...>`
    (host-model/passthrough crash QEMU in the nested lab VM)."""
    log = quoteattr(str(serial_log))
    return f"""<domain type={quoteattr(domain_type)}>
  <name>{escape(name)}</name>
  <uuid>{escape(uuid or str(uuidlib.uuid4()))}</uuid>
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <vcpu>{int(vcpus)}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
{LAB_DOMAIN_BEHAVIOUR}  <devices>
    <emulator>{QEMU_EMULATOR}</emulator>
    {disk}
    <interface type='bridge'><mac address={quoteattr(mac)}/><source bridge={quoteattr(bridge)}/>
      <model type='virtio'/></interface>
    <serial type='file'><source path={log} append='on'/><target port='0'/></serial>
    <console type='file'><source path={log} append='on'/><target type='serial' port='0'/></console>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@dataclass(frozen=True)
class BootProgress:
    """How far a guest got, from its serial console."""

    kernel: bool  # the kernel printed its banner
    login: bool  # a getty prints a login prompt (multi-user, after cloud-init's init stage)
    cloud_init_done: bool  # cloud-init's final stage finished

    @classmethod
    def of(cls, text: str) -> BootProgress:
        return cls(KERNEL_BANNER in text, bool(LOGIN_PROMPT.search(text)),
                   bool(CLOUD_INIT_FINISHED.search(text)))


def serial_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def boot_progress(path: Path) -> BootProgress:
    return BootProgress.of(serial_text(path))


def kvm_boots_linux(image: Path, workdir: Path, timeout: float = 60.0) -> bool:
    """Whether the image's kernel boots under KVM here, up to systemd's banner, within
    `timeout`: on some nested machines a Linux guest under KVM spins without a line of output
    (platform notes), while TCG works everywhere. Runs QEMU directly on an overlay (no libvirt,
    no network) and kills it afterwards."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    workdir.mkdir(parents=True, exist_ok=True)
    disk = overlay(image, workdir / "kvm-probe.qcow2")
    serial = workdir / "kvm-probe.serial"
    serial.unlink(missing_ok=True)
    process = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "pc,accel=kvm", "-m", "512", "-display", "none",
         "-monitor", "none", "-nic", "none", "-serial", f"file:{serial}",
         "-drive", f"file={disk},if=virtio,format=qcow2"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if SYSTEMD_WELCOME in serial_text(serial):
                return True
            time.sleep(0.5)
        return False
    finally:
        process.kill()
        process.wait(timeout=10)
        disk.unlink(missing_ok=True)
