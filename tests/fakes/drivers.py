"""Small, faithful fakes of the host drivers the controllers call, for in-process tests.

Each implements the methods a controller uses with the same signatures, the same idempotence
and the same errors (`NotFound`, `Conflict`, `BackendError`) as the real driver in
`pvcd/drivers/`, and keeps its state in plain attributes that tests assert on ("what is on the
host now"), never on which calls were made. libvirt has no fake here: its real `test:///`
driver is in-process, fast and exact (one connection = one node).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvcd.domain.errors import BackendError, Conflict, InvalidValue, NotFound
from pvcd.domain.pool_space import PoolSpace
from pvcd.drivers.ceph.records import Snapshot, Volume
from pvcd.drivers.dnsmasq import DnsmasqConfig, Lease, StaticLease
from pvcd.drivers.dnsmasq_dns import DnsFiles
from pvcd.drivers.fence import FenceTarget
from pvcd.drivers.host import HostStats


class FakeHost:
    """`HostDriver`: fixed statistics (memory in MiB) that a test may change."""

    def __init__(self, memory_total: int = 16384, cpu_count: int = 4, load: float = 0.0,
                 boot_id: str = "fake-boot") -> None:
        self.memory_total = memory_total
        self.cpu_count = cpu_count
        self.load = load
        self._boot_id = boot_id

    def stats(self) -> HostStats:
        return HostStats(cpu_count=self.cpu_count, kernel="6.1.0-fake", os="Fake OS",
                         arch="x86_64", load=self.load, memory_total=self.memory_total,
                         memory_used=1024, memory_free=self.memory_total - 1024)

    def boot_id(self) -> str:
        return self._boot_id


class FakeFence:
    """`FenceDriver`: powers a simulated node off through `power_off(node)` (which must
    leave it off: no guests, no session) unless the node is listed in `failing`."""

    def __init__(self, power_off: Callable[[str], None]) -> None:
        self._power_off = power_off
        self.failing: set[str] = set()
        self.fenced: list[str] = []  # nodes confirmed off, in order (the fence log)

    def fence(self, target: FenceTarget, timeout: float) -> None:
        if target.node in self.failing:
            raise BackendError(f"node {target.node}: the fake BMC does not answer")
        self._power_off(target.node)
        self.fenced.append(target.node)


@dataclass
class FakeLink:
    kind: str | None  # bridge | vxlan | vlan | None (a plain device, e.g. the underlay)
    mtu: int = 1500
    up: bool = False
    master: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    peers: set[str] = field(default_factory=set)
    addresses: list[str] = field(default_factory=list)


class FakeNetlink:
    """`NetlinkDriver` over a dict of interfaces (`links`)."""

    def __init__(self, devices: dict[str, int] | None = None) -> None:
        self.links: dict[str, FakeLink] = {name: FakeLink(None, mtu, up=True)
                                           for name, mtu in (devices or {}).items()}

    def _get(self, name: str) -> FakeLink:
        if name not in self.links:
            raise NotFound(f"interface {name} does not exist")
        return self.links[name]

    def link_exists(self, name: str) -> bool:
        return name in self.links

    def link_kind(self, name: str) -> str | None:
        return self._get(name).kind

    def link_master(self, name: str) -> str | None:
        return self._get(name).master

    def link_mtu(self, name: str) -> int:
        return self._get(name).mtu

    def list_links(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self.links if n.startswith(prefix))

    def set_up(self, name: str) -> None:
        self._get(name).up = True

    def ensure_bridge(self, name: str, mtu: int) -> None:
        link = self.links.setdefault(name, FakeLink("bridge", mtu))
        if link.kind != "bridge":
            raise Conflict(f"interface {name} exists but is a {link.kind or 'device'}, "
                           "not a bridge")
        link.mtu, link.up = mtu, True

    def ensure_vxlan(self, name: str, vni: int, local_ip: str, underlay_dev: str,
                     dstport: int = 4789, mtu: int | None = None) -> None:
        underlay = self._get(underlay_dev)
        wanted = {"vni": vni, "local": local_ip, "dev": underlay_dev, "port": dstport}
        link = self.links.get(name)
        if link is not None and link.kind != "vxlan":
            raise Conflict(f"interface {name} exists but is not a VXLAN device")
        if link is None or link.settings != wanted:  # recreated: not enslaved, no peers
            link = self.links[name] = FakeLink("vxlan", settings=wanted)
        link.mtu, link.up = mtu if mtu is not None else underlay.mtu - 50, True

    def ensure_port(self, bridge: str, port: str) -> None:
        self._get(bridge)
        link = self._get(port)
        link.master, link.up = bridge, True

    def ensure_vlan(self, name: str, uplink: str, vlan_id: int) -> None:
        self._get(uplink)
        link = self.links.get(name)
        if link is None:
            link = self.links[name] = FakeLink("vlan", settings={"id": vlan_id, "link": uplink})
        elif link.kind == "vlan" and link.settings != {"id": vlan_id, "link": uplink}:
            raise Conflict(f"vLAN {name} exists with other settings")
        link.up = True  # any other kind is adopted as it is (the emulated uplink)

    def delete_link(self, name: str) -> None:
        self.links.pop(name, None)
        for link in self.links.values():
            if link.master == name:
                link.master = None

    def vxlan_peers(self, vxlan_name: str) -> set[str]:
        return set(self._get(vxlan_name).peers)

    def set_vxlan_peers(self, vxlan_name: str, peers: set[str]) -> None:
        self._get(vxlan_name).peers = set(peers)

    def addresses(self, dev: str) -> list[str]:
        return list(self._get(dev).addresses)

    def ensure_address(self, dev: str, cidr: str) -> None:
        link = self._get(dev)
        if cidr not in link.addresses:
            link.addresses.append(cidr)

    def remove_address(self, dev: str, cidr: str) -> None:
        link = self._get(dev)
        if cidr in link.addresses:
            link.addresses.remove(cidr)


class FakeNftables:
    """`NftablesDriver`: each network's two chains as lists of rule bodies."""

    def __init__(self) -> None:
        self.chains: dict[int, dict[str, Any]] = {}  # vni -> {bridge, in, out}

    def networks(self) -> list[int]:
        return sorted(self.chains)

    def apply_network_rules(self, vni: int, bridge: str, in_rules: list[dict[str, Any]],
                            out_rules: list[dict[str, Any]]) -> None:
        self.chains[vni] = {"bridge": bridge, "in": list(in_rules), "out": list(out_rules)}

    def remove_network(self, vni: int) -> None:
        self.chains.pop(vni, None)


