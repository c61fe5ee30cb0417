"""The lab's Linux guest image: Debian with cloud-init, built at test time from Debian packages.

The end-to-end provisioning test (issue 14) boots a real guest that asks pvcd's metadata service
(169.254.169.254, spec §4) for its user-data. No prebuilt image is downloaded: `mmdebstrap`
installs a minimal Debian (`linux-image-cloud-amd64`, `cloud-init`, `ifupdown` with
`isc-dhcp-client`) from Debian's archive into a folder, this module adds the few files that make
it a pvcd guest (below), and `pvcd.lab.guest_disk` packs it into a bootable raw disk (MBR,
syslinux, ext4) without loop devices or mounts.

What the image is configured for, and why:
- cloud-init's **EC2 data source on a non-AWS platform** (`datasource_list: [Ec2]`,
  `strict_id: false`, `metadata_urls: [http://169.254.169.254]`), as spec §4 requires of guest
  images; cloud-init's own network configuration is off (the image brings up DHCP itself).
- **DHCP on the first NIC**: `net.ifnames=0` names it `eth0`; ifupdown runs `dhclient`, which
  sends the host name (`send host-name = gethostname()`, Debian's default).
- **The DHCP server learns the host name cloud-init sets**: DHCP runs before cloud-init can reach
  the metadata service, so the first request carries the image's name (`debian`). A unit ordered
  after `cloud-init.service` restarts `dhclient`, which asks again for the same address with the
  new name (`pvcd-dhcp-hostname.service`).
- **Serial console** (`console=ttyS0`): the kernel, systemd and cloud-init log there, and a
  getty offers a login. root's password is locked (no secrets in the image); put SSH keys or
  passwords in the user-data.
- An empty `/etc/machine-id`: every VM cloned from the image gets its own at first boot.

The result is cached as `<cache_dir>/debian-<suite>-cloud-<key>.raw`, where `key` hashes the
recipe (suite, packages, layout, the files above). A build writes into a temporary folder in the
cache directory and renames the image into place, under an exclusive lock, so concurrent builders
neither corrupt the cache nor build twice. Callers must not write to the cached file: boot a
copy-on-write overlay (`qemu-img create -b`) or a copy (an RBD volume).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pvcd.lab.guest_disk import DISK_TOOLS, BootFiles, DiskLayout, GuestDiskError, pack_disk

DEFAULT_CACHE_DIR = Path("/var/cache/pvcd-lab/guest-image")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
RECIPE_VERSION = 2  # bump when the build steps change what the image holds
BUILD_TIMEOUT = 900.0
GUEST_PACKAGES = (
    "linux-image-cloud-amd64", "systemd-sysv", "udev", "cloud-init", "ifupdown",
    "isc-dhcp-client", "iproute2", "iputils-ping",
)
# documentation, manual pages and translations: not needed to boot, a fifth of the size
DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*",
                 "/usr/share/info/*")
IMAGE_HOSTNAME = "debian"  # until cloud-init sets the one the user-data or metadata gives
METADATA_URL = "http://169.254.169.254"

CLOUD_CFG = f"""\
# pvcd guest image: cloud-init reads pvcd's metadata service (EC2-style, not on AWS)
datasource_list: [ Ec2 ]
datasource:
  Ec2:
    strict_id: false
    metadata_urls: [ '{METADATA_URL}' ]
    max_wait: 60
    timeout: 5
# the image brings up DHCP on eth0 itself (/etc/network/interfaces.d/eth0)
network: {{config: disabled}}
"""
INTERFACES = "auto eth0\niface eth0 inet dhcp\n"
# TCG on a busy machine is slow: with the default 90 s, udev may not have announced ttyS0 in
# time, and the serial getty (the login prompt) is given up
SYSTEMD_TIMEOUTS = """\
[Manager]
DefaultTimeoutStartSec=600s
DefaultDeviceTimeoutSec=600s
"""
DHCP_HOSTNAME_UNIT = """\
[Unit]
Description=Tell the DHCP server the host name cloud-init set (pvcd guest image)
After=cloud-init.service networking.service
ConditionPathExists=/run/dhclient.eth0.pid

