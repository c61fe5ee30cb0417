"""VM export manifests, chains and the backup folders on disk (extensions.md §0.2 host paths,
§5.3): the rules that decide what an import trusts, without Ceph."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from pvcd.domain.errors import InvalidValue, NotFound
from pvcd.domain.vm_backups import (
    BACKUP,
    EXPORT,
    FULL,
    INCREMENTAL,
    Manifest,
    ManifestFile,
    backup_snapshot_name,
    renamed_volume,
    restore_chain,
)
from pvcd.drivers.backup_files import BackupDirectory, read_chain, resolve_host_path
from pvcd.drivers.ceph.rbd_files import export_argv, import_argv
from pvcd.specs.storage import check_storage_request

SHA = "a" * 64


def manifest(name: str, parent: str | None = None, uuid: str = "u1",
             volumes: tuple[str, ...] = ("web_sda",)) -> Manifest:
    kind = INCREMENTAL if parent else FULL
    return Manifest(type=kind, snapshot_name=name, incremental_parent=parent, created=1.0,
                    consistency="stopped",
                    vm_detail={"name": "web", "uuid": uuid, "xml": "<domain/>"},
                    files=[ManifestFile(EXPORT.disk_file("vms", v, kind), "vms", v, 10, 5, SHA)
                           for v in volumes])


def test_a_manifest_reads_back_what_was_written() -> None:
    written = manifest("s2", "s1")
    read = Manifest.from_doc(written.to_doc(), EXPORT)
    assert read == written
    doc = written.to_doc()
    assert doc["export_files"] == [["images/vms.web_sda.rbddiff", 10]]
    assert doc["export_size_bytes"] == 5 and doc["format"] == "pvcd-vm-export"


@pytest.mark.parametrize("change, words", [
    ({"format": "pvc"}, "not a pvcd VM export"),
    ({"type": "partial"}, "type"),
    ({"incremental_parent": None}, "incremental_parent"),
    ({"files": []}, "no files"),
    ({"vm_detail": {"name": "web"}}, "vm_detail"),
])
def test_a_malformed_manifest_is_refused(change: dict[str, Any], words: str) -> None:
    doc = {**manifest("s2", "s1").to_doc(), **change}
    with pytest.raises(InvalidValue, match=words):
        Manifest.from_doc(doc, EXPORT)


@pytest.mark.parametrize("entry, words", [
    ({"path": "../../etc/shadow"}, "is not where"),
    ({"path": "images/vms.other.rbddiff"}, "is not where"),
    ({"volume": "../x", "path": "images/vms.../x.rbddiff"}, "invalid volume"),
    ({"sha256": "xyz"}, "sha256"),
    ({"bytes": -1}, "bytes"),
])
def test_a_manifest_file_is_only_ever_where_the_layout_puts_it(entry: dict[str, Any],
                                                               words: str) -> None:
    doc = manifest("s2", "s1").to_doc()
    doc["files"][0].update(entry)
    with pytest.raises(InvalidValue, match=words):
        Manifest.from_doc(doc, EXPORT)


def test_the_backup_layout_has_its_own_names() -> None:
    assert BACKUP.manifest == "pvcbackup.json"
    assert BACKUP.disk_file("vms", "web", FULL) == "pvcdisks/vms.web.rbdimg"
    assert backup_snapshot_name("20261207010203") == "backup_20261207010203"
    with pytest.raises(InvalidValue):
        backup_snapshot_name("2026-12-07")


def test_a_chain_is_read_from_its_full_root() -> None:
    known = {"s1": manifest("s1"), "s2": manifest("s2", "s1")}
    chain = restore_chain("s3", manifest("s3", "s2"), lambda name: known[name])
    assert [name for name, _ in chain] == ["s1", "s2", "s3"]


def test_a_chain_that_loops_or_strays_is_refused() -> None:
    looping = {"s1": manifest("s1", "s2"), "s2": manifest("s2", "s1")}
    with pytest.raises(InvalidValue, match="loops"):
        restore_chain("s3", manifest("s3", "s2"), lambda name: looping[name])
    other_vm = {"s1": manifest("s1", uuid="u2")}
    with pytest.raises(InvalidValue, match="another VM"):
        restore_chain("s2", manifest("s2", "s1"), lambda name: other_vm[name])
    fewer = {"s1": manifest("s1")}
    with pytest.raises(InvalidValue, match="lacks volumes"):
        restore_chain("s2", manifest("s2", "s1", volumes=("web_sda", "web_sdb")),
                      lambda name: fewer[name])


def test_volumes_named_after_the_vm_follow_a_new_name() -> None:
    assert renamed_volume("web", "web", "db") == "db"
    assert renamed_volume("web_sda", "web", "db") == "db_sda"
    assert renamed_volume("webserver", "web", "db") == "webserver"
    assert renamed_volume("shared", "web", "db") == "shared"
    assert renamed_volume("web_sda", "web", None) == "web_sda"


def test_host_paths_must_resolve_inside_an_allowed_folder(tmp_path: Path) -> None:
    allowed = tmp_path / "backups"
    (allowed / "inner").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    (allowed / "alias").symlink_to(allowed / "inner")
    roots = [str(allowed)]
    assert resolve_host_path(str(allowed / "inner"), roots, "p") == allowed / "inner"
    assert resolve_host_path(str(allowed / "alias"), roots, "p") == allowed / "inner"
    for bad, words in ((str(outside), "not inside"), (str(allowed / "escape"), "not inside"),
                       (f"{allowed}/../outside", "not inside"), ("backups", "absolute"),
                       (str(allowed / "missing"), "not an existing directory"),
                       (str(tmp_path / "backupsX"), "not inside"),
                       (str(allowed / ("x" * 300)), "cannot be used")):
        with pytest.raises(InvalidValue, match=words):
            resolve_host_path(bad, roots, "p")
    with pytest.raises(InvalidValue, match="not set"):
        resolve_host_path(str(allowed), [], "p")


def test_a_directory_writes_files_under_temporary_names_and_modes(tmp_path: Path) -> None:
    directory = BackupDirectory(tmp_path, "web", "s1", [str(tmp_path)])
    directory.create("images")
    with directory.incoming("images/vms.web.rbdimg") as out:
        out.write(b"data")
        assert os.listdir(tmp_path / "web/s1/images") == [".vms.web.rbdimg.part"]
    assert (tmp_path / "web/s1/images/vms.web.rbdimg").read_bytes() == b"data"
    assert os.stat(tmp_path / "web/s1").st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / "web/s1/images/vms.web.rbdimg").st_mode & 0o777 == 0o600
    with pytest.raises(RuntimeError), directory.incoming("images/vms.other.rbdimg") as out:
        out.write(b"half")
        raise RuntimeError("cut off")
    assert os.listdir(tmp_path / "web/s1/images") == ["vms.web.rbdimg"]
    with pytest.raises(InvalidValue, match="exists already"):
        directory.create("images")
    assert directory.remove() and not (tmp_path / "web/s1").exists()


def test_verify_finds_a_flipped_byte(tmp_path: Path) -> None:
    directory = BackupDirectory(tmp_path, "web", "s1", [str(tmp_path)])
    directory.create("images")
    data = os.urandom(3 << 20)
    with directory.incoming("images/vms.web.rbdimg") as out:
        out.write(data)
    digest = hashlib.sha256(data).hexdigest()
    seen: list[int] = []
    directory.verify("images/vms.web.rbdimg", len(data), digest, seen.append)
    assert sum(seen) == len(data)
    path = tmp_path / "web/s1/images/vms.web.rbdimg"
    flipped = bytearray(data)
    flipped[12345] ^= 0x80
    path.write_bytes(bytes(flipped))
    with pytest.raises(InvalidValue, match="corrupted"):
        directory.verify("images/vms.web.rbdimg", len(data), digest)
    path.unlink()
    with pytest.raises(InvalidValue, match="missing"):
        directory.verify("images/vms.web.rbdimg", len(data), digest)


def test_a_symlink_below_the_root_leads_nowhere(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "web").symlink_to(outside)
    directory = BackupDirectory(allowed, "web", "s1", [str(allowed)])
    with pytest.raises(InvalidValue, match="outside"):
        directory.create("images")
    assert list(outside.iterdir()) == []
    with pytest.raises(InvalidValue):
        BackupDirectory(allowed, "..", "s1", [str(allowed)])


def test_read_chain_names_a_missing_parent(tmp_path: Path) -> None:
    root = [str(tmp_path)]
    for name, parent in (("s1", None), ("s2", "s1")):
        directory = BackupDirectory(tmp_path, "web", name, root)
        directory.create("images")
        directory.write_manifest("snapshot.json", manifest(name, parent).to_doc())
    chain = read_chain(BackupDirectory(tmp_path, "web", "s2", root), EXPORT)
    assert [(d.path.name, m.snapshot_name) for d, m in chain] == [("s1", "s1"), ("s2", "s2")]
    os.unlink(tmp_path / "web/s1/snapshot.json")  # incomplete: never imported
    with pytest.raises(InvalidValue, match="chain is broken"):
        read_chain(BackupDirectory(tmp_path, "web", "s2", root), EXPORT)
    with pytest.raises(NotFound):
        read_chain(BackupDirectory(tmp_path, "web", "s9", root), EXPORT)


def test_rbd_commands_are_argument_lists_of_checked_names() -> None:
    assert export_argv("vms", "web", "s1", None) == [
        "export", "--export-format", "2", "--no-progress", "vms/web@s1", "-"]
    assert export_argv("vms", "web", "s2", "s1") == [
        "export-diff", "--from-snap", "s1", "--no-progress", "vms/web@s2", "-"]
    assert import_argv("vms", "web", "/b/x.rbddiff", True) == [
        "import-diff", "--no-progress", "/b/x.rbddiff", "vms/web"]
    with pytest.raises(InvalidValue):
        export_argv("vms", "web;rm", "s1", None)
    for path in ("relative", "/a/../b", "/a\nb"):
        with pytest.raises(InvalidValue):
            check_storage_request("volume-import", {"pool": "vms", "volume": "v",
                                                    "file": path})
    check_storage_request("volume-import", {"pool": "vms", "volume": "v", "file": "/b/f",
                                            "diff": True, "bytes": 3})