class FakeDnsmasq:
    """`DnsmasqInstance`: one network's DHCP/DNS server. `served` lists every instance the
    factory made, so a test sees which ones run and what they were told."""

    served: list[FakeDnsmasq]

    def __init__(self, config: DnsmasqConfig) -> None:
        self.config = config
        self.is_running = False
        self.known: list[Lease] = []
        self.statics: list[StaticLease] = []
        self.active: list[Lease] = []  # what "clients" leased: the test sets it
        self.reloads = 0  # SIGHUPs: the DNS forwarding changed

    def start(self) -> None:
        if self.is_running:
            raise BackendError("dnsmasq already runs")
        self.is_running = True
        self.active = list(self.known)  # dnsmasq reads its lease file at start

    def stop(self) -> None:
        self.is_running = False

    def running(self) -> bool:
        return self.is_running

    def supervise(self) -> bool:
        return self.is_running

    def processes(self) -> list[int]:
        return []

    def set_known_leases(self, leases: list[Lease]) -> None:
        self.known = list(leases)

    def dns_files(self) -> DnsFiles:
        return DnsFiles(Path(self.config.state_dir) / "dns")

    def reload(self) -> None:
        self.reloads += 1

    def set_static_leases(self, leases: list[StaticLease]) -> None:
        self.statics = list(leases)

    def static_leases(self) -> list[StaticLease]:
        return list(self.statics)

    def leases(self) -> list[Lease]:
        return list(self.active)


