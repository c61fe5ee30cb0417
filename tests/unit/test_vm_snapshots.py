"""VM snapshots (extensions.md §5.1): names, the record's validation, the XML diff, which disks a
snapshot covers, and the daemon's filter that keeps snapshot records from waking controllers."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pvcd.daemon import _vm_key_of
from pvcd.domain.errors import InvalidValue
from pvcd.domain.records import VmSpec
from pvcd.domain.vm_snapshots import (
    GuestHold,
    HeldGuest,
    VmSnapshot,
    default_snapshot_name,
    split_rbd_snapshot,
    xml_diff_lines,
)
from pvcd.state.vm_snapshots import snapshot_volumes

UUID = "0b9e6f5c-1a2b-4c3d-8e9f-001122334455"


def record(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "s1", "timestamp": 1_700_000_000.5,
                           "consistency": "crash-consistent", "xml": "<domain/>",
                           "meta": {"node_limit": []}, "tags": [{"name": "web"}],
                           "rbd_snapshots": ["vms/a@s1", "vms/b@s1"]}
    doc.update(changes)
    return doc


def test_default_name_is_the_local_time_to_the_second() -> None:
    now = time.mktime((2026, 12, 7, 23, 5, 9, 0, 0, -1))
    assert default_snapshot_name(now) == "20261207230509"


def test_rbd_snapshot_specs_split_into_pool_volume_and_name() -> None:
    assert split_rbd_snapshot("vms/web_1@s1") == ("vms", "web_1", "s1")
    for bad in ("vms/web", "web@s1", "vms/@s1", "/web@s1", "vms/web@", "vms/a/b@s"):
        with pytest.raises(InvalidValue):
            split_rbd_snapshot(bad)


def test_a_record_is_read_back_as_written() -> None:
    snap = VmSnapshot.from_doc(record())
    assert VmSnapshot.from_doc(snap.to_doc()) == snap
    assert snap.volumes() == [("vms", "a"), ("vms", "b")]


@pytest.mark.parametrize("changes, words", [
    ({"name": ""}, "name"),
    ({"xml": None}, "'xml'"),
    ({"consistency": "frozen"}, "consistency"),
    ({"timestamp": True}, "timestamp"),
    ({"timestamp": -1}, "timestamp"),
    ({"meta": []}, "meta"),
    ({"tags": ["web"]}, "tags"),
    ({"rbd_snapshots": "vms/a@s1"}, "rbd_snapshots"),
    ({"rbd_snapshots": ["vms/a@other"]}, "another name"),
    ({"rbd_snapshots": ["a@s1"]}, "pool/volume@snapshot"),
])
def test_a_malformed_record_is_refused(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidValue, match=words):
        VmSnapshot.from_doc(record(**changes))


def test_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidValue):
        VmSnapshot.from_doc(["s1"])


def test_the_diff_goes_from_the_current_xml_to_the_snapshot_with_one_line_of_context() -> None:
    current = "<domain>\n<name>a</name>\n<vcpu>2</vcpu>\n<memory>64</memory>\n<os/>\n</domain>"
    snapshot = current.replace("<vcpu>2</vcpu>", "<vcpu>1</vcpu>")
    diff = xml_diff_lines(current, snapshot)
    assert diff == ["--- current", "+++ snapshot", "@@ -2,3 +2,3 @@", " <name>a</name>",
                    "-<vcpu>2</vcpu>", "+<vcpu>1</vcpu>", " <memory>64</memory>"]
    assert xml_diff_lines(current, current) == []


def test_the_summary_shows_the_age_and_the_diff() -> None:
    snap = VmSnapshot.from_doc(record())
    summary = snap.summary("<domain/>", snap.timestamp + 90.9)
    assert summary == {"name": "s1", "timestamp": snap.timestamp, "age": 90,
                       "consistency": "crash-consistent",
                       "rbd_snapshots": ["vms/a@s1", "vms/b@s1"], "xml_diff_lines": []}


def test_holds_and_their_reports_are_validated() -> None:
    assert GuestHold.from_doc({"task": "t", "mode": "auto", "created": 5}) == \
        GuestHold("t", "auto", 5.0)
    for bad in ({"task": "t", "mode": "sleep"}, {"mode": "pause"}, "t",
                {"task": "t", "mode": "pause", "created": "now"}):
        with pytest.raises(InvalidValue):
            GuestHold.from_doc(bad)
    assert HeldGuest.from_doc({}) is None
    assert HeldGuest.from_doc({"task": "t", "mode": "pause", "state": "crash-consistent",
                               "since": 3}) == HeldGuest("t", "pause", "crash-consistent", 3.0)


def vm(disks: str) -> VmSpec:
    xml = (f"<domain type='kvm'><name>web</name><uuid>{UUID}</uuid>"
           "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
           f"<devices>{disks}</devices></domain>")
    return VmSpec(uuid=UUID, name="web", xml=xml, node="node1")


def rbd(name: str, dev: str, extra: str = "", device: str = "disk") -> str:
    return (f"<disk type='network' device='{device}'><source protocol='rbd' name='{name}'/>"
            f"<target dev='{dev}' bus='virtio'/>{extra}</disk>")


def test_a_snapshot_covers_the_writable_rbd_disks_once_each() -> None:
    spec = vm(rbd("vms/web_a", "vda") + rbd("vms/web_b", "vdb")
              + rbd("vms/iso", "sda", device="cdrom") + rbd("vms/ro", "vdc", "<readonly/>")
              + rbd("vms/web_a", "vdd"))
    assert snapshot_volumes(spec) == [("vms", "web_a"), ("vms", "web_b")]


@pytest.mark.parametrize("disks, words", [
    ("", "no writable RBD disk"),
    (rbd("vms/iso", "sda", device="cdrom"), "no writable RBD disk"),
    (rbd("vms/a", "vda") + "<disk type='file' device='disk'><source file='/var/x.img'/>"
     "<target dev='vdb' bus='virtio'/></disk>", "not RBD volumes"),
    (rbd("vms/a@golden", "vda"), "not a writable RBD volume"),
])
def test_a_vm_a_snapshot_cannot_cover_is_refused(disks: str, words: str) -> None:
    with pytest.raises(InvalidValue, match=words):
        snapshot_volumes(vm(disks))


def test_snapshot_records_wake_no_vm_or_node_controller() -> None:
    vms = "/pvc/vms/"
    assert _vm_key_of(vms, f"/pvc/vms/{UUID}") == f"vm/{UUID}"
    assert _vm_key_of(vms, f"/pvc/vms/{UUID}/status") == f"vm/{UUID}"
    assert _vm_key_of(vms, f"/pvc/vms/{UUID}/hold") == f"vm/{UUID}"
    assert _vm_key_of(vms, f"/pvc/vms/{UUID}/snapshots") is None
    assert _vm_key_of(vms, f"/pvc/vms/{UUID}/snapshots/s1") is None
    assert _vm_key_of(vms, f"/pvc/vms/{UUID}/console") is None  # its node rewrites it each second
