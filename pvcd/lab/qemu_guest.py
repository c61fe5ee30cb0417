"""The QEMU lab's tiny guest: a multiboot kernel and the domain XML that boots it.

The kernel (`guest_kernel/kernel.s`, ~200 lines of assembly) prints "pvcd-guest: up" on its
serial port, stores its boot TSC at `GUEST_STAMP_ADDRESS`, and sleeps in `hlt`, so an idle guest
costs no CPU. The ACPI power button powers it off, so a graceful `shutdown()` completes in
milliseconds. QEMU's own multiboot loader boots it with TCG (`<domain type='qemu'>`) in about
0.2 s, without a disk, a BIOS boot or KVM.

The kernel is built from source at run time with binutils (`as`, `ld`) into a folder the caller
chooses, named by the hash of the sources, so a lab builds it once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import uuid as uuidlib
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

SOURCE_DIR = Path(__file__).parent / "guest_kernel"
SOURCES = ("kernel.s", "kernel.ld")
BUILD_TIMEOUT = 30.0

# Physical address of the kernel's `boot_stamp` (kernel.ld): "PVCD", then "PVPU" once booted,
# then the TSC at boot (two 32-bit words). Guest memory after a live migration still holds the
# source's value; a guest booted afresh would hold a new one.
GUEST_STAMP_ADDRESS = 0x100010
GUEST_STAMP_MAGIC = (0x50564344, 0x55505650)
GUEST_SERIAL_UP = "pvcd-guest: up"


# What every lab guest shares: ACPI (graceful shutdown is the power button), a UTC clock, and
# what a power-off, reboot or crash does
LAB_DOMAIN_BEHAVIOUR = """  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
"""
QEMU_EMULATOR = "/usr/bin/qemu-system-x86_64"
# every lab node's console log directory (the default `drivers.libvirt.console_log_directory`;
# each node's own, through the mount namespaces of its libvirtd and its daemon)
LAB_CONSOLE_LOG_DIRECTORY = Path("/var/log/libvirt/pvcd")


def guest_console_log(name: str) -> Path:
    """Where a lab guest logs its serial console, as a generated domain does (`<name>.log`
    in the console log directory): what `GET /vm/<vm>/console` shows."""
    return LAB_CONSOLE_LOG_DIRECTORY / f"{name}.log"


class GuestBuildError(RuntimeError):
    """The guest kernel could not be assembled or linked."""


def build_guest_kernel(dest_dir: Path) -> Path:
    """Build the guest kernel into `dest_dir` (once per source version); return its path."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes() + b"\0")
    kernel = dest_dir / f"pvcd-guest-{digest.hexdigest()[:16]}.elf"
    if kernel.exists():
        return kernel
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".build-") as build:
        obj = Path(build) / "kernel.o"
        elf = Path(build) / "kernel.elf"
        _run(["as", "--32", "-o", str(obj), str(SOURCE_DIR / "kernel.s")])
        _run(["ld", "-m", "elf_i386", "-T", str(SOURCE_DIR / "kernel.ld"), "--build-id=none",
              "--no-warn-rwx-segments", "-o", str(elf), str(obj)])
        elf.chmod(0o644)
        os.replace(elf, kernel)  # atomic: concurrent builders each produce the same file
    return kernel


def _run(argv: list[str]) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                                check=False)
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{argv[0]} not found: install binutils") from exc
    if result.returncode != 0:
        raise GuestBuildError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def qemu_guest_xml(
    name: str,
    uuid: str | None = None,
    memory_mib: int = 64,
    vcpus: int = 1,
    *,
    kernel: Path,
    serial_log: Path | None = None,
    console_log: Path | None = None,
    with_uuid: bool = True,
) -> str:
    """Domain XML for the tiny guest: TCG, `pc` machine, kernel booted directly, no disk, no
    network, a serial console (a pty, or appended to `serial_log`; a pty logged by libvirt to
    `console_log`, as generated domains are), no `<cpu mode=...>` (host-model/passthrough crash
    QEMU in a nested VM). `uuid` None: a random one; `with_uuid=False`: none at all (a
    template: whoever defines it assigns one)."""
    if console_log is not None:
        serial = (f"<serial type='pty'><log file={quoteattr(str(console_log))} append='on'/>"
                  "<target port='0'/></serial>")
        console = "<console type='pty'><target type='serial' port='0'/></console>"
    elif serial_log is not None:
        serial = (f"<serial type='file'><source path={quoteattr(str(serial_log))} "
                  "append='on'/><target port='0'/></serial>")
        console = (f"<console type='file'><source path={quoteattr(str(serial_log))} "
                   "append='on'/><target type='serial' port='0'/></console>")
    else:
        serial = "<serial type='pty'><target port='0'/></serial>"
        console = "<console type='pty'><target type='serial' port='0'/></console>"
    uuid_line = f"  <uuid>{uuid or uuidlib.uuid4()}</uuid>\n" if with_uuid else ""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
{uuid_line}  <memory unit='MiB'>{int(memory_mib)}</memory>
  <vcpu>{int(vcpus)}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(kernel))}</kernel>
  </os>
{LAB_DOMAIN_BEHAVIOUR}  <devices>
    <emulator>{QEMU_EMULATOR}</emulator>
    {serial}
    {console}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def read_boot_stamp(domain: Any) -> int | None:
    """The guest's boot TSC read from its memory through QEMU's monitor (a `libvirt.virDomain`
    of a running guest); None if the kernel has not booted. Equal before and after a live
    migration: the memory moved, the guest did not boot again."""
    import libvirt_qemu

    out = libvirt_qemu.qemuMonitorCommand(
        domain, f"xp /4wx {GUEST_STAMP_ADDRESS:#x}",
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    words = [int(word, 16) for word in out.split(":", 1)[1].split()]
    if tuple(words[:2]) != GUEST_STAMP_MAGIC:
        return None
    return words[2] | words[3] << 32
