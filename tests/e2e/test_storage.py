"""Ceph storage through the API of a lab with a throwaway Ceph (`Lab.up(ceph=True)`).

Every effect is checked in Ceph itself with its own tools (`rbd info`, `rbd snap ls`,
`ceph osd pool ls`, `ceph osd dump`, `ceph osd tree`), not only in the API. One lab serves the
module (starting it takes ≈ 8 s); each test uses pools of its own and leaves the cluster
HEALTH_OK.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pvcd.lab.lab import Lab
from tests.e2e.labclient import LabClient, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.ceph]

TIMEOUT = 60


class Ceph:
    """Ceph's own tools pointed at the lab's cluster."""

    def __init__(self, lab: Lab) -> None:
        info = lab._info().ceph
        assert info is not None
        self.args = ["--conf", info["conf"], "--keyring", info["keyring"]]

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([tool, *self.args, *args], capture_output=True, text=True,
                                timeout=TIMEOUT, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)}: {result.stderr}")
        return result

    def json(self, tool: str, *args: str) -> Any:
        return json.loads(self.run(tool, *args, "--format", "json").stdout)

    def pools(self) -> list[str]:
        return list(self.json("ceph", "osd", "pool", "ls"))

    def volumes(self, pool: str) -> list[str]:
        return sorted(self.json("rbd", "ls", "--pool", pool))

    def size(self, pool: str, volume: str) -> int:
        return int(self.json("rbd", "info", "--pool", pool, "--image", volume)["size"])

    def snapshots(self, pool: str, volume: str) -> list[str]:
        return sorted(s["name"] for s in self.json("rbd", "snap", "ls", "--pool", pool,
                                                   "--image", volume))

    def holders(self, pool: str, volume: str) -> set[int]:
        """The OSDs that hold a copy of the volume's data objects, from the OSD map (the mon's
        word; the mgr's PG stats, `ceph pg ls-by-osd`, lag behind a new OSD)."""
        prefix = self.json("rbd", "info", f"{pool}/{volume}")["block_name_prefix"]
        objects = [o for o in self.run("rados", "--pool", pool, "ls").stdout.split()
                   if o.startswith(prefix)]
        assert objects, f"{pool}/{volume} has no data objects"
        return {osd for o in objects for osd in self.json("ceph", "osd", "map", pool, o)["acting"]}

    def flags(self) -> list[str]:
        return list(self.json("ceph", "osd", "dump")["flags_set"])

    def osd_tree(self) -> dict[int, dict[str, Any]]:
        return {n["id"]: n for n in self.json("ceph", "osd", "tree")["nodes"] if n["id"] >= 0}

    def health(self) -> str:
        return str(self.json("ceph", "health")["status"])

    def wait_ok(self) -> None:
        """Wait for HEALTH_OK; fail with Ceph's own account of what is wrong."""
        try:
            wait_until(lambda: self.health() == "HEALTH_OK", timeout=TIMEOUT, interval=0.5)
        except AssertionError as exc:
            detail = self.run("ceph", "health", "detail", check=False).stdout
            raise AssertionError(f"not HEALTH_OK: {detail}") from exc

    def checksum(self, pool: str, volume: str) -> str:
        data = subprocess.run(["rbd", *self.args, "export", "--no-progress", f"{pool}/{volume}",
                               "-"], capture_output=True, timeout=TIMEOUT, check=True).stdout
        return hashlib.sha256(data).hexdigest()

    def state(self) -> tuple[Any, ...]:
        """What a refused request must leave unchanged."""
        pools = sorted(self.pools())
        rbd_pools = [p for p in pools if p != "device_health_metrics"]
        volumes = {p: self.volumes(p) for p in rbd_pools}
        sizes = {(p, v): self.size(p, v) for p in rbd_pools for v in volumes[p]}
        snaps = {(p, v): self.snapshots(p, v) for p in rbd_pools for v in volumes[p]}
        tree = {i: (n["status"], n["reweight"]) for i, n in self.osd_tree().items()}
        return pools, volumes, sizes, snaps, sorted(self.flags()), tree


@pytest.fixture(scope="module")
def storage_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabClient]]:
    lab = Lab(tmp_path_factory.mktemp("storage") / "lab")
    info = lab.up(nodes=3, ceph=True)
    try:
        yield lab, LabClient(info)
    finally:
        lab.down()


