"""The provisioner's objects over the real API and store (extensions.md §3.1-§3.6, §3.8):
every path and method, each 510 of the spec (and that it changed nothing), referential
integrity, and races between clients. "Nothing changed" is read at once: the API applies its
own writes to the cache it answers from before it replies."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from pvcd.domain.errors import Conflict
from pvcd.domain.records import VmSpec
from pvcd.lab.guest import tiny_guest_xml
from pvcd.state.store import Op
from tests.apiclient import ApiClient
from tests.fakes.api import running_api
from tests.fakes.nodes import SimCluster
from tests.fakes.state import ClusterState

P = "/provisioner"


@dataclass
class Cluster:
    api: ApiClient
    state: ClusterState

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.api.call(method, path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    def refused(self, method: str, path: str, message: str, **kwargs: Any) -> str:
        """510 with `message` in it, and the provisioner's objects unchanged."""
        before = self.objects()
        response = self.api.call(method, path, **kwargs)
        assert response.status_code == 510, response.text
        assert message in response.json()["message"], response.json()["message"]
        assert self.objects() == before
        return str(response.json()["message"])

    def objects(self) -> dict[str, Any]:
        paths = self.state.paths
        return {f"{kind}/{name}": self.state.cache.get(paths.provisioner_object(kind, name))
                for kind in ("system", "network", "storage", "userdata", "ova", "profile")
                for name in self.state.cache.children(paths.provisioner_kind(kind))}


@pytest.fixture
def c(sim: SimCluster) -> Iterator[Cluster]:
    for name in ("node1", "node2"):
        sim.add_node(name)
    sim.step()
    sim.state.put(sim.state.paths.storage_pool("vms"), {"name": "vms"})
    with running_api(sim.state, sim.clock) as api:
        cluster = Cluster(api, sim.state)
        for vni in (100, 200):
            cluster.ok("POST", "/network", data={"vni": vni, "description": f"net{vni}",
                                                 "nettype": "bridged"})
        yield cluster


def add_basics(c: Cluster) -> None:
    c.ok("POST", f"{P}/template/system", data={"name": "small", "vcpus": 1, "vram": 512})
    c.ok("POST", f"{P}/template/network", data={"name": "lan"})
    c.ok("POST", f"{P}/template/storage", data={"name": "disks"})
    c.ok("POST", f"{P}/template/storage/disks/disk", data={"disk_id": "sda", "pool": "vms",
                                                           "disk_size": 4})
    c.ok("POST", f"{P}/userdata", data={"name": "ud", "data": "#cloud-config\na: 1\n"})


# --- system templates ---------------------------------------------------------------------

def test_system_templates(c: Cluster) -> None:
    c.ok("POST", f"{P}/template/system", data={"name": "small", "vcpus": 2, "vram": 2048,
                                                "node_limit": "node1, node2", "vnc": "",
                                                "migration_method": "live"})
    c.ok("POST", f"{P}/template/system/big", json={"vcpus": 8, "vram": 8192, "serial": False})
    big, small = c.ok("GET", f"{P}/template/system")  # sorted by name
    assert small == {"name": "small", "vcpu_count": 2, "vram_mb": 2048, "serial": True,
                     "vnc": True, "vnc_bind": "127.0.0.1", "node_limit": ["node1", "node2"],
                     "node_selector": "none", "node_autostart": False,
                     "migration_method": "live", "migration_max_downtime": 300, "ova": None}
    assert big["name"] == "big" and big["serial"] is False and big["vcpu_count"] == 8
    assert [t["name"] for t in c.ok("GET", f"{P}/template/system?limit=^b")] == ["big"]
    assert c.ok("GET", f"{P}/template/system/small") == [small]
    c.ok("PUT", f"{P}/template/system/small", data={"vram": 4096, "node_limit": ""})
    changed = c.ok("GET", f"{P}/template/system/small")[0]
    assert (changed["vram_mb"], changed["node_limit"], changed["vcpu_count"]) == (4096, [], 2)
    c.ok("DELETE", f"{P}/template/system/big")
    assert [t["name"] for t in c.ok("GET", f"{P}/template/system")] == ["small"]


