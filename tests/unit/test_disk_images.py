"""What the disk writer lets reach a command line: filesystem arguments and `rbd:` names."""

from __future__ import annotations

import pytest

from pvcd.domain.errors import InvalidValue
from pvcd.drivers.disk_images import DiskImages, filesystem_arguments


def test_filesystem_arguments_are_split_and_checked() -> None:
    assert filesystem_arguments(["-L=root", "-m=0", "-F", "-q"]) == \
        ["-L", "root", "-m", "0", "-F", "-q"]
    for bad in ["-L root", "--label=x", "-L=$(reboot)", "L=x", "-L=a;b", "-L=a b", ""]:
        with pytest.raises(InvalidValue):
            filesystem_arguments([bad])


def test_rbd_filenames_take_checked_names_only() -> None:
    images = DiskImages("/etc/ceph/ceph.conf", "/etc/ceph/ceph.client.admin.keyring")
    assert images.rbd_filename("vms", "web1_sda") == (
        "rbd:vms/web1_sda:id=admin:conf=/etc/ceph/ceph.conf:"
        "keyring=/etc/ceph/ceph.client.admin.keyring")
    for pool, volume in [("vms", "a:conf=/tmp/x"), ("v/ms", "a"), ("vms", "a@b"), ("..", "a")]:
        with pytest.raises(InvalidValue):
            images.rbd_filename(pool, volume)
    with pytest.raises(InvalidValue):
        DiskImages("/etc/ceph/a:b.conf", "/k")


def test_unknown_filesystems_and_formats_are_refused_before_anything_runs() -> None:
    images = DiskImages("/c", "/k")
    with pytest.raises(InvalidValue, match="filesystem 'ntfs' is invalid"):
        images.write_filesystem("vms", "v", 1 << 20, "ntfs")
    with pytest.raises(InvalidValue, match="image format 'iso' is invalid"):
        images.convert("vms", "a", "iso", "vms", "b", 1 << 20)
