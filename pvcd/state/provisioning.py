"""What a VM creation from a profile is judged against, read from the cache (extensions.md §3.9).

`provisioner_objects` reads the provisioner's objects (`provisioner/<kind>/<name>`) through
their records' tolerant `from_doc`; `cluster_facts` reads the VM names and MACs in use, the
client networks, the Ceph mirror (pools, volume and snapshot sizes) and the nodes as placement
sees them. The API and the `provisioner.create` task both hand these to
`pvcd.domain.provisioning.plan_create`, so they judge by one rule.
"""

from __future__ import annotations

from typing import Any

from pvcd.domain.provisioner import (
    NetworkTemplate,
    Ova,
    Profile,
    StorageTemplate,
    SystemTemplate,
    Userdata,
)
from pvcd.domain.provisioning import ClusterFacts, ProvisionerObjects
from pvcd.state.view import ClusterView


def _records(view: ClusterView, kind: str, build: Any) -> dict[str, Any]:
    paths = view.paths
    found = {}
    for name in view.cache.children(paths.provisioner_kind(kind)):
        doc = view.cache.get(paths.provisioner_object(kind, name))
        if isinstance(doc, dict):
            record = build(doc)
            record.name = name  # the znode's name is the object's name
            found[name] = record
    return found


def provisioner_objects(view: ClusterView) -> ProvisionerObjects:
    return ProvisionerObjects(
        systems=_records(view, "system", SystemTemplate.from_doc),
        networks=_records(view, "network", NetworkTemplate.from_doc),
        storages=_records(view, "storage", StorageTemplate.from_doc),
        userdata=_records(view, "userdata", Userdata.from_doc),
        ovas=_records(view, "ova", Ova.from_doc),
        profiles=_records(view, "profile", Profile.from_doc))


def vm_macs(view: ClusterView) -> dict[str, str]:
    """Every MAC a VM's XML gives an interface (lower case) -> that VM's name."""
    macs: dict[str, str] = {}
    for uuid in view.vm_uuids():
        doc = view.cache.get(view.paths.vm(uuid))
        if not isinstance(doc, dict):
            continue
        info = doc.get("info")
        for nic in (info.get("networks") if isinstance(info, dict) else None) or []:
            if isinstance(nic, dict) and isinstance(nic.get("mac"), str):
                macs[nic["mac"].lower()] = str(doc.get("name"))
    return macs


def cluster_facts(view: ClusterView) -> ClusterFacts:
    paths, cache = view.paths, view.cache
    names = set(cache.children(paths.vm_names))
    pools = set(cache.children(paths.storage_pools))
    volumes: dict[tuple[str, str], int] = {}
    snapshots: dict[tuple[str, str, str], int] = {}
    for pool in pools:
        for volume in cache.children(paths.storage_pool_volumes(pool)):
            doc = cache.get(paths.storage_volume(pool, volume))
            stats = doc.get("stats") if isinstance(doc, dict) else None
            size = stats.get("size") if isinstance(stats, dict) else None
            volumes[(pool, volume)] = size if isinstance(size, int) else 0
            for snapshot in cache.children(paths.storage_volume_snapshots(pool, volume)):
                snap = cache.get(paths.storage_snapshot(pool, volume, snapshot))
                snap_size = snap.get("size") if isinstance(snap, dict) else None
                snapshots[(pool, volume, snapshot)] = \
                    snap_size if isinstance(snap_size, int) else volumes[(pool, volume)]
    return ClusterFacts(vm_names=frozenset(names), macs=vm_macs(view),
                        vnis=frozenset(view.network_vnis()), pools=frozenset(pools),
                        volumes=volumes, snapshots=snapshots, nodes=view.node_loads())
