"""The pure parts of a VM rename (extensions.md §11.1): which volumes follow the name, and the
XML change (only `<name>` and the renamed RBD disk sources)."""

from __future__ import annotations

import pytest

from pvcd.api.vm_rename import volume_renames
from pvcd.domain.errors import InvalidValue
from pvcd.domain.records import VmRemoval, VmSpec, from_dict
from pvcd.vmxml import parse_domain_xml, renamed_domain_xml
from tests.unit.test_vmxml import FULL_XML


def spec_of(xml: str) -> VmSpec:
    definition = parse_domain_xml(xml)
    return VmSpec(uuid=definition.uuid, name=definition.name, xml=definition.xml, node="node1")


def test_the_volumes_named_after_the_vm_follow_it() -> None:
    xml = FULL_XML.replace("images/base@golden", "vms/web1") \
        .replace("vms/web1_sdb", "vms/web10_sdb")  # web10_... is not web1's
    assert volume_renames(spec_of(xml), "db") == [("vms", "web1_sda", "db_sda"),
                                                  ("vms", "web1", "db")]
    assert volume_renames(spec_of(FULL_XML), "db") == [("vms", "web1_sda", "db_sda"),
                                                       ("vms", "web1_sdb", "db_sdb")]


def test_the_xml_changes_only_in_the_name_and_the_renamed_sources() -> None:
    before = parse_domain_xml(FULL_XML)
    after = parse_domain_xml(renamed_domain_xml(before.xml, "db", {"vms/web1_sda": "vms/db_sda"}))
    assert after.name == "db" and after.uuid == before.uuid
    assert [d.name for d in after.disks] == ["vms/db_sda", *[d.name for d in before.disks[1:]]]
    assert after.xml == before.xml.replace("<name>web1</name>", "<name>db</name>") \
        .replace("name=\"vms/web1_sda\"", "name=\"vms/db_sda\"")


@pytest.mark.parametrize("name", ["", " db", "a/b", "x\n"])
def test_an_invalid_new_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidValue):
        renamed_domain_xml(FULL_XML, name, {})


def test_a_removal_asks_for_one_volume_request_per_disk() -> None:
    removal = VmRemoval(disks=[["vms", "a", "1-x"], ["vms", "b", "2-y"]])
    requests = removal.volume_requests(created=5.0)
    assert [(r.id, r.op, r.target, r.args, r.created) for r in requests] == [
        ("1-x", "volume-remove", "primary", {"pool": "vms", "volume": "a", "with_snapshots": True},
         5.0),
        ("2-y", "volume-remove", "primary", {"pool": "vms", "volume": "b", "with_snapshots": True},
         5.0)]
    spec = spec_of(FULL_XML)
    assert not spec.removing
    spec.remove = removal
    assert spec.removing
    assert from_dict(VmSpec, spec.to_doc()) == spec  # round trip, nested removal included
    assert from_dict(VmSpec, {**spec.to_doc(), "remove": None}).remove is None
