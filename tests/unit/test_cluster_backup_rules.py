"""The check of a cluster backup before a restore (pvcd.specs.cluster_backup, extensions.md §9):
a whole, valid document passes; each way of breaking it is refused with a message saying where
and what, before anything could be written."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from pvcd.domain.errors import InvalidValue, NotFound
from pvcd.domain.records import AclSpec, NetworkSpec, StaticLeaseSpec, VmSpec
from pvcd.lab.guest import tiny_guest_xml
from pvcd.specs.cluster_backup import check_backup, included, parse_backup

UUID = "7d9a5b2e-1111-4222-8333-444455556666"
UUID2 = "7d9a5b2e-1111-4222-8333-444455556667"
NODES = ("node1", "node2")


def rule_body(rule: str) -> dict[str, Any]:
    if "bogus" in rule:
        raise InvalidValue(f"rule '{rule}' is not an nftables rule")
    return {"expr": [{"rule": rule}]}


def vm_doc(name: str = "web1", uuid: str = UUID, **fields: Any) -> dict[str, Any]:
    spec = VmSpec(uuid=uuid, name=name, xml=tiny_guest_xml(name, uuid), node="node1",
                  memory=64, vcpu=1, state="stop", tags=[])
    return {**spec.to_doc(), **fields}


def valid() -> dict[str, Any]:
    net = NetworkSpec(vni=100, description="prod", type="managed", domain="prod.example",
                      ip4_network="10.100.0.0/24", ip4_gateway="10.100.0.1", dhcp4=True,
                      dhcp4_start="10.100.0.100", dhcp4_end="10.100.0.200")
    acl = AclSpec("ssh", "in", 0, "tcp dport 22 accept", rule_body("tcp dport 22 accept"))
    return {
        "format": "pvcd-cluster-backup", "format_version": 1, "schema_version": 2,
        "created": 1.0, "primary_node": "node1",
        "znodes": {
            "schema/version": {"version": 2},
            "networks/100": net.to_doc(),
            "networks/100/static": {}, "networks/100/leases": {}, "networks/100/acl": {},
            "networks/100/acl/in": {}, "networks/100/acl/out": {},
            "networks/100/static/52:54:00:00:00:01":
                StaticLeaseSpec("52:54:00:00:00:01", "10.100.0.10", "db").to_doc(),
            "networks/100/leases/52:54:00:00:00:02":
                {"mac": "52:54:00:00:00:02", "ip": "10.100.0.150", "hostname": None,
                 "expires": 0},
            "networks/100/acl/in/ssh": acl.to_doc(),
            "network-names/prod": {"vni": 100},
            f"vms/{UUID}": vm_doc(),
            f"vms/{UUID}/snapshots/before": {"name": "before", "created": 1.0},
            "vm-names/web1": {"uuid": UUID},
            "provisioner/system/small": {"name": "small", "vcpu_count": 1, "vram_mb": 512,
                                         "node_limit": ["node1"]},
            "provisioner/network/prod": {"name": "prod", "networks": [{"vni": 100}]},
            "provisioner/storage/disks": {"name": "disks", "disks": [
                {"disk_id": "sda", "pool": "vms", "disk_size_gb": 4}]},
            "provisioner/userdata/basic": {"name": "basic",
                                           "userdata": "#cloud-config\nhostname: a\n"},
            "provisioner/profile/web": {"name": "web", "system_template": "small",
                                        "network_template": "prod",
                                        "storage_template": "disks", "userdata": "basic",
                                        "script": "clone"},
            "cluster/autobackup": {"backup_path": "/srv/backups"},
        },
    }


def check(doc: Any) -> Any:
    return check_backup(doc, 2, NODES, rule_body)


def refused(change: Callable[[dict[str, Any]], Any], *words: str,
            error: type[Exception] = InvalidValue) -> str:
    doc = valid()
    change(doc)
    with pytest.raises(error) as caught:
        check(doc)
    message = str(caught.value)
    for word in words:
        assert word in message, message
    return message


def test_a_whole_backup_passes_and_gains_missing_network_folders() -> None:
    doc = valid()
    del doc["znodes"]["networks/100/acl/out"]
    backup = check(doc)
    assert backup.znodes["networks/100/acl/out"] == {}
    assert backup.summary() == "1 VMs, 1 networks, 5 provisioner objects"
    assert backup.primary_node == "node1"


def test_what_a_backup_holds() -> None:
    assert included("networks/5/leases/52:54:00:00:00:01")
    assert included(f"vms/{UUID}") and included(f"vms/{UUID}/snapshots/a")
    for left_out in (f"vms/{UUID}/status", f"vms/{UUID}/owner", f"vms/{UUID}/console",
                     "nodes/node1", "sessions/x", "storage/pools/vms", "tasks/1",
                     "faults/X", "logs/node1", "cluster/maintenance", "cluster/restore",
                     "coordinator/primary", "fencing/node1", "provisioner/system", "vms"):
        assert not included(left_out), left_out


@pytest.mark.parametrize("doc", [[], "text", 3, None])
def test_not_an_object(doc: Any) -> None:
    with pytest.raises(InvalidValue, match="not a JSON object"):
        check(doc)


def test_not_json() -> None:
    with pytest.raises(InvalidValue, match="not a JSON document"):
        parse_backup(b"{nope")


def test_a_pvc_dump_is_foreign() -> None:
    pvc = {"/pvc/nodes": "", "/pvc/domains": "", "/pvc/networks": ""}
    with pytest.raises(InvalidValue, match=r"PVC 1\.0 dump"):
        check(pvc)


def test_another_format() -> None:
    refused(lambda d: d.update(format="proxmox"), '"proxmox"', "pvcd-cluster-backup")


@pytest.mark.parametrize("version", [2, "1", True, None])
def test_format_version(version: Any) -> None:
    refused(lambda d: d.update(format_version=version), "format_version")


@pytest.mark.parametrize("version", [1, 3, "2", None])
def test_schema_version_must_be_the_clusters(version: Any) -> None:
    refused(lambda d: d.update(schema_version=version), "schema version 2")


def test_znodes_missing() -> None:
    refused(lambda d: d.pop("znodes"), "no znodes object")


def test_schema_version_document_missing() -> None:
    refused(lambda d: d["znodes"].pop("schema/version"), "schema/version")


@pytest.mark.parametrize("path", ["nodes/node1", "sessions/abc", "storage/pools/vms",
                                  f"vms/{UUID}/status", "cluster/maintenance", "tasks/1",
                                  "cluster/restore", "provisioner/system"])
def test_paths_a_backup_never_holds(path: str) -> None:
    refused(lambda d: d["znodes"].__setitem__(path, {}), "never holds")


@pytest.mark.parametrize("path", ["/networks/1", "networks//1", "networks/../nodes",
                                  "vm-names/a\nb"])
def test_malformed_paths(path: str) -> None:
    refused(lambda d: d["znodes"].__setitem__(path, {}), "not a path")


def test_invalid_network() -> None:
    refused(lambda d: d["znodes"]["networks/100"].update(ip4_gateway="10.200.0.1"),
            "networks/100", "ip4_gateway")


def test_network_document_of_another_vni() -> None:
    refused(lambda d: d["znodes"]["networks/100"].update(vni=101), "networks/100", "vni")


def test_network_path_not_a_vni() -> None:
    refused(lambda d: d["znodes"].__setitem__("networks/abc", {}), "VNI")


def test_lease_of_a_missing_network() -> None:
    refused(lambda d: d["znodes"].__setitem__(
        "networks/7/static/52:54:00:00:00:09", {}), "no networks/7")


def test_invalid_static_lease() -> None:
    refused(lambda d: d["znodes"]["networks/100/static/52:54:00:00:00:01"].update(
        ip="10.9.9.9"), "static/52:54:00:00:00:01", "10.9.9.9")


def test_two_static_leases_for_one_address() -> None:
    refused(lambda d: d["znodes"].__setitem__(
        "networks/100/static/52:54:00:00:00:03",
        StaticLeaseSpec("52:54:00:00:00:03", "10.100.0.10", None).to_doc()), "already reserved")


def test_invalid_active_lease() -> None:
    refused(lambda d: d["znodes"].__setitem__("networks/100/leases/52:54:00:00:00:04", "x"),
            "leases/52:54:00:00:00:04")


def test_acl_rule_that_nft_refuses() -> None:
    refused(lambda d: d["znodes"]["networks/100/acl/in/ssh"].update(rule="bogus"),
            "acl/in/ssh", "bogus")


def test_acl_in_the_wrong_direction_folder() -> None:
    def move(d: dict[str, Any]) -> None:
        d["znodes"]["networks/100/acl/out/ssh"] = d["znodes"].pop("networks/100/acl/in/ssh")
    refused(move, "direction")


def test_unknown_document_under_a_network() -> None:
    refused(lambda d: d["znodes"].__setitem__("networks/100/extra", {}), "a network holds only")


def test_network_without_its_index_entry() -> None:
    refused(lambda d: d["znodes"].pop("network-names/prod"), "network-names/prod")


def test_index_entry_of_no_network() -> None:
    refused(lambda d: d["znodes"].__setitem__("network-names/ghost", {"vni": 5}),
            "network-names/ghost")


def test_overlapping_domains() -> None:
    def second(d: dict[str, Any]) -> None:
        other = NetworkSpec(vni=101, description="dev", type="managed",
                            domain="a.prod.example")
        d["znodes"]["networks/101"] = other.to_doc()
        d["znodes"]["network-names/dev"] = {"vni": 101}
    refused(second, "domain")


def test_vm_xml_is_checked() -> None:
    refused(lambda d: d["znodes"][f"vms/{UUID}"].update(xml="<domain><oops"),
            f"vms/{UUID}")


def test_vm_stored_under_another_uuid() -> None:
    def move(d: dict[str, Any]) -> None:
        d["znodes"][f"vms/{UUID2}"] = d["znodes"].pop(f"vms/{UUID}")
        d["znodes"].pop(f"vms/{UUID}/snapshots/before")
        d["znodes"]["vm-names/web1"] = {"uuid": UUID2}
    refused(move, f"vms/{UUID2}")


def test_vm_with_an_invalid_state() -> None:
    refused(lambda d: d["znodes"][f"vms/{UUID}"].update(state="dancing"), "dancing")


def test_vm_without_its_fields() -> None:
    refused(lambda d: d["znodes"].__setitem__(f"vms/{UUID}", {"name": "x"}), f"vms/{UUID}")


def test_two_vms_of_one_name() -> None:
    def twin(d: dict[str, Any]) -> None:
        d["znodes"][f"vms/{UUID2}"] = vm_doc("web1", UUID2)
    refused(twin, "VM names are unique")


def test_vm_without_its_name_entry() -> None:
    refused(lambda d: d["znodes"].pop("vm-names/web1"), "vm-names/web1")


def test_name_entry_of_another_vm() -> None:
    refused(lambda d: d["znodes"].__setitem__("vm-names/web1", {"uuid": UUID2}),
            "vm-names/web1")


def test_snapshot_of_a_missing_vm() -> None:
    refused(lambda d: d["znodes"].__setitem__(f"vms/{UUID2}/snapshots/x", {}),
            f"no vms/{UUID2}")


def test_unknown_provisioner_kind() -> None:
    refused(lambda d: d["znodes"].__setitem__("provisioner/script/x", {"name": "x"}),
            "not a provisioner kind")


def test_provisioner_object_named_otherwise() -> None:
    refused(lambda d: d["znodes"]["provisioner/system/small"].update(name="big"), "names 'big'")


def test_system_template_limited_to_an_unknown_node() -> None:
    refused(lambda d: d["znodes"]["provisioner/system/small"].update(node_limit=["node9"]),
            "provisioner/system/small", "node9")


def test_network_template_naming_a_missing_network() -> None:
    refused(lambda d: d["znodes"]["provisioner/network/prod"].update(networks=[{"vni": 7}]),
            "provisioner/network/prod", "7", error=NotFound)


def test_storage_template_disk_rules() -> None:
    refused(lambda d: d["znodes"]["provisioner/storage/disks"]["disks"][0].update(
        disk_id="xyz"), "disk_id")


def test_invalid_userdata() -> None:
    refused(lambda d: d["znodes"]["provisioner/userdata/basic"].update(
        userdata="#cloud-config\n- a list\n"), "provisioner/userdata/basic", "mapping")


def test_profile_naming_a_missing_template() -> None:
    refused(lambda d: d["znodes"].pop("provisioner/system/small"),
            "provisioner/profile/web", "small", error=NotFound)


def test_autobackup_must_be_an_object() -> None:
    refused(lambda d: d["znodes"].__setitem__("cluster/autobackup", []), "cluster/autobackup")


def test_the_check_changes_nothing_in_the_document() -> None:
    doc = valid()
    before = copy.deepcopy(doc)
    check(doc)
    assert doc == before
