"""Image uploads into volumes (extensions.md §2.1) through the API of a lab with a throwaway Ceph.

Images are made at test time from random bytes (`qemu-img convert`), sent through the API (or
the `pvc` CLI), and judged by what the RBD volume holds afterwards (`rbd export`): a converted
image must read back as its raw form, bit for bit, and every failure must leave the volume as it
was, with no `@upload_` snapshot and no `_upload_` volume behind. Uploads that must stay open
(cut off, busy) are sent over a plain socket, part by part. One lab serves the module; each test
has its own pool."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from pvcd.lab.lab import Lab
from tests.e2e import test_volume_copies as copies
from tests.e2e.labclient import LabClient, wait_until
from tests.e2e.test_volume_copies import Rbd

pytestmark = [pytest.mark.slow, pytest.mark.ceph]

# the fixtures of the volume copy tests: a module-scoped lab with Ceph, its client, `rbd`
volume_lab, api, rbd = copies.volume_lab, copies.api, copies.rbd

TIMEOUT = 60
MIB = 1 << 20
VOLUME_SIZE = 8 * MIB
ROOT = str(Path(__file__).resolve().parents[2])
BEFORE = b"\xa5" * VOLUME_SIZE  # what the volume holds before each test


def call(api: LabClient, method: str, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", TIMEOUT)
    return api.call(method, path, **kwargs)


def ok(response: requests.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def pool(api: LabClient, rbd: Rbd, tmp_path: Path) -> Iterator[str]:
    """A pool of its own with volume `disk` (8 MiB) full of known bytes (`before`)."""
    name = f"u{secrets.token_hex(3)}"
    ok(call(api, "POST", "/storage/ceph/pool", params={"pool": name, "pgs": 16}))
    ok(call(api, "POST", "/storage/ceph/volume",
            params={"pool": name, "volume": "disk", "size": VOLUME_SIZE}))
    image = tmp_path / "before.raw"
    image.write_bytes(BEFORE)
    write_volume(rbd, name, image)
    yield name
    ok(call(api, "DELETE", f"/storage/ceph/pool/{name}", params={"yes_i_really_mean_it": 1}))


def write_volume(rbd: Rbd, pool: str, image: Path) -> None:
    """Overwrite `pool/disk` with `image`, through qemu's own RBD client."""
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image),
                    f"rbd:{pool}/disk:id=admin:conf={rbd.args[1]}:keyring={rbd.args[3]}"],
                   check=True, capture_output=True, timeout=TIMEOUT)


def content(size: int) -> bytes:
    """Random bytes with a zero MiB in the middle (the conversion must write zeroes too)."""
    data = bytearray(os.urandom(size))
    data[size // 3:size // 3 + MIB] = bytes(MIB)
    return bytes(data)


def make_image(tmp_path: Path, raw: bytes, image_format: str, *options: str) -> Path:
    source = tmp_path / "image.raw"
    source.write_bytes(raw)
    if image_format == "raw":
        return source
    target = tmp_path / f"image.{image_format}"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", image_format, *options,
                    str(source), str(target)], check=True, capture_output=True, timeout=TIMEOUT)
    return target


def upload_path(pool: str, volume: str = "disk") -> str:
    return f"/storage/ceph/volume/{pool}/{volume}/upload"


def leftovers(rbd: Rbd, pool: str) -> list[str]:
    """Snapshots of `disk` and volumes other than `disk`: what an upload may leave behind."""
    snapshots = json.loads(rbd.run("snap", "ls", f"{pool}/disk", "--format", "json"))
    volumes = json.loads(rbd.run("ls", pool, "--format", "json"))
    return [f"@{s['name']}" for s in snapshots] + [v for v in volumes if v != "disk"]


def upload_tasks(api: LabClient) -> list[dict[str, Any]]:
    return list(ok(call(api, "GET", "/tasks", params={"limit": "^volume.upload$"})))


def task(api: LabClient, task_id: str) -> dict[str, Any]:
    return dict(ok(call(api, "GET", f"/tasks/{task_id}")))


