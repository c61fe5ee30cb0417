"""The guest image's recipe and disk packing, without building Debian or booting anything.

`pack_disk` writes a bootable disk into a file at offsets only (pvcd.lab.guest_disk); this packs
a tiny root folder and reads the result back with independent tools: the MBR table (`sfdisk`),
the boot code (syslinux's `mbr.bin`), the FAT partition's files (`mdir` through mtools) and the
ext4 root's files (`debugfs` with an offset). The recipe's key names the cache entry: it must
change with what goes into the image. The Linux guest's domain XML must be one `POST /vm`
accepts (pvcd.vmxml), with the RBD disk's `<auth>` and monitors as the provisioner writes them.
The boot itself: tests/e2e/test_guest_boot.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pvcd.lab.guest_disk import (
    DISK_TOOLS,
    MBR_CODE_BYTES,
    SYSLINUX_MBR,
    BootFiles,
    DiskLayout,
    pack_disk,
)
from pvcd.lab.guest_image import CLOUD_CFG, GuestRecipe
from pvcd.lab.libvirt_ceph import secret_xml
from pvcd.lab.linux_guest import BootProgress, linux_guest_xml, rbd_disk
from pvcd.vmxml import parse_domain_xml

ROOT_UUID = "0b5a3c5e-7f3a-4a86-9d3a-2f54b1f0c001"


def test_the_recipe_key_follows_what_goes_into_the_image() -> None:
    recipe = GuestRecipe()
    assert recipe.key == GuestRecipe().key and len(recipe.key) == 16
    assert GuestRecipe(packages=(*recipe.packages, "vim")).key != recipe.key
    assert GuestRecipe(suite="trixie").key != recipe.key
    assert GuestRecipe(layout=DiskLayout(size_mib=2048)).key != recipe.key
    assert recipe.image_name() == f"debian-bookworm-cloud-{recipe.key}.raw"
    files = recipe.files(ROOT_UUID)
    assert files["etc/cloud/cloud.cfg.d/90_pvcd.cfg"] == CLOUD_CFG
    assert "datasource_list: [ Ec2 ]" in CLOUD_CFG and "strict_id: false" in CLOUD_CFG
    assert "http://169.254.169.254" in CLOUD_CFG
    assert files["etc/machine-id"] == ""
    cmdline = recipe.cmdline(ROOT_UUID)
    # the last console= is /dev/console: systemd and cloud-init write to the serial port
    assert cmdline.split()[-1].startswith("console=ttyS0") and f"root=UUID={ROOT_UUID}" in cmdline


@pytest.mark.skipif(any(shutil.which(t) is None for t in (*DISK_TOOLS, "mdir", "debugfs")) or
                    not SYSLINUX_MBR.exists(), reason="disk tools missing: run scripts/setup")
def test_pack_disk_writes_a_bootable_mbr_disk_without_mounting_anything(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("packed\n")
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"kernel" * 1000)
    initrd.write_bytes(b"initrd" * 1000)
    layout = DiskLayout(size_mib=64, boot_mib=16)
    image = tmp_path / "disk.raw"
    pack_disk(image, root, BootFiles(kernel, initrd, "root=UUID=x console=ttyS0"), layout,
              disk_id="1234abcd", root_uuid=ROOT_UUID, work=tmp_path)

    assert image.stat().st_size == 64 << 20
    assert image.stat().st_blocks * 512 < 16 << 20  # sparse: only what the filesystems hold
    table = json.loads(subprocess.run(["sfdisk", "-J", str(image)], capture_output=True,
                                      text=True, check=True, timeout=30).stdout)["partitiontable"]
    assert table["label"] == "dos" and table["id"] == "0x1234abcd"
    boot, rootfs = table["partitions"]
    assert boot["start"] * 512 == layout.boot_offset and boot.get("bootable") is True
    assert boot["type"] == "c" and rootfs["start"] * 512 == layout.root_offset
    assert image.read_bytes()[:MBR_CODE_BYTES] == SYSLINUX_MBR.read_bytes()[:MBR_CODE_BYTES]

    listing = subprocess.run(["mdir", "-a", "-b", "-i", f"{image}@@{layout.boot_offset}", "::/"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    names = {line.rsplit("/", 1)[-1].lower() for line in listing.split()}
    assert {"vmlinuz", "initrd.img", "syslinux.cfg", "ldlinux.sys", "ldlinux.c32"} <= names
    cfg = subprocess.run(["mtype", "-i", f"{image}@@{layout.boot_offset}", "::/syslinux.cfg"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert "APPEND root=UUID=x console=ttyS0" in cfg and "SERIAL 0 115200" in cfg

    read = subprocess.run(["debugfs", "-R", "cat /etc/hostname",
                           f"{image}?offset={layout.root_offset}"],
                          capture_output=True, text=True, check=True, timeout=30)
    assert read.stdout == "packed\n"
    uuid = subprocess.run(["debugfs", "-R", "stats", f"{image}?offset={layout.root_offset}"],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    assert ROOT_UUID in uuid


def test_the_guest_xml_is_one_post_vm_accepts_with_its_rbd_auth() -> None:
    disk = rbd_disk("vms", "guest1_vda", [("10.200.0.250", 40123)], "libvirt",
                    "15ff2079-b3a5-43d7-a6e8-9c85f9ade7d6")
    xml = linux_guest_xml("guest1", disk, bridge="vmbr100", mac="52:54:00:12:34:56",
                          serial_log=Path("/tmp/guest1.serial"))
    domain = parse_domain_xml(xml)
    assert [(d.type, d.protocol, d.name, d.dev) for d in domain.disks] == \
        [("network", "rbd", "vms/guest1_vda", "vda")]
    assert [(i.mac, i.source, i.model) for i in domain.networks] == \
        [("52:54:00:12:34:56", "vmbr100", "virtio")]
    auth = ET.fromstring(xml).find("devices/disk/auth")
    assert auth is not None and auth.get("username") == "libvirt"
    secret = auth.find("secret")
    assert secret is not None and secret.attrib == {
        "type": "ceph", "uuid": "15ff2079-b3a5-43d7-a6e8-9c85f9ade7d6"}
    host = ET.fromstring(xml).find("devices/disk/source/host")
    assert host is not None and host.attrib == {"name": "10.200.0.250", "port": "40123"}
    assert "<usage type='ceph'>" in secret_xml("15ff2079-b3a5-43d7-a6e8-9c85f9ade7d6", "libvirt")


def test_boot_progress_reads_the_serial_console() -> None:
    assert BootProgress.of("") == BootProgress(False, False, False)
    text = ("[    0.000000] Linux version 6.1.0\nWelcome to Debian\n"
            "cloudy1 login: [  128.1] cloud-init[357]: Cloud-init v. 22.4.2 finished at ...\n")
    assert BootProgress.of(text) == BootProgress(True, True, True)