@pytest.mark.parametrize("method,path,data,message", [
    ("POST", "/template/system", {"name": "x", "vram": 512}, "missing mandatory value 'vcpus'"),
    ("POST", "/template/system", {"name": "x", "vcpus": 1}, "missing mandatory value 'vram'"),
    ("POST", "/template/system", {"name": "x", "vcpus": 0, "vram": 512}, "from 1 up to 256"),
    ("POST", "/template/system", {"name": "x", "vcpus": 1, "vram": 32}, "from 64"),
    ("POST", "/template/system", {"name": "x", "vcpus": 1, "vram": 64, "node_limit": "node7"},
     "unknown node node7"),
    ("POST", "/template/system", {"name": "x", "vcpus": 1, "vram": 64, "serial": "maybe"},
     "serial 'maybe' is invalid"),
    ("POST", "/template/system", {"name": "x", "vcpus": 1, "vram": 64, "vnc_bind": "here"},
     "vnc_bind"),
    ("POST", "/template/system", {"name": "x", "vcpus": 1, "vram": 64,
                                  "migration_max_downtime": 60001}, "up to 60000"),
    ("POST", "/template/system", {"name": "x", "vcpus": 1, "vram": 64,
                                  "node_selector": "best"}, "valid values are"),
    ("POST", "/template/system", {"name": "small", "vcpus": 1, "vram": 64}, "already exists"),
    ("POST", "/template/system", {"name": ".x", "vcpus": 1, "vram": 64}, "1-63 letters"),
    ("POST", "/template/system/small", {"vcpus": 1, "vram": 64}, "already exists"),
    ("PUT", "/template/system/small", {}, "nothing to change"),
    ("PUT", "/template/system/small", {"vcpus": 300}, "up to 256"),
    ("PUT", "/template/system/small", {"vram": ""}, "vram cannot be empty"),
    ("PUT", "/template/system/ghost", {"vcpus": 2}, "system template 'ghost' not found"),
    ("GET", "/template/system/ghost", {}, "not found"),
    ("DELETE", "/template/system/ghost", {}, "not found"),
    ("GET", "/template/system?limit=(", {}, "regular expression"),
])
def test_system_template_refusals(c: Cluster, method: str, path: str, data: dict[str, Any],
                                  message: str) -> None:
    add_basics(c)
    c.refused(method, P + path, message, data=data)


# --- network templates ---------------------------------------------------------------------

def test_network_templates(c: Cluster) -> None:
    c.ok("POST", f"{P}/template/network", data={"name": "lan",
                                                 "mac_template": "{prefix}:a0:0{vmid}:0{netid}"})
    c.ok("POST", f"{P}/template/network/lan/net", data={"vni": 200})
    c.ok("POST", f"{P}/template/network/lan/net/100")
    c.ok("POST", f"{P}/template/network/lan/net/200", data={"permit_duplicate": ""})
    assert c.ok("GET", f"{P}/template/network/lan/net") == [{"vni": 200}, {"vni": 100},
                                                            {"vni": 200}]
    assert c.ok("GET", f"{P}/template/network/lan/net/100") == [{"vni": 100}]
    assert c.ok("GET", f"{P}/template/network/lan") == [{
        "name": "lan", "mac_template": "{prefix}:a0:0{vmid}:0{netid}",
        "networks": [{"vni": 200}, {"vni": 100}, {"vni": 200}]}]
    c.ok("DELETE", f"{P}/template/network/lan/net/200")
    assert c.ok("GET", f"{P}/template/network/lan/net") == [{"vni": 100}]
    c.ok("PUT", f"{P}/template/network/lan", data={"mac_template": ""})
    assert c.ok("GET", f"{P}/template/network/lan")[0]["mac_template"] is None
    c.ok("POST", f"{P}/template/network/wan")
    c.ok("DELETE", f"{P}/template/network/wan")
    assert [t["name"] for t in c.ok("GET", f"{P}/template/network")] == ["lan"]