@pytest.fixture
def api(storage_lab: tuple[Lab, LabClient]) -> LabClient:
    return storage_lab[1]


@pytest.fixture
def ceph(storage_lab: tuple[Lab, LabClient]) -> Ceph:
    return Ceph(storage_lab[0])


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: Any, *words: str) -> str:
    assert response.status_code == 510, response.text
    message = str(response.json()["message"])
    for word in words:
        assert word in message, message
    return message


def call(api: LabClient, method: str, path: str, **values: Any) -> Any:
    return api.call(method, path, params=values, timeout=TIMEOUT)


@pytest.fixture
def pool(api: LabClient, ceph: Ceph) -> Iterator[str]:
    name = f"p{secrets.token_hex(3)}"
    ok(call(api, "POST", "/storage/ceph/pool", pool=name, pgs=16))
    yield name
    if name in ceph.pools():
        ok(call(api, "DELETE", f"/storage/ceph/pool/{name}", yes_i_really_mean_it=1))


def test_pools_volumes_and_snapshots_are_made_in_ceph(api: LabClient, ceph: Ceph) -> None:
    name = f"p{secrets.token_hex(3)}"
    assert "Created RBD pool" in ok(call(api, "POST", "/storage/ceph/pool", pool=name,
                                         pgs=32))["message"]
    assert name in ceph.pools()
    detail = {p["pool_name"]: p for p in ceph.json("ceph", "osd", "pool", "ls", "detail")}
    assert detail[name]["pg_num"] == 32 and "rbd" in detail[name]["application_metadata"]
    assert ok(call(api, "GET", f"/storage/ceph/pool/{name}"))[0]["name"] == name
    assert [p["name"] for p in ok(call(api, "GET", "/storage/ceph/pool", limit=name))] == [name]

    ok(call(api, "POST", "/storage/ceph/volume", pool=name, volume="disk1", size="64M"))
    assert ceph.size(name, "disk1") == 64 << 20
    volume = ok(call(api, "GET", f"/storage/ceph/volume/{name}/disk1"))[0]
    assert volume["name"] == "disk1" and volume["pool"] == name
    assert volume["stats"]["size"] == 64 << 20
    # the rest of `rbd info` follows right after the request
    wait_until(lambda: "block_name_prefix" in ok(call(
        api, "GET", f"/storage/ceph/volume/{name}/disk1"))[0]["stats"], timeout=10)

    ok(call(api, "PUT", f"/storage/ceph/volume/{name}/disk1", size=str(128 << 20)))
    assert ceph.size(name, "disk1") == 128 << 20
    ok(call(api, "PUT", f"/storage/ceph/volume/{name}/disk1", name="disk2"))
    assert ceph.volumes(name) == ["disk2"]
    # a grow must fit in the pool (the lab's memstore OSDs hold 1 GiB each, 2 copies)
    ok(call(api, "PUT", f"/storage/ceph/volume/{name}/disk2", name="disk1", size="256M"))
    assert ceph.volumes(name) == ["disk1"] and ceph.size(name, "disk1") == 256 << 20
    assert ok(call(api, "GET", f"/storage/ceph/volume/{name}/disk1"))[0]["stats"]["size"] == \
        256 << 20
    refused(call(api, "PUT", f"/storage/ceph/volume/{name}/disk1", size="1M"), "shrinking")
    refused(call(api, "PUT", f"/storage/ceph/volume/{name}/disk1", size="4G", force=1),
            "bytes free")
    assert ceph.size(name, "disk1") == 256 << 20

    ok(call(api, "POST", "/storage/ceph/volume/snapshot", pool=name, volume="disk1",
            snapshot="s1"))
    ok(call(api, "POST", "/storage/ceph/volume/snapshot", pool=name, volume="disk1",
            snapshot="s2"))
    assert ceph.snapshots(name, "disk1") == ["s1", "s2"]
    snap = ok(call(api, "GET", f"/storage/ceph/volume/snapshot/{name}/disk1/s1"))
    assert snap == [{"pool": name, "volume": "disk1", "snapshot": "s1"}]
    refused(call(api, "DELETE", f"/storage/ceph/volume/{name}/disk1"), "snapshots")

    ok(call(api, "DELETE", f"/storage/ceph/volume/snapshot/{name}/disk1/s1"))
    assert ceph.snapshots(name, "disk1") == ["s2"]
    ok(call(api, "DELETE", f"/storage/ceph/volume/snapshot/{name}/disk1/s2"))
    ok(call(api, "DELETE", f"/storage/ceph/volume/{name}/disk1"))
    assert ceph.volumes(name) == []
    refused(call(api, "GET", f"/storage/ceph/volume/{name}/disk1"), "not found")

    ok(call(api, "DELETE", f"/storage/ceph/pool/{name}", yes_i_really_mean_it=1))
    assert name not in ceph.pools()
    refused(call(api, "GET", f"/storage/ceph/pool/{name}"), "not found")