class FakeCeph:
    """The pool, volume and snapshot calls of `CephDriver` that the primary's storage requests
    make, over `pools` = {pool: {volume: {"size": bytes, "snapshots": set}}}, with the real
    driver's refusals (Conflict, NotFound, InvalidValue for a shrink).

    Contents: a volume may hold `data` (bytes written from offset 0, the rest reads as zeros);
    a snapshot keeps the volume's size and data of its moment (`snapshot_data`), so a copy and
    a rollback can be checked by their bytes. `capacity` (bytes per pool, default 1 TiB) and
    the data stored give `ceph df`'s numbers; `watchers` lists who has a volume open."""

    def __init__(self) -> None:
        self.pools: dict[str, dict[str, dict[str, Any]]] = {}
        self.capacity: dict[str, int] = {}
        self.watchers: dict[tuple[str, str], list[str]] = {}

    def _pool(self, pool: str) -> dict[str, dict[str, Any]]:
        if pool not in self.pools:
            raise NotFound(f"pool {pool} does not exist")
        return self.pools[pool]

    def _volume(self, pool: str, name: str) -> dict[str, Any]:
        volumes = self._pool(pool)
        if name not in volumes:
            raise NotFound(f"volume {pool}/{name} does not exist")
        return volumes[name]

    def pool_create(self, name: str, pgs: int | str, replicas: int | str | None = None) -> None:
        if name in self.pools:
            raise Conflict(f"pool {name} already exists")
        self.pools[name] = {}

    def pool_delete(self, name: str) -> None:
        self._pool(name)
        del self.pools[name]

    def volume_create(self, pool: str, name: str, size_bytes: int | str) -> None:
        volumes = self._pool(pool)
        if name in volumes:
            raise Conflict(f"volume {pool}/{name} already exists")
        volumes[name] = {"size": int(size_bytes), "snapshots": set()}

    def volume_info(self, pool: str, name: str) -> Volume:
        volume = self._volume(pool, name)
        return Volume(pool, name, {"name": name, "size": volume["size"]})

    def volume_resize(self, pool: str, name: str, size_bytes: int | str,
                      allow_shrink: bool = False) -> None:
        volume = self._volume(pool, name)
        if int(size_bytes) < volume["size"] and not allow_shrink:
            raise InvalidValue(f"volume {pool}/{name} is {volume['size']} bytes; shrinking it "
                               "needs allow_shrink")
        volume["size"] = int(size_bytes)

    def volume_rename(self, pool: str, name: str, new_name: str) -> None:
        volumes = self._pool(pool)
        if new_name in volumes:
            raise Conflict(f"volume {pool}/{new_name} already exists")
        volumes[new_name] = volumes.pop(name) if name in volumes else self._volume(pool, name)

    def volume_delete(self, pool: str, name: str, with_snapshots: bool = False) -> None:
        volume = self._volume(pool, name)
        if volume["snapshots"] and not with_snapshots:
            raise Conflict(f"volume {pool}/{name} has snapshots")
        del self.pools[pool][name]

    def snapshot_create(self, pool: str, volume: str, snapshot: str) -> None:
        snapshots = self._volume(pool, volume)["snapshots"]
        if snapshot in snapshots:
            raise Conflict(f"snapshot {pool}/{volume}@{snapshot} already exists")
        snapshots.add(snapshot)
        volume_doc = self._volume(pool, volume)
        volume_doc.setdefault("snapshot_data", {})[snapshot] = (volume_doc["size"],
                                                                volume_doc.get("data", b""))

    def snapshot_delete(self, pool: str, volume: str, snapshot: str) -> None:
        snapshots = self._volume(pool, volume)["snapshots"]
        if snapshot not in snapshots:
            raise NotFound(f"snapshot {pool}/{volume}@{snapshot} does not exist")
        snapshots.discard(snapshot)
        self._volume(pool, volume).get("snapshot_data", {}).pop(snapshot, None)

    def write(self, pool: str, volume: str, data: bytes) -> None:
        """Test helper: write `data` at offset 0 (as a guest or `rbd import` would)."""
        doc = self._volume(pool, volume)
        if len(data) > doc["size"]:
            raise InvalidValue(f"{len(data)} bytes do not fit in {pool}/{volume}")
        doc["data"] = data + doc.get("data", b"")[len(data):]

    def read(self, pool: str, volume: str) -> bytes:
        """Test helper: the volume's bytes, `rbd export` style (zeros where nothing was written)."""
        doc = self._volume(pool, volume)
        data = doc.get("data", b"")[:doc["size"]]
        return data + bytes(doc["size"] - len(data))

    def _snapshot_state(self, pool: str, volume: str, snapshot: str) -> tuple[int, bytes]:
        states = self._volume(pool, volume).get("snapshot_data", {})
        if snapshot not in states:
            raise NotFound(f"snapshot {pool}/{volume}@{snapshot} does not exist")
        return states[snapshot]  # type: ignore[no-any-return]

    def snapshot_list(self, pool: str, volume: str) -> list[Snapshot]:
        states = self._volume(pool, volume).get("snapshot_data", {})
        return [Snapshot(pool, volume, name, index, size, False, "")
                for index, (name, (size, _)) in enumerate(sorted(states.items()))]

    def snapshot_rename(self, pool: str, volume: str, snapshot: str, new_name: str) -> None:
        doc = self._volume(pool, volume)
        state = self._snapshot_state(pool, volume, snapshot)
        if new_name in doc["snapshots"]:
            raise Conflict(f"snapshot {pool}/{volume}@{new_name} already exists")
        doc["snapshots"].discard(snapshot)
        doc["snapshots"].add(new_name)
        del doc["snapshot_data"][snapshot]
        doc["snapshot_data"][new_name] = state

    def snapshot_rollback(self, pool: str, volume: str, snapshot: str,
                          size_bytes: int = 0) -> None:
        size, data = self._snapshot_state(pool, volume, snapshot)
        doc = self._volume(pool, volume)
        doc["size"], doc["data"] = size, data

    def volume_copy(self, pool: str, name: str, new_name: str, snapshot: str | None = None,
                    size_bytes: int = 0) -> None:
        volumes = self._pool(pool)
        source = self._volume(pool, name)
        size, data = (source["size"], source.get("data", b"")) if snapshot is None else \
            self._snapshot_state(pool, name, snapshot)
        if new_name in volumes:
            raise Conflict(f"volume {pool}/{new_name} already exists")
        volumes[new_name] = {"size": size, "snapshots": set(), "data": data}

    def volume_watchers(self, pool: str, name: str) -> list[str]:
        self._volume(pool, name)
        return list(self.watchers.get((pool, name), []))

    def pool_space(self, pool: str) -> PoolSpace:
        stored = sum(len(v.get("data", b"")) for v in self._pool(pool).values())
        return PoolSpace(pool, stored, self.capacity.get(pool, 1 << 40) - stored)