@pytest.mark.parametrize("method,path,data,message", [
    ("POST", "/template/network", {"name": "x", "mac_template": "{prefix}:{vmid.real}"},
     "unknown placeholder"),
    ("POST", "/template/network", {"name": "x", "mac_template": "ff:00:00:00:0{vmid}:0{netid}"},
     "multicast"),
    ("POST", "/template/network", {"name": "lan"}, "already exists"),
    ("POST", "/template/network/lan/net", {"vni": 999}, "network with vni 999 not found"),
    ("POST", "/template/network/lan/net", {"vni": "upstream"}, "host bridge"),
    ("POST", "/template/network/lan/net", {}, "missing mandatory value 'vni'"),
    ("POST", "/template/network/lan/net/100", {}, "already has network 100"),
    ("POST", "/template/network/lan/net/cluster", {}, "host bridge"),
    ("GET", "/template/network/lan/net/200", {}, "has no network 200"),
    ("DELETE", "/template/network/lan/net/200", {}, "has no network 200"),
    ("POST", "/template/network/ghost/net", {"vni": 100}, "network template 'ghost' not found"),
    ("PUT", "/template/network/lan", {}, "nothing to change"),
])
def test_network_template_refusals(c: Cluster, method: str, path: str, data: dict[str, Any],
                                   message: str) -> None:
    add_basics(c)
    c.ok("POST", f"{P}/template/network/lan/net", data={"vni": 100})
    c.refused(method, P + path, message, data=data)


# --- storage templates ---------------------------------------------------------------------

def test_storage_templates(c: Cluster) -> None:
    c.ok("POST", f"{P}/template/storage", data={"name": "disks"})
    c.ok("POST", f"{P}/template/storage/disks/disk/vdb",
         data=[("pool", "vms"), ("disk_size", "2"), ("filesystem", "ext4"),
               ("filesystem_arg", "-L=data"), ("filesystem_arg", "-m=1"),
               ("mountpoint", "/srv")])
    c.ok("POST", f"{P}/template/storage/disks/disk",
         json={"disk_id": "sda", "pool": "vms", "source_volume": "debian", "disk_size": 10})
    c.ok("POST", f"{P}/template/storage/disks/disk",
         json={"disk_id": "sdb", "pool": "vms", "disk_size": 1, "filesystem": "xfs",
               "filesystem_arg": ["-f"]})
    disks = c.ok("GET", f"{P}/template/storage/disks/disk")
    assert [d["disk_id"] for d in disks] == ["sda", "sdb", "vdb"]  # sorted by disk_id
    assert disks[2] == {"disk_id": "vdb", "pool": "vms", "source_volume": None,
                        "disk_size_gb": 2, "filesystem": "ext4",
                        "filesystem_args": ["-L=data", "-m=1"], "mountpoint": "/srv"}
    assert disks[1]["filesystem_args"] == ["-f"]
    assert c.ok("GET", f"{P}/template/storage/disks/disk/sda") == [disks[0]]
    assert c.ok("GET", f"{P}/template/storage/disks") == [{"name": "disks", "disks": disks}]
    c.ok("DELETE", f"{P}/template/storage/disks/disk/sdb")
    assert [d["disk_id"] for d in c.ok("GET", f"{P}/template/storage/disks/disk")] == \
        ["sda", "vdb"]
    c.ok("POST", f"{P}/template/storage/other")
    c.ok("DELETE", f"{P}/template/storage/other")


