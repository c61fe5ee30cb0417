"""The provisioner's pure rules: MAC templates (`pvcd.domain.mac_template`) and the checks of
`pvcd.specs.provisioner` that the API and the create task share."""

from __future__ import annotations

import pytest

from pvcd.domain.errors import InvalidValue, NotFound
from pvcd.domain.mac_template import check_mac_template, render_mac
from pvcd.domain.provisioner import Profile, StorageTemplate, SystemTemplate, TemplateDisk
from pvcd.specs.provisioner import (
    check_arguments,
    check_filesystem_arg,
    check_mountpoint,
    check_object_name,
    check_profile,
    check_storage_template,
    check_system_template,
    check_userdata,
    parse_template_vni,
)


@pytest.mark.parametrize("vm,nic,mac", [
    ("web1", 0, "52:54:01:a0:01:00"),
    ("web17", 3, "52:54:01:a0:01:03"),  # 17 mod 16
    ("db", 1, "52:54:01:a0:00:01"),  # no number: 0
    ("vm-0x10", 17, "52:54:01:a0:0a:01"),  # the trailing number is 10 (decimal): a
])
def test_render_mac_fills_the_three_placeholders(vm: str, nic: int, mac: str) -> None:
    assert render_mac("{prefix}:a0:0{vmid}:0{netid}", vm, nic) == mac


@pytest.mark.parametrize("template,message", [
    ("{prefix}:a0:0{vmid}:0{netid.__class__}", "unknown placeholder"),
    ("{0}:00:00:00:00:00", "unknown placeholder"),
    ("{prefix}:a0:{vmid[0]}:00", "unknown placeholder"),
    ("{prefix}:a0:0{vmid}:0{netid", "unmatched"),
    ("{prefix}:a0:0{vmid}", "not a MAC"),
    ("{prefix}:a0:0{vmid}:{netid}", "not a MAC"),  # one digit
    ("01:00:5e:00:0{vmid}:0{netid}", "multicast"),
    ("zz:54:01:a0:0{vmid}:0{netid}", "not a MAC"),
    ("{prefix}:" + "a" * 80, "at most"),
])
def test_bad_mac_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(InvalidValue, match=message):
        check_mac_template(template)


def test_a_fixed_mac_template_is_valid_but_the_same_for_every_vm() -> None:
    assert check_mac_template("02:00:00:00:00:01") == "02:00:00:00:00:01"


@pytest.mark.parametrize("name,ok", [
    ("web", True), ("a" * 63, True), ("a" * 64, False), ("_x.y+z-1", True), (".x", False),
    ("-x", False), ("a/b", False), ("a b", False), ("", False), ("é", False),
])
def test_object_names_follow_the_storage_name_rule(name: str, ok: bool) -> None:
    if ok:
        assert check_object_name(name, "profile") == name
    else:
        with pytest.raises(InvalidValue, match="1-63 letters"):
            check_object_name(name, "profile")


def test_system_template_ranges_and_nodes() -> None:
    good = SystemTemplate("t", 2, 1024, node_limit=["node1"])
    assert check_system_template(good, ["node1", "node2"]) is good
    for bad, message in [
        (SystemTemplate("t", 0, 1024), "vcpus 0 is out of range"),
        (SystemTemplate("t", 257, 1024), "vcpus"),
        (SystemTemplate("t", 1, 63), "vram"),
        (SystemTemplate("t", 1, 64, migration_max_downtime=0), "migration_max_downtime"),
        (SystemTemplate("t", 1, 64, vnc_bind="localhost"), "vnc_bind"),
        (SystemTemplate("t", 1, 64, node_limit=["node9"]), "unknown node node9"),
        (SystemTemplate("t", 1, 64, node_selector="cheapest"), "valid values are"),
    ]:
        with pytest.raises(InvalidValue, match=message):
            check_system_template(bad, ["node1", "node2"])


def test_host_bridges_and_bad_vnis_are_refused() -> None:
    assert parse_template_vni(" 100 ") == 100
    for text in ("upstream", "cluster", "storage"):
        with pytest.raises(InvalidValue, match="host bridge"):
            parse_template_vni(text)
    for text in ("0", "16777216", "1e3", "-1", "²"):
        with pytest.raises(InvalidValue, match="invalid"):
            parse_template_vni(text)


@pytest.mark.parametrize("arg,ok", [
    ("-L", True), ("-L=root", True), ("-m=1", True), ("--force", True), ("-O=^has_journal", False),
    ("-L root", False), ("-L=$(reboot)", False), ("-L=a;b", False), ("L", False),
    ("-L=`x`", False), ("-", False), ("-L=a\nb", False),
])
def test_filesystem_args_are_single_safe_tokens(arg: str, ok: bool) -> None:
    if ok:
        assert check_filesystem_arg(arg) == arg
    else:
        with pytest.raises(InvalidValue, match="no whitespace or shell characters"):
            check_filesystem_arg(arg)


def test_mountpoints_are_absolute_clean_paths() -> None:
    assert check_mountpoint("/srv/data") == "/srv/data"
    for bad in ("srv", "/srv/../etc", "/a b", "/a//b", "/a/"):
        with pytest.raises(InvalidValue, match="absolute path"):
            check_mountpoint(bad)