[Service]
Type=oneshot
RemainAfterExit=yes
# a new dhclient asks for the same address again (INIT-REBOOT), now with the new host name
ExecStart=/bin/sh -c 'kill -KILL "$(cat /run/dhclient.eth0.pid)"; exec /sbin/dhclient -4 \
-pf /run/dhclient.eth0.pid -lf /var/lib/dhcp/dhclient.eth0.leases eth0'

[Install]
WantedBy=multi-user.target
"""
DHCP_HOSTNAME_UNIT_NAME = "pvcd-dhcp-hostname.service"


class GuestImageError(RuntimeError):
    """The guest image could not be built (the message says which step and why)."""


@dataclass(frozen=True)
class GuestRecipe:
    """What goes into the image. Its `key` names the cached file."""

    suite: str = "bookworm"
    mirror: str = DEFAULT_MIRROR
    packages: tuple[str, ...] = GUEST_PACKAGES
    layout: DiskLayout = field(default_factory=DiskLayout)

    def files(self, root_uuid: str) -> dict[str, str]:
        """The files written into the root folder after `mmdebstrap`, by path."""
        return {
            "etc/cloud/cloud.cfg.d/90_pvcd.cfg": CLOUD_CFG,
            "etc/network/interfaces.d/eth0": INTERFACES,
            "etc/hostname": IMAGE_HOSTNAME + "\n",
            "etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {IMAGE_HOSTNAME}\n"
                         "::1 localhost ip6-localhost ip6-loopback\n",
            # no fsck at boot: every boot of a fresh clone would check a clean filesystem
            "etc/fstab": f"UUID={root_uuid} / ext4 errors=remount-ro 0 0\n",
            "etc/systemd/system.conf.d/90_pvcd.conf": SYSTEMD_TIMEOUTS,
            "etc/machine-id": "",
            "etc/resolv.conf": "",
            f"etc/systemd/system/{DHCP_HOSTNAME_UNIT_NAME}": DHCP_HOSTNAME_UNIT,
        }

    def cmdline(self, root_uuid: str) -> str:
        # the last console= is /dev/console: systemd and cloud-init write to the serial port
        return (f"root=UUID={root_uuid} ro net.ifnames=0 biosdevname=0 "
                "console=tty0 console=ttyS0,115200n8")

    @property
    def key(self) -> str:
        doc = {"version": RECIPE_VERSION, "suite": self.suite, "mirror": self.mirror,
               "packages": sorted(self.packages), "layout": asdict(self.layout),
               "excludes": DPKG_EXCLUDES, "files": self.files("{uuid}"),
               "cmdline": self.cmdline("{uuid}")}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def root_uuid(self) -> str:
        """Stable per recipe: the same recipe gives the same image layout."""
        return str(uuid.UUID(hashlib.sha256(f"root-{self.key}".encode()).hexdigest()[:32]))

    def image_name(self) -> str:
        return f"debian-{self.suite}-cloud-{self.key}.raw"


@dataclass(frozen=True)
class GuestImage:
    """A built image: its file (do not write to it), and whether this call built it."""

    path: Path
    recipe: GuestRecipe
    built: bool
    seconds: float

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def build_guest_image(cache_dir: Path = DEFAULT_CACHE_DIR, recipe: GuestRecipe | None = None,
                      log: Callable[[str], None] | None = None) -> GuestImage:
    """The cached image of `recipe`, built first if the cache has none (≈ 1 min: `mmdebstrap`
    downloads ≈ 100 MB of packages). Safe to call from several processes at once."""
    recipe = recipe or GuestRecipe()
    say = log or (lambda _message: None)
    started = time.monotonic()
    cache_dir.mkdir(parents=True, exist_ok=True)
    image = cache_dir / recipe.image_name()
    if image.exists():
        return GuestImage(image, recipe, False, time.monotonic() - started)
    with open(cache_dir / f".{recipe.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder finishes first
        if image.exists():
            return GuestImage(image, recipe, False, time.monotonic() - started)
        _require_tools()
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as work_name:
            work = Path(work_name)
            root = work / "root"
            say(f"guest image: mmdebstrap {recipe.suite} ({', '.join(recipe.packages)})")
            _mmdebstrap(recipe, root)
            root_uuid = recipe.root_uuid
            _configure(root, recipe.files(root_uuid))
            boot = BootFiles(*_kernel_and_initrd(root), cmdline=recipe.cmdline(root_uuid))
            say(f"guest image: packing {recipe.layout.size_mib} MiB disk")
            partial = work / "image.raw"
            try:
                pack_disk(partial, root, boot, recipe.layout, disk_id=recipe.key[:8],
                          root_uuid=root_uuid, work=work)
            except GuestDiskError as exc:
                raise GuestImageError(str(exc)) from exc
            with open(partial, "rb+") as file:
                os.fsync(file.fileno())
            seconds = time.monotonic() - started
            (cache_dir / f"{image.name}.json").write_text(json.dumps({
                "recipe": asdict(recipe), "key": recipe.key, "root_uuid": root_uuid,
                "cmdline": boot.cmdline, "build_seconds": round(seconds, 1),
                "built": time.time()}, indent=2) + "\n")
            os.replace(partial, image)  # atomic: readers see no image or the whole one
    say(f"guest image: {image} built in {seconds:.0f} s")
    return GuestImage(image, recipe, True, seconds)


def _require_tools() -> None:
    for tool in ("mmdebstrap", "unshare", *DISK_TOOLS):
        if shutil.which(tool) is None:
            raise GuestImageError(f"{tool} not found: run scripts/setup")


def _mmdebstrap(recipe: GuestRecipe, root: Path) -> None:
    # in a mount namespace of our own: the chroot's /proc, /sys and /dev mounts cannot outlive
    # a killed build
    argv = ["unshare", "--mount", "--propagation", "private", "--",
            "mmdebstrap", "--mode=root", "--variant=minbase",
            f"--include={','.join(recipe.packages)}",
            *[f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES],
            recipe.suite, str(root), recipe.mirror]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                                check=False)
    except subprocess.TimeoutExpired as exc:
        raise GuestImageError(f"mmdebstrap took more than {BUILD_TIMEOUT:.0f} s") from exc
    if result.returncode != 0:
        raise GuestImageError(f"mmdebstrap failed ({result.returncode}): "
                              f"{result.stderr.strip()[-3000:]}")


def _configure(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.write_text(text)
        path.chmod(0o644)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / DHCP_HOSTNAME_UNIT_NAME
    link.unlink(missing_ok=True)
    link.symlink_to(f"/etc/systemd/system/{DHCP_HOSTNAME_UNIT_NAME}")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)


def _kernel_and_initrd(root: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise GuestImageError("mmdebstrap installed no kernel (/boot/vmlinuz-*)")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.exists():
        raise GuestImageError(f"no initrd for kernel {version} (/boot/initrd.img-{version})")
    return kernels[-1], initrd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pvcd.lab.guest_image",
        description="Build (or find in the cache) the lab's Debian guest image with cloud-init; "
                    "print its path.")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian archive URL")
    parser.add_argument("--suite", default="bookworm")
    args = parser.parse_args(argv)
    recipe = GuestRecipe(suite=args.suite, mirror=args.mirror)
    try:
        image = build_guest_image(args.cache_dir, recipe,
                                  log=lambda message: print(message, file=sys.stderr))
    except GuestImageError as exc:
        print(f"guest image: {exc}", file=sys.stderr)
        return 1
    print(image.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