@pytest.mark.parametrize("method,path,data,message", [
    ("POST", "/template/storage/disks/disk", {"disk_id": "sda", "pool": "vms", "disk_size": 1},
     "already has disk sda"),
    ("POST", "/template/storage/disks/disk", {"disk_id": "hda", "pool": "vms", "disk_size": 1},
     "disk_id 'hda' is invalid"),
    ("POST", "/template/storage/disks/disk/sdz", {"pool": "nope", "disk_size": 1},
     "RBD pool nope not found"),
    ("POST", "/template/storage/disks/disk/sdz", {"pool": "vms"}, "or disk_size"),
    ("POST", "/template/storage/disks/disk/sdz", {"pool": "vms", "disk_size": 0}, "from 1"),
    ("POST", "/template/storage/disks/disk/sdz", {"disk_size": 1}, "'pool'"),
    ("POST", "/template/storage/disks/disk/sdz", {"pool": "vms", "disk_size": 1,
                                                  "filesystem": "ntfs"}, "valid values are"),
    ("POST", "/template/storage/disks/disk/sdz", {"pool": "vms", "disk_size": 1,
                                                  "filesystem": "ext4",
                                                  "filesystem_arg": "-L root"},
     "no whitespace or shell characters"),
    ("POST", "/template/storage/disks/disk/sdz", {"pool": "vms", "disk_size": 1,
                                                  "filesystem": "ext4",
                                                  "filesystem_arg": "-L=$(id)"},
     "no whitespace or shell characters"),
    ("POST", "/template/storage/disks/disk/sdz", {"pool": "vms", "disk_size": 1,
                                                  "mountpoint": "/srv"}, "needs a filesystem"),
    ("POST", "/template/storage/disks/disk/sdz", {"pool": "vms", "disk_size": 1,
                                                  "filesystem": "ext4", "mountpoint": "srv"},
     "absolute path"),
    ("POST", "/template/storage/disks/disk/sdz", {"pool": "vms", "source_volume": "a",
                                                  "filesystem": "ext4"}, "only for new"),
    ("GET", "/template/storage/disks/disk/sdq", {}, "has no disk sdq"),
    ("DELETE", "/template/storage/disks/disk/sdq", {}, "has no disk sdq"),
    ("POST", "/template/storage/disks", {}, "already exists"),
    ("PUT", "/template/storage/disks", {}, "Method not allowed"),
])
def test_storage_template_refusals(c: Cluster, method: str, path: str, data: dict[str, Any],
                                   message: str) -> None:
    add_basics(c)
    if message == "Method not allowed":
        assert c.api.call(method, P + path, data=data).status_code == 405
        return
    c.refused(method, P + path, message, data=data)


def test_all_templates_at_once(c: Cluster) -> None:
    add_basics(c)
    c.ok("POST", f"{P}/template/system", data={"name": "large", "vcpus": 4, "vram": 4096})
    everything = c.ok("GET", f"{P}/template")
    assert {k: [t["name"] for t in v] for k, v in everything.items()} == {
        "system-templates": ["large", "small"], "network-templates": ["lan"],
        "storage-templates": ["disks"]}
    limited = c.ok("GET", f"{P}/template", params={"limit": "^(small|lan)$"})
    assert {k: [t["name"] for t in v] for k, v in limited.items()} == {
        "system-templates": ["small"], "network-templates": ["lan"], "storage-templates": []}


# --- userdata ------------------------------------------------------------------------------

def test_userdata(c: Cluster) -> None:
    text = "#cloud-config\nhostname: web1\nruncmd:\n  - echo hi\n"
    c.ok("POST", f"{P}/userdata", data={"name": "web", "data": text})
    c.ok("POST", f"{P}/userdata/script", data={"data": "#!/bin/sh\necho ünïcode\n"})
    assert c.ok("GET", f"{P}/userdata/web") == [{"name": "web", "userdata": text}]
    assert [u["name"] for u in c.ok("GET", f"{P}/userdata")] == ["script", "web"]
    c.ok("PUT", f"{P}/userdata/web", json={"data": "#cloud-config\nhostname: web2\n"})
    assert c.ok("GET", f"{P}/userdata/web")[0]["userdata"] == "#cloud-config\nhostname: web2\n"
    c.ok("DELETE", f"{P}/userdata/script")
    assert [u["name"] for u in c.ok("GET", f"{P}/userdata")] == ["web"]