def test_storage_template_disks() -> None:
    pools = ["vms"]
    good = StorageTemplate("s", [TemplateDisk("sda", "vms", source_volume="img", disk_size_gb=4),
                                 TemplateDisk("vdb", "vms", disk_size_gb=2, filesystem="ext4",
                                              filesystem_args=["-L=data"], mountpoint="/srv")])
    assert check_storage_template(good, pools) is good
    for disks, message in [
        ([TemplateDisk("sda", "vms", disk_size_gb=1), TemplateDisk("sda", "vms",
                                                                   disk_size_gb=1)],
         "more than once"),
        ([TemplateDisk("hda", "vms", disk_size_gb=1)], "sd\\[a-z\\]"),
        ([TemplateDisk("sda", "vms")], "source_volume .* or disk_size"),
        ([TemplateDisk("sda", "vms", disk_size_gb=0)], "disk_size"),
        ([TemplateDisk("sda", "vms", source_volume="img", filesystem="ext4")],
         "only for new volumes"),
        ([TemplateDisk("sda", "vms", disk_size_gb=1, filesystem="zfs")], "valid values"),
        ([TemplateDisk("sda", "vms", disk_size_gb=1, mountpoint="/srv")], "needs a filesystem"),
        ([TemplateDisk("sda", "vms", disk_size_gb=1, filesystem_args=["-L=x"])],
         "needs a filesystem"),
    ]:
        with pytest.raises(InvalidValue, match=message):
            check_storage_template(StorageTemplate("s", disks), pools)
    with pytest.raises(NotFound, match="pool nope not found"):
        check_storage_template(StorageTemplate("s", [TemplateDisk("sda", "nope",
                                                                  disk_size_gb=1)]), pools)


def test_userdata_rules() -> None:
    assert check_userdata("#cloud-config\nhostname: web1\n").startswith("#cloud-config")
    assert check_userdata("#!/bin/sh\necho hi\n")  # a script: served unchecked
    assert check_userdata("Content-Type: multipart/mixed; boundary=x\n")
    with pytest.raises(InvalidValue, match="not valid YAML at line 3"):
        check_userdata("#cloud-config\nhostname: [web1\n")
    with pytest.raises(InvalidValue, match="not a YAML mapping"):
        check_userdata("#cloud-config\n- a\n- b\n")
    with pytest.raises(InvalidValue, match="not a YAML mapping"):
        check_userdata("#cloud-config\n")
    with pytest.raises(InvalidValue, match="not valid YAML"):  # no Python objects are built
        check_userdata("#cloud-config\nx: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(InvalidValue, match="at most 262144 bytes"):
        check_userdata("#" * (256 * 1024 + 1))
    with pytest.raises(InvalidValue, match="UTF-8"):
        check_userdata("\ud800")


def test_method_arguments() -> None:
    assert check_arguments("clone", ["source_snapshot=gold"]) == ["source_snapshot=gold"]
    assert check_arguments("blank", ["cdrom=isos/debian.iso"])
    for script, args, message in [
        ("clone", ["cdrom=isos/x"], "has no argument 'cdrom'; its arguments are: "
                                    "source_snapshot"),
        ("ova", ["x=1"], "its arguments are: none"),
        ("blank", ["cdrom=noslash"], "<pool>/<volume>"),
        ("clone", ["source_snapshot"], "name=value"),
        ("clone", ["source_snapshot=a", "source_snapshot=b"], "twice"),
        ("clone", ["source_snapshot=a b"], "snapshot name"),
        ("debootstrap", [], "does not run uploaded provisioning scripts"),
    ]:
        with pytest.raises(InvalidValue, match=message):
            check_arguments(script, args)


def test_profile_rules() -> None:
    objects = {("system", "s"), ("storage", "copy"), ("storage", "new"), ("ova", "appliance")}

    def exists(kind: str, name: str) -> bool:
        return (kind, name) in objects

    copy = StorageTemplate("copy", [TemplateDisk("sda", "vms", source_volume="img")])
    new = StorageTemplate("new", [TemplateDisk("sda", "vms", disk_size_gb=1)])
    assert check_profile(Profile("p", system_template="s", storage_template="copy"), exists,
                         copy)
    assert check_profile(Profile("p", system_template="s", storage_template="new",
                                 script="blank"), exists, new)
    assert check_profile(Profile("p", "ova", "s", script="ova", ova="appliance"), exists, None)
    for profile, storage, error, message in [
        (Profile("p", system_template="nope", storage_template="new"), new, NotFound,
         "system template 'nope' not found"),
        (Profile("p", system_template="s", userdata="nope", storage_template="new"), new,
         NotFound, "userdata 'nope' not found"),
        (Profile("p", system_template="s"), None, InvalidValue, "clone needs a storage"),
        (Profile("p", system_template="s", storage_template="copy", script="blank"), copy,
         InvalidValue, "copies a source_volume to disk sda"),
        (Profile("p", "ova", "s", script="ova"), None, InvalidValue, "needs ova"),
        (Profile("p", "ova", "s", script="ova", ova="appliance", storage_template="new"), new,
         InvalidValue, "no storage_template"),
        (Profile("p", "ova", "s", script="clone", ova="appliance"), None, InvalidValue,
         "uses the method ova"),
        (Profile("p", system_template="s", storage_template="new", script="ova"), new,
         InvalidValue, "needs profile_type ova"),
        (Profile("p", system_template="s", storage_template="new", arguments=["cdrom=a/b"]),
         new, InvalidValue, "no argument 'cdrom'"),
        (Profile("p", system_template="s", storage_template="new", script="pfsense"), new,
         InvalidValue, "built-in methods: clone, blank, ova"),
    ]:
        with pytest.raises(error, match=message):
            check_profile(profile, exists, storage)