def test_snapshot_list_filters_combine_freely(api: LabClient, ceph: Ceph) -> None:
    pools = [f"p{secrets.token_hex(3)}", f"p{secrets.token_hex(3)}"]
    for name in pools:
        ok(call(api, "POST", "/storage/ceph/pool", pool=name, pgs=8))
        for volume in ("va", "vb"):
            ok(call(api, "POST", "/storage/ceph/volume", pool=name, volume=volume, size="4M"))
            for snap in ("daily", "weekly"):
                ok(call(api, "POST", "/storage/ceph/volume/snapshot", pool=name, volume=volume,
                        snapshot=f"{snap}-{volume}"))
    try:
        everything = {(p, v, f"{s}-{v}") for p in pools for v in ("va", "vb")
                      for s in ("daily", "weekly")}
        for name in pools:
            for volume in ("va", "vb"):
                assert ceph.snapshots(name, volume) == [f"daily-{volume}", f"weekly-{volume}"]

        def listed(**values: str) -> set[tuple[str, str, str]]:
            found = ok(call(api, "GET", "/storage/ceph/volume/snapshot", **values))
            return {(s["pool"], s["volume"], s["snapshot"]) for s in found
                    if s["pool"] in pools}

        p0 = pools[0]
        cases: list[tuple[dict[str, str], Any]] = [
            ({}, lambda s: True),
            ({"pool": p0}, lambda s: s[0] == p0),
            ({"volume": "va"}, lambda s: s[1] == "va"),
            ({"limit": "^daily"}, lambda s: s[2].startswith("daily")),
            ({"pool": p0, "volume": "vb"}, lambda s: s[0] == p0 and s[1] == "vb"),
            ({"pool": p0, "limit": "weekly"}, lambda s: s[0] == p0 and "weekly" in s[2]),
            ({"volume": "vb", "limit": "daily"}, lambda s: s[1] == "vb" and "daily" in s[2]),
            ({"pool": p0, "volume": "va", "limit": "weekly"},
             lambda s: s[0] == p0 and s[1] == "va" and "weekly" in s[2]),
            ({"limit": "nothing-matches"}, lambda s: False),
        ]
        for values, keep in cases:
            assert listed(**values) == {s for s in everything if keep(s)}, values
        refused(call(api, "GET", "/storage/ceph/volume/snapshot", limit="("), "regular")
        volumes = ok(call(api, "GET", "/storage/ceph/volume", pool=p0))
        assert sorted(v["name"] for v in volumes) == ["va", "vb"]
        assert [v["name"] for v in ok(call(api, "GET", "/storage/ceph/volume", pool=p0,
                                           limit="b$"))] == ["vb"]
    finally:
        for name in pools:  # deletes every volume and snapshot of the pool
            ok(call(api, "DELETE", f"/storage/ceph/pool/{name}", yes_i_really_mean_it=1))
    assert not set(pools) & set(ceph.pools())
    assert not listed()


def test_noout_flag_and_osd_in_out_show_in_ceph(api: LabClient, ceph: Ceph) -> None:
    refused(call(api, "POST", "/storage/ceph/cluster-option", action="set", option="nosuch"),
            "noout")
    ok(call(api, "POST", "/storage/ceph/cluster-option", action="set", option="noout"))
    assert "noout" in ceph.flags()
    wait_until(lambda: "noout" in ok(call(api, "GET", "/storage/ceph"))["ceph_data"], timeout=10)
    ok(call(api, "POST", "/storage/ceph/cluster-option", action="unset", option="noout"))
    assert "noout" not in ceph.flags()

    osd = min(ceph.osd_tree())
    ok(call(api, "POST", f"/storage/ceph/osd/{osd}/state", state="out"))
    assert ceph.osd_tree()[osd]["reweight"] == 0
    assert ok(call(api, "GET", f"/storage/ceph/osd/{osd}/state")) == \
        {"id": osd, "in": False, "up": True}
    ok(call(api, "POST", f"/storage/ceph/osd/{osd}/state", state="in"))
    assert ceph.osd_tree()[osd]["reweight"] == 1
    assert ok(call(api, "GET", f"/storage/ceph/osd/{osd}/state"))["in"] is True
    ceph.wait_ok()