def test_userdata_refusals(c: Cluster) -> None:
    add_basics(c)
    c.refused("POST", f"{P}/userdata", "at most 262144 bytes",
              data={"name": "big", "data": "#" * (256 * 1024 + 1)})
    c.refused("POST", f"{P}/userdata", "not valid UTF-8", data=b"name=bad&data=%ff%fe",
              headers={"Content-Type": "application/x-www-form-urlencoded"})
    c.refused("POST", f"{P}/userdata", "not a YAML mapping",
              data={"name": "list", "data": "#cloud-config\n- a\n"})
    c.refused("PUT", f"{P}/userdata/ud", "not valid YAML", data={"data": "#cloud-config\n: :\n["})
    c.refused("PUT", f"{P}/userdata/ud", "missing mandatory value 'data'", data={})
    c.refused("POST", f"{P}/userdata/ud", "already exists", data={"data": "x"})
    c.refused("GET", f"{P}/userdata/ghost", "userdata 'ghost' not found")


# --- scripts -------------------------------------------------------------------------------

def test_scripts_are_the_built_in_methods(c: Cluster) -> None:
    scripts = c.ok("GET", f"{P}/script")
    assert [s["name"] for s in scripts] == ["clone", "blank", "ova"]
    assert all(s["builtin"] is True for s in scripts)
    clone = c.ok("GET", f"{P}/script/clone")
    assert clone[0]["arguments"] == [{"name": "source_snapshot", "default": None,
                                      "description": clone[0]["arguments"][0]["description"]}]
    assert [s["name"] for s in c.ok("GET", f"{P}/script?limit=^b")] == ["blank"]
    refusal = ("pvcd does not run uploaded provisioning scripts; use one of the built-in "
               "methods: clone, blank, ova")
    c.refused("POST", f"{P}/script", refusal, data={"name": "x", "data": "import os"})
    for method in ("POST", "PUT", "DELETE"):
        c.refused(method, f"{P}/script/clone", refusal)
    c.refused("GET", f"{P}/script/debootstrap", "built-in methods are clone, blank, ova")


# --- profiles ------------------------------------------------------------------------------

def test_profiles(c: Cluster) -> None:
    add_basics(c)
    c.ok("POST", f"{P}/profile", data={"name": "web", "profile_type": "provisioner",
                                        "system_template": "small", "network_template": "lan",
                                        "storage_template": "disks", "userdata": "ud"})
    assert c.ok("GET", f"{P}/profile/web") == [{
        "name": "web", "profile_type": "provisioner", "system_template": "small",
        "network_template": "lan", "storage_template": "disks", "userdata": "ud",
        "script": "clone", "ova": None, "arguments": []}]
    c.ok("POST", f"{P}/profile/iso", json={"profile_type": "provisioner",
                                            "system_template": "small", "script": "blank",
                                            "storage_template": "disks",
                                            "arg": ["cdrom=vms/debian.iso"]})
    assert c.ok("GET", f"{P}/profile/iso")[0]["arguments"] == ["cdrom=vms/debian.iso"]
    c.ok("PUT", f"{P}/profile/web", data=[("arg", "source_snapshot=gold"),
                                          ("userdata", "")])
    web = c.ok("GET", f"{P}/profile/web")[0]
    assert (web["arguments"], web["userdata"]) == (["source_snapshot=gold"], None)
    c.ok("PUT", f"{P}/profile/web", data={"arg": ""})  # an empty arg clears the list
    assert c.ok("GET", f"{P}/profile/web")[0]["arguments"] == []
    assert [p["name"] for p in c.ok("GET", f"{P}/profile?limit=w")] == ["web"]
    c.ok("DELETE", f"{P}/profile/iso")
    assert [p["name"] for p in c.ok("GET", f"{P}/profile")] == ["web"]