class OpenUpload:
    """An upload sent over a plain socket, its body part by part (or cut off)."""

    def __init__(self, api: LabClient, path: str, length: int | None,
                 headers: dict[str, str] | None = None) -> None:
        url = urlsplit(api.base)
        self.sock = socket.create_connection((url.hostname or "", url.port or 80),
                                             timeout=TIMEOUT)
        lines = [f"POST {url.path}{path} HTTP/1.1", f"Host: {url.netloc}",
                 f"X-Api-Key: {api.token}", "Content-Type: application/octet-stream"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> tuple[int, dict[str, Any]]:
        reply = http.client.HTTPResponse(self.sock)
        reply.begin()
        return reply.status, json.loads(reply.read())

    def first_line(self) -> bytes:
        return self.sock.makefile("rb").readline()

    def close(self) -> None:
        self.sock.close()


def running_upload(api: LabClient, pool: str) -> dict[str, Any]:
    return dict(wait_until(lambda: next(
        (t for t in upload_tasks(api) if t["state"] == "running"
         and t["args"]["pool"] == pool and t["progress"]["message"] == "receiving"), None),
        timeout=TIMEOUT))


@pytest.mark.parametrize("image_format", ["qcow2", "vmdk"])
def test_an_image_reads_back_as_its_raw_conversion(api: LabClient, rbd: Rbd, pool: str,
                                                   tmp_path: Path, image_format: str) -> None:
    raw = content(5 * MIB)
    image = make_image(tmp_path, raw, image_format)
    answer = call(api, "POST", upload_path(pool), data=image.read_bytes(),
                  params={"image_format": image_format, "wait": 1})
    done = ok(answer)
    assert done["result"] == {"pool": pool, "volume": "disk", "image_format": image_format,
                              "bytes_received": image.stat().st_size,
                              "virtual_size": len(raw)}
    assert task(api, done["task_id"])["state"] == "success"
    held = rbd.export(f"{pool}/disk")
    assert held[:len(raw)] == raw  # bit for bit, the zero MiB included
    assert held[len(raw):] == BEFORE[len(raw):]  # the rest as it was
    assert leftovers(rbd, pool) == []


def test_a_raw_image_is_written_as_it_arrives(api: LabClient, rbd: Rbd, pool: str) -> None:
    # a whole MiB of zeros where the volume held data: written as zeroes (not skipped)
    raw = content(MIB) + bytes(MIB) + content(MIB + 4096)
    assert BEFORE[MIB:2 * MIB] != bytes(MIB)
    done = ok(call(api, "POST", upload_path(pool), data=raw, params={"image_format": "raw"}))
    assert done["result"]["bytes_received"] == len(raw) == done["result"]["virtual_size"]
    assert rbd.export(f"{pool}/disk") == raw + BEFORE[len(raw):]
    assert leftovers(rbd, pool) == []


def test_a_multipart_body_as_pvcs_cli_sends_it(api: LabClient, rbd: Rbd, pool: str,
                                              tmp_path: Path) -> None:
    raw = content(3 * MIB)
    image = make_image(tmp_path, raw, "qcow2")
    refused = call(api, "POST", upload_path(pool), files={"file": ("disk.qcow2", b"x")},
                   params={"image_format": "qcow2"})  # no file_size: the body is not the file
    assert refused.status_code == 510 and "file_size is required" in refused.json()["message"]
    done = ok(call(api, "POST", upload_path(pool),
                   files={"file": ("disk.qcow2", image.read_bytes())},
                   params={"image_format": "qcow2", "file_size": image.stat().st_size,
                           "wait": 1}))
    assert done["result"]["bytes_received"] == image.stat().st_size
    assert rbd.export(f"{pool}/disk")[:len(raw)] == raw
    two = call(api, "POST", upload_path(pool), params={"image_format": "raw"},
               files={"file": ("a.raw", b"a" * 100), "more": ("b.raw", b"b" * 100)})
    assert two.status_code == 510 and "more than one part" in two.json()["message"]
    assert rbd.export(f"{pool}/disk")[:len(raw)] == raw
    assert leftovers(rbd, pool) == []


def test_a_raw_body_longer_than_the_volume_fails_and_changes_nothing(
        api: LabClient, rbd: Rbd, pool: str) -> None:
    def chunks() -> Iterator[bytes]:  # chunked: the length is not known before the body
        for _ in range(9):
            yield os.urandom(MIB)

    answer = call(api, "POST", upload_path(pool), data=chunks(),
                  params={"image_format": "raw"})
    assert answer.status_code == 510, answer.text
    assert "longer than RBD volume" in answer.json()["message"]
    failed = task(api, answer.json()["task_id"])
    assert failed["state"] == "failure" and failed["artifacts"] == []
    assert rbd.export(f"{pool}/disk") == BEFORE
    assert leftovers(rbd, pool) == []


def test_a_client_that_leaves_midway_fails_the_task_and_the_volume_is_rolled_back(
        api: LabClient, rbd: Rbd, pool: str, tmp_path: Path) -> None:
    raw = content(6 * MIB)
    image = make_image(tmp_path, raw, "qcow2")
    size = image.stat().st_size
    upload = OpenUpload(api, upload_path(pool) + "?image_format=qcow2", size)
    try:
        upload.send(image.read_bytes()[:3 * MIB])
        running = running_upload(api, pool)
        assert running["objects"] == [f"volume:{pool}/disk", f"volume:{pool}/disk_upload_1"]
        # meanwhile the volume is busy: each of these answers 510 naming the task
        for method, path, values in [
                ("POST", upload_path(pool, "disk"), {"image_format": "raw", "file_size": 1}),
                ("PUT", f"/storage/ceph/volume/{pool}/disk", {"size": "16M"}),
                ("DELETE", f"/storage/ceph/volume/{pool}/disk", {}),
                ("POST", "/storage/ceph/volume/snapshot",
                 {"pool": pool, "volume": "disk", "snapshot": "s"}),
                ("POST", f"/storage/ceph/volume/{pool}/disk/clone", {"new_volume": "c"})]:
            refused = call(api, method, path, params=values, data=b"")
            assert refused.status_code == 510, (path, refused.text)
            assert running["id"] in refused.json()["message"], refused.text
        xml = ("<domain type='qemu'><name>user1</name><memory unit='MiB'>64</memory>"
               "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
               "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
               f"<source protocol='rbd' name='{pool}/disk'/><target dev='vda' bus='virtio'/>"
               "</disk></devices></domain>")
        refused = call(api, "POST", "/vm", data={"xml": xml})
        assert refused.status_code == 510 and running["id"] in refused.json()["message"]
    finally:
        upload.close()
    failed = wait_until(lambda: (t := task(api, running["id"]))["state"] == "failure" and t,
                        timeout=TIMEOUT)
    assert failed["error"] == "Interrupted"
    assert re.fullmatch(rf"upload interrupted after \d+ of {size} bytes", failed["message"])
    assert rbd.export(f"{pool}/disk") == BEFORE
    assert leftovers(rbd, pool) == []


def test_refusals_come_before_the_body_and_change_nothing(
        api: LabClient, rbd: Rbd, pool: str) -> None:
    ok(call(api, "POST", "/storage/ceph/volume",
            params={"pool": pool, "volume": "used", "size": MIB}))
    xml = ("<domain type='qemu'><name>user2</name><memory unit='MiB'>64</memory>"
           "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
           "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
           f"<source protocol='rbd' name='{pool}/used'/><target dev='vda' bus='virtio'/>"
           "</disk></devices></domain>")
    ok(call(api, "POST", "/vm", data={"xml": xml}))
    before = len(upload_tasks(api))
    cases = [
        ("/storage/ceph/volume/nopool/disk/upload?image_format=raw", MIB, "not found"),
        (upload_path(pool, "nodisk") + "?image_format=raw", MIB, "not found"),
        (upload_path(pool) + "?image_format=iso", MIB, "image_format"),
        (upload_path(pool), MIB, "image_format"),
        (upload_path(pool) + "?image_format=qcow2", None, "file_size is required"),
        (upload_path(pool) + "?image_format=qcow2&file_size=0", MIB, "file_size"),
        (upload_path(pool) + "?image_format=qcow2&file_size=abc", MIB, "file_size"),
        (upload_path(pool) + "?image_format=raw", VOLUME_SIZE + 1, "does not fit"),
        (upload_path(pool) + f"?image_format=qcow2&file_size={1 << 50}", MIB, "free"),
        (upload_path(pool, "used") + "?image_format=raw", MIB, "used by VM user2"),
    ]
    for path, length, words in cases:
        headers = {"Expect": "100-continue"}
        if length is None:
            headers["Transfer-Encoding"] = "chunked"
        upload = OpenUpload(api, path, length, headers)
        try:
            status, doc = upload.answer()  # no `100 Continue` first: the answer is final
        finally:
            upload.close()
        assert status == 510, (path, doc)
        assert words in doc["message"], (path, doc)
    unauthenticated = call(api, "POST", upload_path(pool), token=False, data=b"x",
                           params={"image_format": "raw"})
    assert unauthenticated.status_code == 401
    assert len(upload_tasks(api)) == before
    assert rbd.export(f"{pool}/disk") == BEFORE
    assert leftovers(rbd, pool) == ["used"]


@pytest.mark.parametrize("option", ["backing", "data_file"])
def test_a_qcow2_that_names_a_host_file_is_refused(api: LabClient, rbd: Rbd, pool: str,
                                                  tmp_path: Path, option: str) -> None:
    base = make_image(tmp_path, content(2 * MIB), "qcow2")
    image = tmp_path / "overlay.qcow2"
    if option == "backing":
        command = ["qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                   str(image)]
    else:
        command = ["qemu-img", "create", "-f", "qcow2", "-o",
                   f"data_file={tmp_path / 'data.raw'}", str(image), "2M"]
    subprocess.run(command, check=True, capture_output=True, timeout=TIMEOUT)
    answer = call(api, "POST", upload_path(pool), data=image.read_bytes(),
                  params={"image_format": "qcow2", "wait": 1})
    assert answer.status_code == 510, answer.text
    assert "primary's disk" in answer.json()["message"]
    assert rbd.export(f"{pool}/disk") == BEFORE
    assert leftovers(rbd, pool) == []


def test_the_cli_uploads_a_file(volume_lab: tuple[Lab, LabClient], rbd: Rbd, pool: str,
                                tmp_path: Path) -> None:
    lab, _ = volume_lab
    raw = content(4 * MIB)
    image = make_image(tmp_path, raw, "qcow2")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PVC_")}
    clean.update({"PYTHONPATH": ROOT, "PVC_CONFIG": "/nonexistent/pvc/connections.yaml"})
    result = subprocess.run([sys.executable, "-m", "pvcd.cli.main", "--lab", str(lab.workdir),
                             "storage", "volume", "upload", pool, "disk", str(image),
                             "--format", "qcow2", "--wait"],
                            capture_output=True, text=True, env=clean, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "success" in result.stderr and f"into RBD volume {pool}/disk" in result.stdout
    assert rbd.export(f"{pool}/disk")[:len(raw)] == raw
    refused = subprocess.run([sys.executable, "-m", "pvcd.cli.main", "--lab",
                              str(lab.workdir), "storage", "volume", "upload", pool, "nodisk",
                              str(image), "--format", "raw"],
                             capture_output=True, text=True, env=clean, timeout=120,
                             check=False)
    assert refused.returncode == 1 and f"RBD volume {pool}/nodisk not found" in refused.stderr


def test_after_the_daemon_dies_midway_the_next_one_rolls_the_volume_back(
        volume_lab: tuple[Lab, LabClient], api: LabClient, rbd: Rbd, pool: str) -> None:
    lab, _ = volume_lab
    upload = OpenUpload(api, upload_path(pool) + "?image_format=raw", VOLUME_SIZE)
    try:
        upload.send(os.urandom(5 * MIB))
        running = wait_until(lambda: next(
            (t for t in upload_tasks(api) if t["state"] == "running"
             and t["args"]["pool"] == pool and t["progress"]["current"] > 0), None),
            timeout=TIMEOUT)
        lab.signal_node("node1", signal.SIGKILL)  # the API's process, with the upload's job
        assert lab.wait_node_exit("node1")
    finally:
        upload.close()
    lab.start_node("node1")  # as a restart of the daemon: it becomes primary again
    failed = wait_until(lambda: (t := task(api, running["id"]))["state"] == "failure"
                        and not t["cleanup"] and t, timeout=2 * TIMEOUT)
    assert failed["error"] == "Interrupted" and failed["artifacts"] == [], failed
    assert rbd.export(f"{pool}/disk") == BEFORE
    assert leftovers(rbd, pool) == []