def test_add_osd_write_data_remove_another_osd(api: LabClient, ceph: Ceph, pool: str) -> None:
    before = set(ceph.osd_tree())
    message = ok(call(api, "POST", "/storage/ceph/osd", node="node3", device="memstore",
                      weight="0.001"))["message"]
    added = (set(ceph.osd_tree()) - before).pop()
    assert f"Created OSD {added} on node node3" in message
    assert ceph.osd_tree()[added]["status"] == "up"
    host = next(n for n in ceph.json("ceph", "osd", "tree")["nodes"] if n["type"] == "host"
                and added in n.get("children", []))
    assert host["name"] == "node3"
    osd = ok(call(api, "GET", f"/storage/ceph/osd/{added}"))[0]
    assert osd["node"] == "node3" and osd["device"] == "memstore"

    # as an operator would, let the cluster settle on the new OSD before writing to it
    ceph.wait_ok()
    created = call(api, "POST", "/storage/ceph/volume", pool=pool, volume="data", size="32M")
    if created.status_code != 200:  # diagnostics for a hang seen twice here
        print(ceph.run("ceph", "health", "detail").stdout, ceph.run("ceph", "-s").stdout,
              ceph.run("ceph", "pg", "dump_stuck").stdout, ceph.run("ceph", "osd", "tree").stdout)
    ok(created)
    ceph.run("rbd", "bench", "--io-type", "write", "--io-pattern", "rand", "--io-size", "64K",
             "--io-total", "32M", f"{pool}/data")
    checksum = ceph.checksum(pool, "data")
    assert checksum != hashlib.sha256(bytes(32 << 20)).hexdigest()  # not all zeros

    victim = min(before)
    refused(call(api, "DELETE", f"/storage/ceph/osd/{victim}"), "yes_i_really_mean_it")
    assert victim in ceph.osd_tree()
    message = ok(call(api, "DELETE", f"/storage/ceph/osd/{victim}",
                      yes_i_really_mean_it=1))["message"]
    assert f"Removed OSD {victim}" in message
    assert victim not in ceph.osd_tree()
    assert ceph.checksum(pool, "data") == checksum
    ceph.wait_ok()
    refused(call(api, "GET", f"/storage/ceph/osd/{victim}"), "not found")

    # a removal that would leave a pool with fewer OSDs than its copies is refused in Ceph's
    # terms, and nothing changes
    ceph.run("ceph", "osd", "pool", "set", pool, "size", str(len(ceph.osd_tree())),
             "--yes-i-really-mean-it")
    ceph.wait_ok()
    state = ceph.state()
    refused(call(api, "DELETE", f"/storage/ceph/osd/{added}", yes_i_really_mean_it=1),
            "fewer than the copies")
    assert ceph.state() == state
    assert ceph.checksum(pool, "data") == checksum  # (the pool is deleted afterwards)
    ceph.wait_ok()