BASE = {"profile_type": "provisioner", "system_template": "small", "storage_template": "disks"}


@pytest.mark.parametrize("method,path,data,message", [
    ("POST", "/profile", {**BASE, "name": "p", "system_template": "nope"},
     "system template 'nope' not found"),
    ("POST", "/profile", {**BASE, "name": "p", "network_template": "nope"},
     "network template 'nope' not found"),
    ("POST", "/profile", {**BASE, "name": "p", "storage_template": "nope"},
     "storage template 'nope' not found"),
    ("POST", "/profile", {**BASE, "name": "p", "userdata": "nope"}, "userdata 'nope' not found"),
    ("POST", "/profile", {**BASE, "name": "p", "arg": "cdrom=vms/x"},
     "method 'clone' has no argument 'cdrom'"),
    ("POST", "/profile", {**BASE, "name": "p", "script": "debootstrap"},
     "use one of the built-in methods: clone, blank, ova"),
    ("POST", "/profile", {"name": "p", "profile_type": "ova", "system_template": "small"},
     "needs ova"),
    ("POST", "/profile", {"name": "p", "profile_type": "provisioner",
                          "system_template": "small"}, "clone needs a storage_template"),
    ("POST", "/profile", {**BASE, "name": "p", "script": "ova"}, "needs profile_type ova"),
    ("POST", "/profile", {**BASE, "name": "p", "profile_type": "kvm"}, "valid values are"),
    ("POST", "/profile", {"name": "p", "system_template": "small"},
     "missing mandatory value 'profile_type'"),
    ("POST", "/profile", {**BASE, "name": "web"}, "already exists"),
    ("PUT", "/profile/web", {}, "nothing to change"),
    ("PUT", "/profile/web", {"system_template": ""}, "cannot be removed"),
    ("PUT", "/profile/web", {"storage_template": ""}, "clone needs a storage_template"),
    ("PUT", "/profile/web", {"arg": "x=1"}, "has no argument 'x'"),
    ("PUT", "/profile/ghost", {"arg": "x=1"}, "profile 'ghost' not found"),
])
def test_profile_refusals(c: Cluster, method: str, path: str, data: dict[str, Any],
                          message: str) -> None:
    add_basics(c)
    c.ok("POST", f"{P}/profile", data={**BASE, "name": "web"})
    c.refused(method, P + path, message, data=data)


def test_blank_profiles_refuse_copies_both_ways(c: Cluster) -> None:
    add_basics(c)
    c.ok("POST", f"{P}/template/storage/copy")
    c.ok("POST", f"{P}/template/storage/copy/disk/sda", data={"pool": "vms",
                                                              "source_volume": "img"})
    c.refused("POST", f"{P}/profile/iso", "copies a source_volume to disk sda",
              data={**BASE, "storage_template": "copy", "script": "blank"})
    c.ok("POST", f"{P}/profile/iso", data={**BASE, "script": "blank"})
    c.refused("POST", f"{P}/template/storage/disks/disk/sdb",
              "profile 'iso' uses storage template 'disks'",
              data={"pool": "vms", "source_volume": "img"})


def test_lists_are_json_arrays_only_where_declared(c: Cluster) -> None:
    add_basics(c)
    c.refused("POST", f"{P}/template/system", "must be a string, number or boolean",
              json={"name": ["a", "b"], "vcpus": 1, "vram": 64})


# --- referential integrity (§3.1) ----------------------------------------------------------

