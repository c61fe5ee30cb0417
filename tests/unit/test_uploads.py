"""The pure parts of image uploads (extensions.md §2.1): what is judged before the body, what an
image's header and `qemu-img info` may say, the names of what an upload makes, the qemu-img
file name of a volume, and the session's refusal and answer. (The body's pipe and its
backpressure: tests/unit/test_upload_pipe.py; the multipart decoder:
tests/unit/test_multipart_stream.py.)
(On real Ceph, through the API: tests/e2e/test_volume_upload.py.)"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from pvcd.controllers.uploads.session import UploadSession
from pvcd.domain.errors import InvalidValue
from pvcd.domain.uploads import (
    HEADER_BYTES,
    check_header,
    check_image_info,
    plan_upload,
    temporary_volume_name,
    upload_file_size,
)
from pvcd.drivers.qemu_img import RbdAccess
from pvcd.upload_pipe import UploadBroken, UploadPipe

MIB = 1 << 20


# --- before the body ---------------------------------------------------------------------------

def test_the_expected_size_comes_from_file_size_else_content_length() -> None:
    assert upload_file_size("qcow2", 123, 456) == 123
    assert upload_file_size("qcow2", None, 456) == 456
    assert upload_file_size("raw", None, None) == 0  # raw: up to the volume's size
    with pytest.raises(InvalidValue, match="file_size is required"):
        upload_file_size("vmdk", None, None)
    with pytest.raises(InvalidValue, match="positive"):
        upload_file_size("qcow2", None, 0)


def test_a_plan_names_a_free_snapshot_and_temporary_volume() -> None:
    plan = plan_upload("p", "disk", 8 * MIB, "qcow2", MIB, {"upload_1", "golden"},
                       {"disk", "disk_upload_2"})
    assert (plan.snapshot, plan.temporary) == ("upload_3", "disk_upload_3")
    assert plan.objects == ["volume:p/disk", "volume:p/disk_upload_3"]
    assert plan.receive_limit == MIB  # the announced size
    raw = plan_upload("p", "disk", 8 * MIB, "raw", 0, set(), set())
    assert (raw.snapshot, raw.temporary, raw.receive_limit) == ("upload_1", None, 8 * MIB)
    assert raw.objects == ["volume:p/disk"]


def test_a_plan_refuses_a_bad_format_and_a_raw_image_larger_than_the_volume() -> None:
    with pytest.raises(InvalidValue, match="one of raw, qcow2"):
        plan_upload("p", "disk", MIB, "iso", MIB, set(), set())
    with pytest.raises(InvalidValue, match="does not fit"):
        plan_upload("p", "disk", MIB, "raw", MIB + 1, set(), set())
    # a qcow2 file may be larger than the volume: its virtual size is judged after
    assert plan_upload("p", "disk", MIB, "qcow2", 2 * MIB, set(), set()).file_size == 2 * MIB


def test_the_temporary_volume_name_fits_cephs_limit() -> None:
    name = temporary_volume_name("v" * 96, 12)
    assert len(name) == 96 and name.endswith("_upload_12")


# --- what the image says about itself -----------------------------------------------------

def qemu_img_create(tmp_path: Path, image_format: str, *options: str) -> bytes:
    target = tmp_path / f"image.{image_format}"
    subprocess.run(["qemu-img", "create", "-f", image_format, *options, str(target), "1M"],
                   check=True, capture_output=True, timeout=30)
    return target.read_bytes()[:HEADER_BYTES]


@pytest.mark.parametrize("image_format", ["qcow2", "qed", "vmdk", "vdi", "vpc"])
def test_images_of_one_file_pass_the_header_check(tmp_path: Path, image_format: str) -> None:
    check_header(image_format, qemu_img_create(tmp_path, image_format))


def test_images_that_name_other_files_are_refused_by_their_header(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(base), "1M"], check=True,
                   capture_output=True, timeout=30)
    with pytest.raises(InvalidValue, match="backing file"):
        check_header("qcow2", qemu_img_create(tmp_path, "qcow2", "-b", str(base), "-F",
                                              "qcow2"))
    with pytest.raises(InvalidValue, match="external data file"):
        check_header("qcow2", qemu_img_create(tmp_path, "qcow2", "-o",
                                              f"data_file={tmp_path / 'data.raw'}"))
    with pytest.raises(InvalidValue, match="backing file"):
        check_header("qed", qemu_img_create(tmp_path, "qed", "-b", str(base), "-F", "qcow2"))
    with pytest.raises(InvalidValue, match="descriptor"):
        check_header("vmdk", qemu_img_create(tmp_path, "vmdk", "-o",
                                             "subformat=monolithicFlat"))
    with pytest.raises(InvalidValue, match="not a qcow2 image"):
        check_header("qcow2", b"\0" * HEADER_BYTES)
    with pytest.raises(InvalidValue, match="not a qcow2 image"):
        check_header("qcow2", struct.pack(">4sI", b"QFI\xfb", 3))  # cut short


RBD_FILE = "json:" + json.dumps({"pool": "p", "image": "disk_upload_1", "driver": "rbd"})


def info(**fields: Any) -> dict[str, Any]:
    return {"format": "qcow2", "virtual-size": MIB, **fields}


def test_qemu_img_info_must_confirm_the_image() -> None:
    assert check_image_info("qcow2", info(), MIB, "p", "disk_upload_1") == MIB
    vmdk = info(format="vmdk", **{"format-specific": {"type": "vmdk", "data": {
        "extents": [{"filename": RBD_FILE}]}}})
    assert check_image_info("vmdk", vmdk, MIB, "p", "disk_upload_1") == MIB
    refusals = [
        (info(format="raw"), "reads the body as 'raw'"),
        (info(**{"backing-filename": "/etc/shadow"}), "backing file"),
        (info(**{"format-specific": {"data": {"data-file": "/etc/shadow"}}}), "external"),
        (info(**{"format-specific": {"data": {"extents": [
            {"filename": RBD_FILE}, {"filename": "/etc/shadow"}]}}}), "another file"),
        (info(**{"virtual-size": 2 * MIB}), "larger than the volume"),
        (info(**{"virtual-size": None}), "no valid virtual size"),
    ]
    for doc, words in refusals:
        with pytest.raises(InvalidValue, match=words):
            check_image_info("qcow2", doc, MIB, "p", "disk_upload_1")


def test_the_rbd_file_name_for_qemu_img_cannot_carry_extra_options() -> None:
    access = RbdAccess("/etc/ceph/ceph.conf", "/etc/ceph/keyring")
    assert access.filename("p", "v") == \
        "rbd:p/v:id=admin:conf=/etc/ceph/ceph.conf:keyring=/etc/ceph/keyring"
    with pytest.raises(InvalidValue):
        RbdAccess("/x:mon_host=evil", "/k").filename("p", "v")
    with pytest.raises(InvalidValue):
        access.filename("p", "v:conf=/tmp/x")


# --- the session: when to answer, and a refused body ---------------------------------------

def test_a_refused_body_fails_the_reader_and_settling_wakes_the_handler() -> None:
    async def scenario() -> None:
        session = UploadSession(asyncio.get_running_loop(), UploadPipe(capacity=4))
        assert session.pipe.write(b"ab") is None
        session.refuse("the multipart body has more than one part")
        with pytest.raises(UploadBroken, match="more than one part"):
            session.pipe.read()
        assert session.refusal == "the multipart body has more than one part"
        threading.Thread(target=session.settle).start()  # as the job's thread does
        await asyncio.wait_for(session.settled, 5)

    asyncio.run(scenario())