def test_osd_on_a_block_device(api: LabClient, ceph: Ceph, pool: str,
                               storage_lab: tuple[Lab, LabClient],
                               loop_devices: Callable[[int], str]) -> None:
    """The production path: bluestore through `ceph-volume raw` on node2's disk (a loop
    device); node2's daemon has its own /etc/ceph and /var/lib/ceph, as a machine would."""
    lab = storage_lab[0]
    state = ceph.state()
    small = loop_devices(1 << 30)
    refused(call(api, "POST", "/storage/ceph/osd", node="node2", device=small, weight="0.005"),
            "at least 5 GiB")
    used = loop_devices(6 << 30)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1", used],
                   check=True, capture_output=True)
    refused(call(api, "POST", "/storage/ceph/osd", node="node2", device=used, weight="0.005"),
            "ext4", "wipefs")
    assert ceph.state() == state

    disk = loop_devices(6 << 30)
    before = set(ceph.osd_tree())
    message = ok(call(api, "POST", "/storage/ceph/osd", node="node2", device=disk,
                      weight="0.005"))["message"]
    added = (set(ceph.osd_tree()) - before).pop()
    assert f"Created OSD {added} on node node2" in message
    tree = ceph.json("ceph", "osd", "tree")["nodes"]
    host = next(n for n in tree if n["type"] == "host" and added in n.get("children", []))
    assert host["name"] == "node2"
    assert ceph.osd_tree()[added]["status"] == "up"
    assert ceph.osd_tree()[added]["crush_weight"] == pytest.approx(0.005, abs=1e-4)
    metadata = ceph.json("ceph", "osd", "metadata", str(added))
    assert metadata["osd_objectstore"] == "bluestore"
    assert metadata["bluestore_bdev_dev_node"] == disk
    assert ok(call(api, "GET", f"/storage/ceph/osd/{added}"))[0]["device"] == disk
    ceph.wait_ok()

    # data on it: the pool's PGs that map to it hold the volume's objects
    ok(call(api, "POST", "/storage/ceph/volume", pool=pool, volume="disk", size="16M"))
    ceph.run("rbd", "bench", "--io-type", "write", "--io-pattern", "seq", "--io-size", "1M",
             "--io-total", "16M", f"{pool}/disk")
    checksum = ceph.checksum(pool, "disk")
    assert added in ceph.holders(pool, "disk"), "no copy of the volume's data on the OSD"

    # node2 "reboots": its daemon and the OSD die with the mount namespace (and the OSD's
    # tmpfs folder); the restarted daemon activates the OSD from its device and starts it
    node2 = next(n for n in lab._info().nodes if n.name == "node2")
    run_dir = Path(node2.config).parent / "osd-run"
    osd_pid = int((run_dir / f"osd.{added}.pid").read_text())
    lab.signal_node("node2", signal.SIGTERM)
    assert lab.wait_node_exit("node2")
    os.kill(osd_pid, signal.SIGKILL)
    wait_until(lambda: ceph.osd_tree()[added]["status"] == "down", timeout=TIMEOUT)
    lab.start_node("node2")
    wait_until(lambda: ceph.osd_tree()[added]["status"] == "up", timeout=TIMEOUT,
               interval=0.5)
    assert int((run_dir / f"osd.{added}.pid").read_text()) != osd_pid
    ceph.wait_ok()
    assert ceph.checksum(pool, "disk") == checksum

    # removal: drained, stopped, purged; the device is wiped and can be used again
    message = ok(call(api, "DELETE", f"/storage/ceph/osd/{added}",
                      yes_i_really_mean_it=1))["message"]
    assert f"Removed OSD {added}" in message
    assert added not in ceph.osd_tree()
    assert not (run_dir / f"osd.{added}.pid").exists()
    wiped = subprocess.run(["blkid", "-p", disk], check=False, capture_output=True)
    assert wiped.returncode == 2, wiped.stdout  # no signature left
    assert ceph.checksum(pool, "disk") == checksum
    ceph.wait_ok()


