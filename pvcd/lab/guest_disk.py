"""Pack a root folder into a bootable raw disk image, without loop devices or mounts.

The lab's Linux guest (`pvcd.lab.guest_image`) must boot the way any VM the provisioner creates
boots: SeaBIOS reads the first sector of its virtio disk. Installing a boot loader usually needs
the image attached as a block device (`losetup`, `grub-install`, `extlinux` on a mounted
filesystem), which the lab machines cannot always do (no loop devices in some CI containers) and
which leaves state behind when a build is killed. Every step here writes into the image *file*
at an offset instead:

    sector 0          syslinux's `mbr.bin` (boot code, 440 bytes) + an MBR table (`sfdisk`)
    partition 1       FAT, bootable flag: `mkfs.fat --offset`, `syslinux --offset` (installs
                      ldlinux.sys through mtools), and `mcopy -i image@@offset` for the kernel,
                      the initrd and `syslinux.cfg`
    partition 2       ext4 made from the root folder: `mkfs.ext4 -d <root> -E offset=`

The image is a sparse file: only what the filesystems hold takes space. Commands are argument
lists with timeouts; every path comes from the caller (the builder's own temporary folder).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
MIB = 1 << 20
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
MBR_CODE_BYTES = 440  # the boot code; the disk signature and the partition table follow
TOOL_TIMEOUT = 300.0
DISK_TOOLS = ("sfdisk", "mkfs.fat", "syslinux", "mcopy", "mkfs.ext4")


class GuestDiskError(RuntimeError):
    """A step of packing the disk image failed (the message names the command)."""


@dataclass(frozen=True)
class DiskLayout:
    """Sizes in MiB: the whole disk and its FAT boot partition (the root gets the rest)."""

    size_mib: int = 1024
    boot_mib: int = 64
    first_mib: int = 1  # the gap before partition 1 (alignment, as fdisk leaves it)

    @property
    def boot_offset(self) -> int:
        return self.first_mib * MIB

    @property
    def root_offset(self) -> int:
        return (self.first_mib + self.boot_mib) * MIB

    @property
    def root_bytes(self) -> int:
        return self.size_mib * MIB - self.root_offset


@dataclass(frozen=True)
class BootFiles:
    """What partition 1 holds: the kernel, the initrd, and the kernel command line."""

    kernel: Path
    initrd: Path
    cmdline: str


def syslinux_cfg(cmdline: str) -> str:
    """Boot the one entry at once; syslinux's own prompt goes to the serial port too."""
    return ("SERIAL 0 115200\n"
            "PROMPT 0\n"
            "TIMEOUT 0\n"
            "DEFAULT linux\n"
            "LABEL linux\n"
            "  KERNEL /vmlinuz\n"
            "  INITRD /initrd.img\n"
            f"  APPEND {cmdline}\n")


def pack_disk(image: Path, root: Path, boot: BootFiles, layout: DiskLayout, *,
              disk_id: str, root_uuid: str, work: Path) -> None:
    """Write a bootable disk image to `image` (created, sparse): the MBR, a FAT partition with
    syslinux, the kernel and initrd of `boot`, and an ext4 root filesystem of `root` with UUID
    `root_uuid`. `disk_id`: the MBR signature (8 hex digits). `work`: a folder for small files."""
    with open(image, "wb") as file:
        file.truncate(layout.size_mib * MIB)
    boot_sectors = layout.boot_mib * MIB // SECTOR
    table = ("label: dos\n"
             f"label-id: 0x{disk_id}\n"
             f"start={layout.boot_offset // SECTOR}, size={boot_sectors}, type=c, bootable\n"
             f"start={layout.root_offset // SECTOR}, type=83\n")
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", str(image)],
         stdin=table)
    with open(image, "r+b") as file:  # boot code only: the table and signature stay
        file.write(SYSLINUX_MBR.read_bytes()[:MBR_CODE_BYTES])
    _run(["mkfs.fat", "-F", "16", "-n", "BOOT", f"--offset={layout.boot_offset // SECTOR}",
          str(image), str(layout.boot_mib * MIB // 1024)])
    _run(["syslinux", "--install", "--offset", str(layout.boot_offset), str(image)])
    cfg = work / "syslinux.cfg"
    cfg.write_text(syslinux_cfg(boot.cmdline))
    fat = f"{image}@@{layout.boot_offset}"
    for source, name in ((boot.kernel, "vmlinuz"), (boot.initrd, "initrd.img"),
                         (cfg, "syslinux.cfg")):
        _run(["mcopy", "-o", "-i", fat, str(source), f"::/{name}"])
    _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid, "-d", str(root),
          "-E", f"offset={layout.root_offset},nodiscard", "-b", "4096",
          str(image), str(layout.root_bytes // 4096)])


def _run(argv: list[str], stdin: str | None = None) -> None:
    try:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                timeout=TOOL_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise GuestDiskError(f"{argv[0]} not found: run scripts/setup") from exc
    if result.returncode != 0:
        raise GuestDiskError(f"{' '.join(argv)} failed ({result.returncode}): "
                             f"{(result.stderr or result.stdout).strip()[-2000:]}")
