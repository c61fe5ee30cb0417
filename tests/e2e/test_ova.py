"""OVA upload and removal through the API of a lab with a throwaway Ceph (extensions.md §3.7).

The OVAs are real: an .ovf written here, VMDK images made by `qemu-img` from known bytes, a
SHA-256 manifest (tests/ova_files.py). A successful upload is judged by what Ceph holds (the
volume's bytes, exported with `rbd`, equal the VMDK file) and what ZooKeeper holds (the OVA,
its system template and profile with the OVF's numbers); every failure, by the absence of any
`ova_<name>_*` volume and of any record. One lab serves the module; each test has its own
pool and names.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pvcd.domain.tasks import TaskRecord, new_id
from pvcd.lab.lab import Lab
from pvcd.state.codec import decode, encode
from pvcd.state.schema import Paths
from tests.e2e.labclient import (
    LabClient,
    LabFactory,
    running_lab,
    wait_until,
    zookeeper_client,
)
from tests.e2e.test_cli import pvc
from tests.e2e.test_volume_copies import Rbd
from tests.ova_files import manifest, ovf_text, tar_of, vmdk_of

pytestmark = [pytest.mark.slow, pytest.mark.ceph]

TIMEOUT = 60
MIB = 1 << 20


@pytest.fixture(scope="module")
def ova_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Rbd, LabClient]]:
    with running_lab(tmp_path_factory.mktemp("ova") / "lab", nodes=1, ceph=True,
                     ceph_memstore_gib=3) as (lab, api):
        yield lab, Rbd(lab), api


@pytest.fixture
def api(ova_lab: tuple[Lab, Rbd, LabClient]) -> LabClient:
    return ova_lab[2]


@pytest.fixture
def rbd(ova_lab: tuple[Lab, Rbd, LabClient]) -> Rbd:
    return ova_lab[1]


@pytest.fixture
def pool(api: LabClient) -> Iterator[str]:
    name = f"p{secrets.token_hex(3)}"
    response = api.call("POST", "/storage/ceph/pool", params={"pool": name, "pgs": 16},
                        timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    yield name
    api.call("DELETE", f"/storage/ceph/pool/{name}", params={"yes_i_really_mean_it": 1},
             timeout=TIMEOUT)


@pytest.fixture
def disks(tmp_path: Path) -> list[tuple[str, bytes, bytes]]:
    """Two disk images: (file name, raw content, VMDK bytes)."""
    out = []
    for index in range(2):
        raw = os.urandom(MIB) + bytes([index]) * MIB
        out.append((f"disk{index}.vmdk", raw, vmdk_of(raw, tmp_path, f"disk{index}")))
    return out


def good_ova(disks: list[tuple[str, bytes, bytes]], **ovf: Any) -> bytes:
    text = ovf_text([(name, 10 + i) for i, (name, _, _) in enumerate(disks)], **ovf).encode()
    files = [("test.ovf", text), *[(name, vmdk) for name, _, vmdk in disks]]
    return tar_of([files[0], ("test.mf", manifest(files)), *files[1:]])


def upload(api: LabClient, body: bytes, **values: Any) -> Any:
    params = {"wait": 1, "ova_size": len(body), **values}
    return api.call("POST", "/provisioner/ova", params=params, data=body, timeout=TIMEOUT,
                    headers={"Content-Type": "application/octet-stream"})


def znode(lab: Lab, kind: str, name: str) -> Any:
    paths = Paths(lab._info().zk_root)
    with zookeeper_client(lab) as client:
        path = paths.provisioner_object(kind, name)
        return decode(client.get(path)[0]) if client.exists(path) else None


def write_seen(lab: Lab, api: LabClient, kind: str, name: str,
               doc: dict[str, Any] | None) -> None:
    """Write (or with None delete) a provisioner object past the API (no endpoint of this
    piece writes one) and wait until the API's cache has the change: a finished task created in
    the same transaction comes after it in the watch's ordered notifications, so once the API
    lists the task it has both."""
    paths = Paths(lab._info().zk_root)
    marker = TaskRecord(id=new_id(time.time()), name="test.marker", run_on="node1",
                        state="success", created=time.time())
    path = paths.provisioner_object(kind, name)
    with zookeeper_client(lab) as client:
        transaction = client.transaction()
        if doc is None:
            transaction.delete(path)
        else:
            transaction.create(path, encode(doc))
        transaction.create(paths.task(marker.id), encode(marker.to_doc()))
        assert all(r is not None and not isinstance(r, Exception)
                   for r in transaction.commit())
    wait_until(lambda: api.call("GET", f"/tasks/{marker.id}").status_code == 200, TIMEOUT)
    api.call("DELETE", f"/tasks/{marker.id}")


def ova_volumes(rbd: Rbd, pool: str) -> list[str]:
    return [v for v in rbd.run("ls", "--pool", pool).decode().split() if v.startswith("ova_")]


def ova_tasks(api: LabClient) -> list[dict[str, Any]]:
    return list(api.call("GET", "/tasks", params={"limit": "^ova\\.upload$"}).json())


def nothing_left(lab: Lab, rbd: Rbd, pool: str, name: str) -> None:
    assert ova_volumes(rbd, pool) == []
    for kind in ("ova", "system", "profile"):
        assert znode(lab, kind, name) is None, kind


def test_upload_makes_volumes_template_and_profile_then_delete_removes_them(
        ova_lab: tuple[Lab, Rbd, LabClient], api: LabClient, rbd: Rbd, pool: str,
        disks: list[tuple[str, bytes, bytes]]) -> None:
    lab = ova_lab[0]
    body = good_ova(disks, vcpus=3, memory_mb=768, graphics=True)
    response = upload(api, body, name="appliance", pool=pool)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["system_template"] == result["profile"] == "appliance"
    assert [v["volume_name"] for v in result["volumes"]] == \
        ["ova_appliance_sda", "ova_appliance_sdb"]
    for (_, _, vmdk), volume in zip(disks, result["volumes"], strict=True):
        assert volume["volume_format"] == "vmdk" and volume["pool"] == pool
        assert rbd.run("export", "--no-progress", f"{pool}/{volume['volume_name']}", "-") == vmdk
    assert [v["disk_size_gb"] for v in result["volumes"]] == [10, 11]

    listed = api.call("GET", "/provisioner/ova/appliance").json()
    assert listed[0]["volumes"] == result["volumes"] and listed[0]["pool"] == pool
    template = znode(lab, "system", "appliance")
    assert (template["vcpu_count"], template["vram_mb"], template["serial"], template["vnc"],
            template["ova"]) == (3, 768, True, True, "appliance")
    profile = znode(lab, "profile", "appliance")
    assert (profile["profile_type"], profile["script"], profile["ova"],
            profile["system_template"]) == ("ova", "ova", "appliance", "appliance")

    # taken as an OVA (and so as a template and profile): refused before the body
    again = upload(api, body, name="appliance", pool=pool)
    assert again.status_code == 510 and "exists already" in again.json()["message"]

    # another profile naming the OVA blocks the removal; the OVA's own profile does not
    write_seen(lab, api, "profile", "uses-it", {
        "name": "uses-it", "profile_type": "ova", "system_template": "appliance",
        "script": "ova", "ova": "appliance"})
    refused = api.call("DELETE", "/provisioner/ova/appliance")
    assert refused.status_code == 510 and "uses-it" in refused.json()["message"]
    assert len(ova_volumes(rbd, pool)) == 2 and znode(lab, "ova", "appliance") is not None
    write_seen(lab, api, "profile", "uses-it", None)

    removed = api.call("DELETE", "/provisioner/ova/appliance", timeout=TIMEOUT)
    assert removed.status_code == 200, removed.text
    nothing_left(lab, rbd, pool, "appliance")


def _bad_archives(disks: list[tuple[str, bytes, bytes]]) -> dict[str, tuple[bytes, str]]:
    ovf = ovf_text([(name, 10) for name, _, _ in disks]).encode()
    files = [(name, vmdk) for name, _, vmdk in disks]
    tampered = [(files[0][0], files[0][1][:-1] + b"\x01"), files[1]]
    doctype = ovf_text([(name, 10) for name, _, _ in disks],
                       prolog='<!DOCTYPE x [<!ENTITY a "aaaa">]>').encode()
    return {
        "ovf-not-first": (tar_of([*files, ("t.ovf", ovf)]), "the .ovf must come first"),
        "digest-mismatch": (tar_of([("t.ovf", ovf), ("t.mf", manifest([("t.ovf", ovf), *files])),
                                    *tampered]), "digest mismatch"),
        "missing-disk": (tar_of([("t.ovf", ovf), files[0]]), "lacks the disk files"),
        "doctype": (tar_of([("t.ovf", doctype), *files]), "without DTDs or entities"),
    }


@pytest.mark.parametrize("case", ["ovf-not-first", "digest-mismatch", "missing-disk",
                                  "doctype"])
def test_a_bad_archive_fails_and_leaves_nothing(
        ova_lab: tuple[Lab, Rbd, LabClient], api: LabClient, rbd: Rbd, pool: str,
        disks: list[tuple[str, bytes, bytes]], case: str) -> None:
    body, words = _bad_archives(disks)[case]
    name = f"bad-{case}"
    response = upload(api, body, name=name, pool=pool)
    assert response.status_code == 510, response.text
    assert words in response.json()["message"], response.json()
    task = api.call("GET", f"/tasks/{response.json()['task_id']}").json()
    assert task["state"] == "failure" and task["artifacts"] == [], task
    nothing_left(ova_lab[0], rbd, pool, name)


def test_a_client_that_leaves_mid_body_fails_the_task_and_leaves_nothing(
        ova_lab: tuple[Lab, Rbd, LabClient], api: LabClient, rbd: Rbd, pool: str,
        disks: list[tuple[str, bytes, bytes]]) -> None:
    body = good_ova(disks)
    cut = len(body) - 200 * 1024  # the first disk is written, the second one is not complete
    url = urlsplit(api.base)
    path = f"{url.path}/provisioner/ova?name=gone&pool={pool}&ova_size={len(body)}"
    before = {t["id"] for t in ova_tasks(api)}
    with socket.create_connection((url.hostname, url.port), timeout=TIMEOUT) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                      f"X-Api-Key: {api.token}\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:cut])
        # the task has created a volume before the client goes away
        wait_until(lambda: ova_volumes(rbd, pool), TIMEOUT, interval=0.2)
    task = wait_until(lambda: [t for t in ova_tasks(api) if t["id"] not in before
                               and t["state"] == "failure"], TIMEOUT, interval=0.2)[0]
    assert "went away after" in task["message"] and task["artifacts"] == [], task
    nothing_left(ova_lab[0], rbd, pool, "gone")


def test_refusals_before_the_body_change_nothing(
        ova_lab: tuple[Lab, Rbd, LabClient], api: LabClient, rbd: Rbd, pool: str) -> None:
    lab = ova_lab[0]
    write_seen(lab, api, "system", "taken", {"name": "taken", "vcpu_count": 1, "vram_mb": 512})
    before = {t["id"] for t in ova_tasks(api)}
    huge = 1 << 50  # 1 PiB: more than the lab's pool can take
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "-bad", "pool": pool, "ova_size": 10}, "invalid"),
        ({"name": "taken", "pool": pool, "ova_size": 10}, "system template named taken"),
        ({"name": "x", "pool": "nopool", "ova_size": 10}, "pool nopool not found"),
        ({"name": "x", "pool": pool, "ova_size": 0}, "ova_size"),
        ({"name": "x", "pool": pool, "ova_size": "ten"}, "ova_size"),
        ({"name": "x", "pool": pool, "ova_size": 100}, "more than ova_size 100"),
        ({"name": "x", "pool": pool, "ova_size": huge}, "bytes free"),
    ]
    started = time.monotonic()
    for values, words in cases:
        # a large declared body: answered at once, before any of it is read
        response = api.call("POST", "/provisioner/ova", params=values, data=b"x" * 4096,
                            timeout=TIMEOUT)
        assert response.status_code == 510, (values, response.text)
        assert words in response.json()["message"], (values, response.json())
    assert time.monotonic() - started < 30
    assert {t["id"] for t in ova_tasks(api)} == before
    assert ova_volumes(rbd, pool) == []
    assert znode(lab, "ova", "x") is None and znode(lab, "ova", "taken") is None
    write_seen(lab, api, "system", "taken", None)


def test_the_cli_uploads_lists_shows_and_removes_an_ova(
        ova_lab: tuple[Lab, Rbd, LabClient], rbd: Rbd, pool: str,
        disks: list[tuple[str, bytes, bytes]], tmp_path: Path) -> None:
    lab = ova_lab[0]
    file = tmp_path / "cli.ova"
    file.write_bytes(good_ova(disks[:1], vcpus=1, memory_mb=256, graphics=False))
    uploaded = pvc(lab, "provisioner", "ova", "upload", "viacli", str(file),
                   "--pool", pool)
    assert uploaded.returncode == 0, uploaded.stderr
    assert "Imported OVA viacli" in uploaded.stdout
    assert "Uploaded cli.ova" in uploaded.stderr  # the progress went to stderr
    assert rbd.run("export", "--no-progress", f"{pool}/ova_viacli_sda", "-") == disks[0][2]
    listed = pvc(lab, "provisioner", "ova", "list")
    assert "viacli" in listed.stdout and "ova_viacli_sda" in listed.stdout
    info = pvc(lab, "provisioner", "ova", "info", "viacli")
    assert "sda: " + f"{pool}/ova_viacli_sda (vmdk, 10 GiB)" in info.stdout, info.stdout
    assert (znode(lab, "system", "viacli") or {}).get("vnc") is False

    refused = pvc(lab, "provisioner", "ova", "upload", "viacli", str(file),
                  "--pool", pool)
    assert refused.returncode == 1 and "exists already" in refused.stderr
    removed = pvc(lab, "provisioner", "ova", "remove", "viacli", "--yes")
    assert removed.returncode == 0, removed.stderr
    nothing_left(lab, rbd, pool, "viacli")


def test_a_multipart_body_as_pvc_1_sends_it_is_accepted(
        ova_lab: tuple[Lab, Rbd, LabClient], api: LabClient, rbd: Rbd, pool: str,
        disks: list[tuple[str, bytes, bytes]]) -> None:
    body = good_ova(disks[1:])
    response = api.call("POST", "/provisioner/ova/multi", timeout=TIMEOUT,
                        params={"pool": pool, "ova_size": len(body), "wait": 1},
                        files={"file": ("multi.ova", body, "application/octet-stream")})
    assert response.status_code == 200, response.text
    assert rbd.run("export", "--no-progress", f"{pool}/ova_multi_sda", "-") == disks[1][2]
    two_parts = api.call("POST", "/provisioner/ova/twice", timeout=TIMEOUT,
                         params={"pool": pool, "ova_size": 2 * len(body), "wait": 1},
                         files={"file": ("a.ova", body), "other": ("b.ova", body)})
    assert two_parts.status_code == 510 and "more than one part" in two_parts.json()["message"]
    assert ova_volumes(rbd, pool) == ["ova_multi_sda"]
    assert api.call("DELETE", "/provisioner/ova/multi", timeout=TIMEOUT).status_code == 200
    nothing_left(ova_lab[0], rbd, pool, "twice")


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_a_large_body_streams_through_without_being_held(
        ova_lab: tuple[Lab, Rbd, LabClient], api: LabClient, rbd: Rbd, pool: str,
        tmp_path: Path) -> None:
    """128 MiB go through the daemon's API into a volume while its peak memory grows by far
    less: the body is never held whole (the pipe holds 8 MiB, librbd writes 4 MiB blocks)."""
    lab = ova_lab[0]
    disk = os.urandom(128 * MIB)
    ovf = ovf_text([("big.vmdk", 1)]).encode()
    file = tmp_path / "big.ova"
    file.write_bytes(tar_of([("big.ovf", ovf), ("big.vmdk", disk)]))
    del disk
    pid = lab._info().nodes[0].pid
    assert b"pvcd.lab.node" in Path(f"/proc/{pid}/cmdline").read_bytes()  # the daemon itself
    before = peak_rss(pid)
    with file.open("rb") as body:  # requests streams a file object
        response = api.call("POST", "/provisioner/ova/big", data=body, timeout=TIMEOUT,
                            params={"pool": pool, "ova_size": file.stat().st_size, "wait": 1},
                            headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    grown = peak_rss(pid) - before
    assert grown < 64 * MIB, f"the daemon's peak memory grew by {grown // MIB} MiB"
    assert rbd.run("info", f"{pool}/ova_big_sda").decode().count("128 MiB") == 1
    assert api.call("DELETE", "/provisioner/ova/big", timeout=TIMEOUT).status_code == 200


def test_a_primary_killed_mid_upload_leaves_no_volume(make_lab: LabFactory) -> None:
    """The daemon that received the body dies (SIGKILL) while a disk is being written: the new
    primary declares the task interrupted and removes the volume it had made."""
    lab, api = make_lab(nodes=3, ceph=True, fencing="none")
    primary = wait_until(api.primary, 30)
    rbd = Rbd(lab)
    pool = f"p{secrets.token_hex(3)}"
    created = api.call("POST", "/storage/ceph/pool", params={"pool": pool, "pgs": 8},
                       timeout=120)
    assert created.status_code == 200, created.text
    ovf = ovf_text([("d.vmdk", 1)]).encode()
    body = tar_of([("k.ovf", ovf), ("d.vmdk", os.urandom(16 * MIB))])
    url = urlsplit(api.base)
    path = f"{url.path}/provisioner/ova?name=killed&pool={pool}&ova_size={len(body)}"
    with socket.create_connection((url.hostname, url.port), timeout=TIMEOUT) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                      f"X-Api-Key: {api.token}\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:8 * MIB])
        wait_until(lambda: ova_volumes(rbd, pool), TIMEOUT, interval=0.2)
        task = ova_tasks(api)[0]
        assert (task["state"], task["run_on"]) == ("running", primary), task
        lab.signal_node(primary, signal.SIGKILL)
    ended = wait_until(lambda: (doc := api.call("GET", f"/tasks/{task['id']}").json())
                       ["state"] == "failure" and not doc["cleanup"] and doc, 90, interval=0.2)
    assert ended["error"] == "Interrupted" and ended["artifacts"] == [], ended["message"]
    assert ova_volumes(rbd, pool) == []
    assert api.call("GET", "/provisioner/ova/killed").status_code == 510


def test_a_vm_created_from_an_ova_profile_holds_the_converted_disk(
        api: LabClient, rbd: Rbd, pool: str, disks: list[tuple[str, bytes, bytes]],
        tmp_path: Path) -> None:
    """The `ova` install method (§3.6): the OVA's stored VMDK converted by qemu-img into the
    VM's disk, grown to the capacity the OVF declares."""
    name, raw, vmdk = disks[0]
    ovf = ovf_text([(name, 1)]).encode()
    files = [("test.ovf", ovf), (name, vmdk)]
    body = tar_of([files[0], ("test.mf", manifest(files)), *files[1:]])
    assert upload(api, body, name="appl2", pool=pool).status_code == 200
    created = api.call("POST", "/provisioner/create", timeout=TIMEOUT, params={
        "name": "ovavm1", "profile": "appl2", "start_vm": "false", "wait": 1})
    assert created.status_code == 200, created.text
    result = created.json()["result"]
    assert result["volumes"] == [f"{pool}/ovavm1_sda"] and result["defined"] is True
    exported = tmp_path / "disk.raw"
    rbd.run("export", "--no-progress", f"{pool}/ovavm1_sda", str(exported))
    assert exported.stat().st_size == 1 << 30
    with exported.open("rb") as disk:
        assert disk.read(len(raw)) == raw
    removed = api.call("DELETE", "/vm/ovavm1", params={"delete_disks": 1}, timeout=TIMEOUT)
    assert removed.status_code == 200, removed.text
    assert api.call("DELETE", "/provisioner/ova/appl2", timeout=TIMEOUT).status_code == 200