def test_dangerous_and_invalid_requests_change_nothing(api: LabClient, ceph: Ceph,
                                                      pool: str) -> None:
    ok(call(api, "POST", "/storage/ceph/volume", pool=pool, volume="keep", size="4M"))
    ok(call(api, "POST", "/storage/ceph/volume/snapshot", pool=pool, volume="keep",
            snapshot="snap"))
    state = ceph.state()
    osd = min(ceph.osd_tree())
    bad: list[tuple[str, str, dict[str, Any], str]] = [
        ("DELETE", f"/storage/ceph/pool/{pool}", {}, "yes_i_really_mean_it"),
        ("DELETE", f"/storage/ceph/pool/{pool}", {"yes_i_really_mean_it": "no"},
         "yes_i_really_mean_it"),
        ("DELETE", f"/storage/ceph/osd/{osd}", {}, "yes_i_really_mean_it"),
        ("POST", "/storage/ceph/pool", {"pool": "x", "pgs": "3"}, "power of two"),
        ("POST", "/storage/ceph/pool", {"pool": "x", "pgs": "65536"}, "power of two"),
        ("POST", "/storage/ceph/pool", {"pool": "x", "pgs": "many"}, "pgs"),
        ("POST", "/storage/ceph/pool", {"pool": "bad/name", "pgs": "8"}, "invalid"),
        ("POST", "/storage/ceph/pool", {"pool": pool, "pgs": "8"}, "already exists"),
        ("POST", "/storage/ceph/pool", {"pgs": "8"}, "pool"),
        ("POST", "/storage/ceph/volume", {"pool": pool, "volume": "v", "size": "12X"}, "size"),
        ("POST", "/storage/ceph/volume", {"pool": pool, "volume": "v", "size": "0"}, "size"),
        ("POST", "/storage/ceph/volume", {"pool": pool, "volume": "v", "size": "-1G"}, "size"),
        ("POST", "/storage/ceph/volume", {"pool": pool, "volume": "a@b", "size": "1G"},
         "invalid"),
        ("POST", "/storage/ceph/volume", {"pool": pool, "volume": ".hidden", "size": "1G"},
         "invalid"),
        ("POST", "/storage/ceph/volume", {"pool": "nosuchpool", "volume": "v", "size": "1G"},
         "not found"),
        ("POST", "/storage/ceph/volume", {"pool": pool, "volume": "keep", "size": "1G"},
         "already exists"),
        ("PUT", f"/storage/ceph/volume/{pool}/keep", {"size": "2Q"}, "size"),
        ("PUT", f"/storage/ceph/volume/{pool}/keep", {"name": "in valid"}, "invalid"),
        ("PUT", f"/storage/ceph/volume/{pool}/keep", {}, "name"),
        ("PUT", f"/storage/ceph/volume/{pool}/nosuch", {"size": "1G"}, "not found"),
        ("DELETE", f"/storage/ceph/volume/{pool}/nosuch", {}, "not found"),
        ("POST", "/storage/ceph/volume/snapshot",
         {"pool": pool, "volume": "keep", "snapshot": "x:y"}, "invalid"),
        ("POST", "/storage/ceph/volume/snapshot",
         {"pool": pool, "volume": "keep", "snapshot": "snap"}, "already exists"),
        ("POST", "/storage/ceph/volume/snapshot",
         {"pool": pool, "volume": "nosuch", "snapshot": "s"}, "not found"),
        ("DELETE", f"/storage/ceph/volume/snapshot/{pool}/keep/nosuch", {}, "not found"),
        ("POST", "/storage/ceph/cluster-option", {"action": "toggle", "option": "noout"},
         "action"),
        ("POST", "/storage/ceph/cluster-option", {"action": "set", "option": "full"}, "noout"),
        ("POST", f"/storage/ceph/osd/{osd}/state", {"state": "sideways"}, "state"),
        ("POST", "/storage/ceph/osd/999/state", {"state": "out"}, "not found"),
        ("GET", "/storage/ceph/osd/abc", {}, "invalid"),
        ("DELETE", "/storage/ceph/osd/999", {"yes_i_really_mean_it": "1"}, "not found"),
        ("POST", "/storage/ceph/osd", {"node": "node3", "device": "memstore", "weight": "0"},
         "weight"),
        ("POST", "/storage/ceph/osd", {"node": "node3", "device": "sdb", "weight": "1"},
         "device"),
        ("POST", "/storage/ceph/osd", {"node": "nosuch", "device": "memstore", "weight": "1"},
         "not found"),
        ("POST", "/storage/ceph/osd", {"node": "node3", "device": "/dev/sdz", "weight": "1"},
         "does not exist"),
        ("POST", "/storage/ceph/osd", {"node": "node3", "device": "/dev/null", "weight": "1"},
         "not a block device"),
    ]
    for method, path, values, word in bad:
        response = call(api, method, path, **values)
        refused(response, word)
    assert ceph.state() == state
    assert ceph.snapshots(pool, "keep") == ["snap"]


