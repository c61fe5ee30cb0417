"""The plan of a VM creation from a profile (extensions.md §3.9): every refusal "before the
task", and what a valid request plans (disks, sizes, MACs, node), judged purely."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from pvcd.domain.errors import Conflict, InvalidValue, NotFound
from pvcd.domain.mac_template import render_mac
from pvcd.domain.placement import NodeLoad
from pvcd.domain.provisioner import (
    NetworkTemplate,
    Ova,
    OvaVolume,
    Profile,
    StorageTemplate,
    SystemTemplate,
    TemplateDisk,
    TemplateNetwork,
    Userdata,
)
from pvcd.domain.provisioning import (
    GIB,
    ClusterFacts,
    CreateRequest,
    ProvisionerObjects,
    plan_create,
)


def objects(**profile: Any) -> ProvisionerObjects:
    base = dict(name="p", system_template="small", network_template="net",
                storage_template="disks", script="clone", userdata="ud")
    base.update(profile)
    return ProvisionerObjects(
        systems={"small": SystemTemplate("small", 2, 1024),
                 "pinned": SystemTemplate("pinned", 1, 512, node_limit=["node2"])},
        networks={"net": NetworkTemplate("net", None, [TemplateNetwork(100)]),
                  "fixed": NetworkTemplate("fixed", "{prefix}:a0:0{vmid}:0{netid}",
                                           [TemplateNetwork(100), TemplateNetwork(200)])},
        storages={"disks": StorageTemplate("disks", [
            TemplateDisk("sda", "vms", source_volume="image", disk_size_gb=4),
            TemplateDisk("sdb", "vms", disk_size_gb=2, filesystem="ext4",
                         filesystem_args=["-L=data"])]),
            "blank": StorageTemplate("blank", [TemplateDisk("vda", "vms", disk_size_gb=1)])},
        userdata={"ud": Userdata("ud", "#cloud-config\n")},
        ovas={"appliance": Ova("appliance", "vms", [
            OvaVolume("sda", 3, "vms", "ova_appliance_sda", "vmdk")])},
        profiles={"p": Profile(**base)})  # type: ignore[arg-type]


def facts(**changes: Any) -> ClusterFacts:
    base: dict[str, Any] = dict(
        vm_names=frozenset({"taken"}), macs={"52:54:01:a0:07:00": "other"},
        vnis=frozenset({100, 200}), pools=frozenset({"vms"}),
        volumes={("vms", "image"): 2 * GIB, ("vms", "ova_appliance_sda"): GIB,
                 ("vms", "iso"): GIB},
        snapshots={("vms", "image", "golden"): GIB},
        nodes=[NodeLoad("node1", "run", "ready", memory_total=4096),
               NodeLoad("node2", "run", "ready", memory_total=4096, memory_allocated=1024)])
    base.update(changes)
    return ClusterFacts(**base)


def macs() -> Any:
    counter = itertools.count(1)
    return lambda: f"52:54:00:00:00:{next(counter):02x}"


def plan(request: CreateRequest | None = None, objs: ProvisionerObjects | None = None,
         cluster: ClusterFacts | None = None) -> Any:
    return plan_create(request or CreateRequest("web1", "p"), objs or objects(),
                       cluster or facts(), macs())


def test_a_clone_profile_plans_a_grown_copy_and_a_formatted_blank_disk() -> None:
    planned = plan()
    copy, blank = planned.disks
    assert (copy.spec, copy.how, copy.source, copy.size, copy.counted) == \
        ("vms/web1_sda", "copy", "image", 4 * GIB, 2 * GIB)
    assert (blank.spec, blank.how, blank.size, blank.filesystem, blank.filesystem_args) == \
        ("vms/web1_sdb", "blank", 2 * GIB, "ext4", ("-L=data",))
    assert planned.space_needed() == {"vms": 4 * GIB}
    assert [(n.vni, n.mac) for n in planned.nics] == [(100, "52:54:00:00:00:01")]
    assert planned.node == "node1"  # least memory assigned
    assert planned.steps == 4


def test_a_source_snapshot_is_copied_at_its_size() -> None:
    planned = plan(CreateRequest("web1", "p", arguments=("source_snapshot=golden",)))
    assert (planned.disks[0].source_snapshot, planned.disks[0].counted) == ("golden", GIB)


def test_templated_macs_and_node_limit() -> None:
    planned = plan(CreateRequest("web12", "p"),
                   objects(network_template="fixed", system_template="pinned"))
    assert [n.mac for n in planned.nics] == ["52:54:01:a0:0c:00", "52:54:01:a0:0c:01"]
    assert planned.node == "node2"
    assert render_mac("{prefix}:a0:0{vmid}:0{netid}", "db", 17) == "52:54:01:a0:00:01"


def test_an_ova_profile_converts_its_images() -> None:
    planned = plan(objs=objects(profile_type="ova", script="ova", ova="appliance",
                                storage_template=None))
    (disk,) = planned.disks
    assert (disk.spec, disk.how, disk.source, disk.source_format, disk.size) == \
        ("vms/web1_sda", "convert", "ova_appliance_sda", "vmdk", 3 * GIB)


def test_blank_with_a_cdrom_argument() -> None:
    planned = plan(CreateRequest("web1", "p", arguments=("cdrom=vms/iso",)),
                   objects(script="blank", storage_template="blank"))
    assert planned.cdrom == ("vms", "iso") and planned.disks[0].how == "blank"


@pytest.mark.parametrize(("request_", "objs", "cluster", "error", "words"), [
    (CreateRequest("-bad", "p"), None, None, InvalidValue, "is invalid"),
    (CreateRequest("autobackup", "p"), None, None, InvalidValue, "reserved"),
    (CreateRequest("taken", "p"), None, None, Conflict, "already exists"),
    (CreateRequest("web1", "p", define_vm=False, start_vm=True), None, None, InvalidValue,
     "start_vm"),
    (CreateRequest("web1", "nope"), None, None, NotFound, "profile 'nope'"),
    (CreateRequest("web1", "p", description="x" * 4097), None, None, InvalidValue,
     "at most 4096"),
    (None, objects(system_template="gone"), None, NotFound, "system template 'gone'"),
    (None, objects(network_template="gone"), None, NotFound, "network template 'gone'"),
    (None, objects(storage_template="gone"), None, NotFound, "storage template 'gone'"),
    (None, objects(userdata="gone"), None, NotFound, "userdata 'gone'"),
    (None, None, facts(vnis=frozenset({200})), NotFound, "network 100"),
    (None, None, facts(pools=frozenset()), NotFound, "pool vms"),
    (None, None, facts(volumes={}), NotFound, "source volume vms/image"),
    (CreateRequest("web1", "p", arguments=("source_snapshot=nope",)), None, None, NotFound,
     "vms/image@nope"),
    (CreateRequest("web1", "p", arguments=("size=3",)), None, None, InvalidValue,
     "knows no argument size"),
    (CreateRequest("web1", "p", arguments=("novalue",)), None, None, InvalidValue,
     "name=value"),
    (None, None, facts(volumes={("vms", "image"): 2 * GIB, ("vms", "web1_sdb"): 1}), Conflict,
     "vms/web1_sdb already exists"),
    (None, None, facts(volumes={("vms", "image"): 8 * GIB}), InvalidValue, "less than"),
    (None, objects(script="blank"), None, InvalidValue, "method blank makes every disk blank"),
    (None, objects(storage_template=None), None, InvalidValue, "no storage template"),
    (CreateRequest("web1", "p", arguments=("cdrom=vms/none",)),
     objects(script="blank", storage_template="blank"), None, NotFound, "cdrom volume"),
    (None, objects(profile_type="ova", script="ova", ova="gone", storage_template=None), None,
     NotFound, "OVA 'gone'"),
    (None, objects(profile_type="ova", script="ova", ova="appliance", storage_template=None),
     facts(volumes={}), NotFound, "ova_appliance_sda"),
    (None, None, facts(nodes=[NodeLoad("node1", "run", "ready", memory_total=512)]),
     InvalidValue, "no node can take the VM"),
    (None, objects(system_template="pinned"),
     facts(nodes=[NodeLoad("node1", "run", "ready", memory_total=4096)]), InvalidValue,
     "within node_limit node2"),
    (CreateRequest("web7", "p"), objects(network_template="fixed"), None, Conflict,
     "already used by VM 'other'"),
])
def test_every_refusal_before_the_task(request_: CreateRequest | None,
                                        objs: ProvisionerObjects | None,
                                        cluster: ClusterFacts | None, error: type[Exception],
                                        words: str) -> None:
    with pytest.raises(error, match=None) as raised:
        plan(request_, objs, cluster)
    assert words in str(raised.value)


def test_args_round_trip_for_the_task() -> None:
    request = CreateRequest("web1", "p", define_vm=True, start_vm=False,
                            arguments=("source_snapshot=golden",), description="d")
    assert CreateRequest.from_args(request.to_args()) == request