def test_objects_a_profile_names_cannot_be_deleted(c: Cluster) -> None:
    add_basics(c)
    for name in ("web", "db"):
        c.ok("POST", f"{P}/profile/{name}", data={**BASE, "network_template": "lan",
                                                   "userdata": "ud"})
    for path in ("/template/system/small", "/template/network/lan", "/template/storage/disks",
                 "/userdata/ud"):
        message = c.refused("DELETE", P + path, "is used by profile db, web")
        assert "nothing was changed" in message
    # a profile that VMs were made from may go; the answer names them
    uuid = "8a2f4a8e-54b4-4c5e-9a3e-2b1f0c7d6e5f"
    spec = VmSpec(uuid=uuid, name="web1", xml=tiny_guest_xml("web1", uuid), node="node1",
                  memory=64, vcpu=1, state="stop", profile="web")
    c.state.store.commit([Op.create(c.state.paths.vm(uuid), spec.to_doc()),
                          Op.create(c.state.paths.vm_name("web1"), {"uuid": uuid})])
    removed = c.ok("DELETE", f"{P}/profile/web")
    assert "VM web1 was made from it and now gets no user-data" in removed["message"]
    assert "profile db" in c.refused("DELETE", f"{P}/userdata/ud", "is used by")
    c.ok("DELETE", f"{P}/profile/db")
    c.ok("DELETE", f"{P}/userdata/ud")


def test_a_delete_based_on_a_version_before_a_profile_was_written_fails(c: Cluster) -> None:
    """The rule that makes delete-vs-profile race-free (pvcd.state.provisioner): a profile
    write touches what it names, so a delete at the version read before it cannot commit."""
    add_basics(c)
    path = c.state.paths.provisioner_object("userdata", "ud")
    entry = c.state.cache.entry(path)
    assert entry is not None
    c.ok("POST", f"{P}/profile/web", data={**BASE, "userdata": "ud"})
    with pytest.raises(Conflict):
        c.state.store.commit([Op.delete(path, entry.version)])
    assert c.state.cache.get(path)["userdata"] == "#cloud-config\na: 1\n"


def _call(c: Cluster, method: str, path: str, data: dict[str, Any]) -> requests.Response:
    """One request on a connection of its own (a requests.Session is not thread-safe)."""
    return requests.request(method, c.api.base + path, data=data, timeout=10,
                            headers={"X-Api-Key": c.api.token})


def test_concurrent_creates_of_one_name_one_wins(c: Cluster) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _call(c, "POST", f"{P}/template/system", {
            "name": "same", "vcpus": i + 1, "vram": 64}), range(8)))
    assert sorted(a.status_code for a in answers) == [200] + [510] * 7
    assert all("already exists" in a.json()["message"] for a in answers
               if a.status_code == 510)
    winner = next(i for i, a in enumerate(answers) if a.status_code == 200)
    assert c.ok("GET", f"{P}/template/system/same")[0]["vcpu_count"] == winner + 1


def test_a_profile_and_a_delete_of_what_it_names_never_both_win(c: Cluster) -> None:
    add_basics(c)
    for round in range(15):
        name = f"ud{round}"
        c.ok("POST", f"{P}/userdata/{name}", data={"data": "x"})
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            created = pool.submit(_call, c, "POST", f"{P}/profile/p{round}",
                                  {**BASE, "userdata": name})
            deleted = pool.submit(_call, c, "DELETE", f"{P}/userdata/{name}", {})
            outcome = (created.result().status_code, deleted.result().status_code)
        assert outcome in ((200, 510), (510, 200)), outcome
        profile = c.state.cache.get(c.state.paths.provisioner_object("profile", f"p{round}"))
        userdata = c.state.cache.get(c.state.paths.provisioner_object("userdata", name))
        assert (profile is not None) == (userdata is not None) == (outcome == (200, 510)), \
            json.dumps(profile)


def test_concurrent_profiles_naming_one_template_all_succeed(c: Cluster) -> None:
    """Each profile write touches the templates it names, so these writes collide in ZooKeeper
    although none is wrong: the API tries again from the cache, and every client gets 200."""
    add_basics(c)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: _call(c, "POST", f"{P}/profile/p{i}", {
            **BASE, "network_template": "lan", "userdata": "ud"}), range(6)))
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    assert [p["name"] for p in c.ok("GET", f"{P}/profile")] == [f"p{i}" for i in range(6)]