def test_concurrent_requests_do_not_interfere(api: LabClient, ceph: Ceph, pool: str) -> None:
    ok(call(api, "POST", "/storage/ceph/volume", pool=pool, volume="base", size="4M"))
    sizes = {f"v{i}": (i + 1) << 20 for i in range(8)}
    answers: dict[str, Any] = {}

    def request(key: str, method: str, path: str, **values: Any) -> None:
        client = LabClient(api.info)  # a session (connection) of its own per thread
        answers[key] = client.call(method, path, params=values, timeout=TIMEOUT)

    threads = [threading.Thread(target=request, args=(name, "POST", "/storage/ceph/volume"),
                                kwargs={"pool": pool, "volume": name, "size": str(size)})
               for name, size in sizes.items()]
    threads += [threading.Thread(target=request, args=(f"s{i}", "POST",
                                                       "/storage/ceph/volume/snapshot"),
                                 kwargs={"pool": pool, "volume": "base", "snapshot": f"s{i}"})
                for i in range(4)]
    threads.append(threading.Thread(target=request, args=("noscrub", "POST",
                                                          "/storage/ceph/cluster-option"),
                                    kwargs={"action": "set", "option": "noscrub"}))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    for name, size in sizes.items():
        assert ok(answers[name])["message"] == f"Created RBD volume {pool}/{name} of {size} bytes"
        assert ceph.size(pool, name) == size
    for i in range(4):
        assert ok(answers[f"s{i}"])["message"] == f"Created RBD snapshot {pool}/base@s{i}"
    assert ceph.snapshots(pool, "base") == [f"s{i}" for i in range(4)]
    assert ok(answers["noscrub"])["message"] == "Set OSD flag noscrub"
    assert "noscrub" in ceph.flags()
    ok(call(api, "POST", "/storage/ceph/cluster-option", action="unset", option="noscrub"))
    listed = {v["name"]: v["stats"]["size"] for v in
              ok(call(api, "GET", "/storage/ceph/volume", pool=pool))}
    assert listed == {**sizes, "base": 4 << 20}


def test_vm_delete_disks_removes_its_volumes(api: LabClient, ceph: Ceph, pool: str) -> None:
    for volume in ("root", "data"):
        ok(call(api, "POST", "/storage/ceph/volume", pool=pool, volume=f"vm1-{volume}",
                size="8M"))
    ok(call(api, "POST", "/storage/ceph/volume/snapshot", pool=pool, volume="vm1-data",
            snapshot="before"))
    ok(call(api, "POST", "/storage/ceph/volume", pool=pool, volume="other", size="8M"))
    disks = "".join(
        f"    <disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<source protocol='rbd' name='{pool}/vm1-{v}'/><target dev='vd{d}' bus='virtio'/>"
        "</disk>\n" for v, d in (("root", "a"), ("data", "b")))
    xml = (
        "<domain type='qemu'>\n  <name>vm1</name>\n  <memory unit='MiB'>64</memory>\n"
        "  <vcpu>1</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n  <devices>\n"
        f"{disks}  </devices>\n</domain>\n")
    assert api.post("/vm", data={"xml": xml, "node": "node1"}).status_code == 200
    wait_until(lambda: api.get("/vm/vm1").json()[0]["running_on"] == "node1", timeout=10)
    message = ok(api.call("DELETE", "/vm/vm1", params={"delete_disks": 1},
                          timeout=TIMEOUT))["message"]
    assert f"{pool}/vm1-root" in message and f"{pool}/vm1-data" in message
    assert ceph.volumes(pool) == ["other"]
    assert api.get("/vm/vm1").status_code == 510
    assert [v["name"] for v in ok(call(api, "GET", "/storage/ceph/volume", pool=pool))] == \
        ["other"]

    # a disk that does not exist: refused before anything changes
    missing = xml.replace("<name>vm1</name>", "<name>vm2</name>").replace("vm1-", "vm2-")
    assert api.post("/vm", data={"xml": missing, "node": "node1"}).status_code == 200
    wait_until(lambda: api.get("/vm/vm2").json()[0]["running_on"] == "node1", timeout=10)
    refused(api.call("DELETE", "/vm/vm2", params={"delete_disks": 1}), "not found")
    assert api.get("/vm/vm2").status_code == 200
    assert api.call("DELETE", "/vm/vm2").status_code == 200


def test_status_df_and_requests(api: LabClient, storage_lab: tuple[Lab, LabClient]) -> None:
    status = ok(api.get("/storage/ceph"))
    assert status["type"] == "status" and "health:" in status["ceph_data"]
    assert status["primary_node"] == api.primary()
    assert ok(api.get("/storage/ceph/status"))["type"] == "status"
    df = ok(api.get("/storage/ceph/df"))
    assert df["type"] == "utilization" and "POOL_NAME" in df["ceph_data"]
    refused(api.get("/storage/ceph/request/nosuch"), "not found")
