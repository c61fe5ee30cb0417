"""The ZooKeeper layout of a pvcd cluster, in one place.

Every path any part of pvcd reads or writes is built here, so the layout can be read (and
documented in docs/zookeeper-layout.md) from this one module. One znode per object holds a JSON
document (the desired spec); observed state written by the acting node lives in a `status` child;
liveness is an ephemeral `alive` child bound to the daemon's session.

The layout is versioned (`<root>/schema/version`). `ensure_schema` creates the base paths and
applies the migrations in `MIGRATIONS` in order, each one in a single transaction together with
the version bump, so a crash between migrations leaves a consistent, resumable state.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from pvcd.domain.provisioner import KINDS as PROVISIONER_KINDS
from pvcd.state.client import secure_tree
from pvcd.state.codec import decode, encode

SCHEMA_VERSION = 2


class Paths:
    """The paths of one cluster below its root (e.g. `/pvc`)."""

    def __init__(self, root: str = "/pvc") -> None:
        self.root = root.rstrip("/") or "/"
        self._prefix = self.root.rstrip("/")
        self._nodes = f"{self._prefix}/nodes"

    def _join(self, *parts: str) -> str:
        return "/".join([self._prefix, *parts])

    # schema
    @property
    def schema_version(self) -> str:
        return self._join("schema", "version")

    # nodes: <root>/nodes/<name> (spec) with children status and alive
    @property
    def nodes(self) -> str:
        return self._join("nodes")

    # the per-node paths are on the hot path of list reads: plain f-strings
    def node(self, name: str) -> str:
        return f"{self._nodes}/{name}"

    def node_status(self, name: str) -> str:
        return f"{self._nodes}/{name}/status"

    def node_alive(self, name: str) -> str:
        return f"{self._nodes}/{name}/alive"

    def node_health(self, name: str) -> str:
        """The node's latest round of health checks (extensions.md §8.3), written by the node."""
        return f"{self._nodes}/{name}/health"

    # coordinator election: the ephemeral primary lock and a pending handover request
    @property
    def coordinator(self) -> str:
        return self._join("coordinator")

    @property
    def primary(self) -> str:
        return self._join("coordinator", "primary")

    @property
    def handover(self) -> str:
        return self._join("coordinator", "handover")

    # VMs: <root>/vms/<uuid> (spec) with child status; the name index vm-names/<name> → uuid
    @property
    def vms(self) -> str:
        return self._join("vms")

    def vm(self, uuid: str) -> str:
        return f"{self._prefix}/vms/{uuid}"

    def vm_status(self, uuid: str) -> str:
        return f"{self._prefix}/vms/{uuid}/status"

    def vm_console(self, uuid: str) -> str:
        """The tail of the VM's serial console log (extensions.md §7), written by its node."""
        return f"{self._prefix}/vms/{uuid}/console"

    def vm_owner(self, uuid: str) -> str:
        return f"{self._prefix}/vms/{uuid}/owner"

    def vm_snapshots(self, uuid: str) -> str:
        """The parent of the VM's snapshot records (extensions.md §5.1)."""
        return f"{self._prefix}/vms/{uuid}/snapshots"

    def vm_snapshot(self, uuid: str, name: str) -> str:
        return f"{self._prefix}/vms/{uuid}/snapshots/{name}"

    def vm_hold(self, uuid: str) -> str:
        """A snapshot task's request that the VM's node pause or freeze the guest
        (`pvcd.controllers.guest_hold`)."""
        return f"{self._prefix}/vms/{uuid}/hold"

    @property
    def vm_names(self) -> str:
        return self._join("vm-names")

    def vm_name(self, name: str) -> str:
        return f"{self._prefix}/vm-names/{name}"

    # fencing: one record per node the primary declared dead, and a cluster-wide lock
    @property
    def fencing(self) -> str:
        return self._join("fencing")

    def fence_record(self, node: str) -> str:
        return f"{self._prefix}/fencing/{node}"

    @property
    def fence_lock(self) -> str:
        return self._join("coordinator", "fence-lock")

    # cluster-wide flags
    @property
    def cluster(self) -> str:
        return self._join("cluster")

    @property
    def maintenance(self) -> str:
        return self._join("cluster", "maintenance")

    @property
    def autobackup(self) -> str:
        """The autobackup configuration and its runs' latest results (extensions.md §5.5)."""
        return self._join("cluster", "autobackup")

    @property
    def restore_marker(self) -> str:
        """Present while a cluster state restore (extensions.md §9) has not finished."""
        return self._join("cluster", "restore")

    # faults (extensions.md §8.2): faults/<id>, raised by the primary, acknowledged and deleted
    # through the API
    @property
    def faults(self) -> str:
        return self._join("faults")

    def fault(self, fault_id: str) -> str:
        return f"{self._prefix}/faults/{fault_id}"

    # node logs (extensions.md §7): logs/<node>, the node's recent log lines, written by it
    @property
    def logs(self) -> str:
        return self._join("logs")

    def node_log(self, name: str) -> str:
        return f"{self._prefix}/logs/{name}"

    # API sessions (so that a login survives a primary handover)
    @property
    def sessions(self) -> str:
        return self._join("sessions")

    def session(self, sid: str) -> str:
        return self._join("sessions", sid)

    # client networks: <root>/networks/<vni> (NetworkSpec) with children
    #   static/<mac> (static DHCP leases, API)   leases/<mac> (active leases, the primary)
    #   acl/in/<description>, acl/out/<description> (ACLs, API)
    # and the description index network-names/<description> → {vni}
    @property
    def networks(self) -> str:
        return self._join("networks")

    def network(self, vni: int | str) -> str:
        return f"{self._prefix}/networks/{vni}"

    def network_static_leases(self, vni: int | str) -> str:
        return f"{self._prefix}/networks/{vni}/static"

    def network_static_lease(self, vni: int | str, mac: str) -> str:
        return f"{self._prefix}/networks/{vni}/static/{mac}"

    def network_leases(self, vni: int | str) -> str:
        return f"{self._prefix}/networks/{vni}/leases"

    def network_lease(self, vni: int | str, mac: str) -> str:
        return f"{self._prefix}/networks/{vni}/leases/{mac}"

    def network_acls(self, vni: int | str, direction: str | None = None) -> str:
        base = f"{self._prefix}/networks/{vni}/acl"
        return base if direction is None else f"{base}/{direction}"

    def network_acl(self, vni: int | str, direction: str, description: str) -> str:
        return f"{self._prefix}/networks/{vni}/acl/{direction}/{description}"

    def network_containers(self, vni: int | str) -> list[str]:
        """The child folders created with a network (parents first)."""
        return [self.network_static_leases(vni), self.network_leases(vni),
                self.network_acls(vni), self.network_acls(vni, "in"),
                self.network_acls(vni, "out")]

    @property
    def network_names(self) -> str:
        return self._join("network-names")

    def network_name(self, description: str) -> str:
        return f"{self._prefix}/network-names/{description}"

    # Ceph storage (docs/storage.md): mirrors of what Ceph confirmed, written by the storage
    # controllers; requests/<id> written by the API, carried out by the primary or by the
    # node that owns an OSD. Volumes and snapshots are grouped in per-pool (and per-volume)
    # container znodes created and deleted with their pool (volume).
    @property
    def storage(self) -> str:
        return self._join("storage")

    @property
    def storage_status(self) -> str:
        return self._join("storage", "status")

    @property
    def storage_df(self) -> str:
        return self._join("storage", "df")

    @property
    def storage_requests(self) -> str:
        return self._join("storage", "requests")

    def storage_request(self, request_id: str) -> str:
        return f"{self._prefix}/storage/requests/{request_id}"

    @property
    def storage_osds(self) -> str:
        return self._join("storage", "osds")

    def storage_osd(self, osd_id: int | str) -> str:
        return f"{self._prefix}/storage/osds/{osd_id}"

    @property
    def storage_pools(self) -> str:
        return self._join("storage", "pools")

    def storage_pool(self, pool: str) -> str:
        return f"{self._prefix}/storage/pools/{pool}"

    @property
    def storage_volumes(self) -> str:
        return self._join("storage", "volumes")

    def storage_pool_volumes(self, pool: str) -> str:
        return f"{self._prefix}/storage/volumes/{pool}"

    def storage_volume(self, pool: str, volume: str) -> str:
        return f"{self._prefix}/storage/volumes/{pool}/{volume}"

    @property
    def storage_snapshots(self) -> str:
        return self._join("storage", "snapshots")

    def storage_pool_snapshots(self, pool: str) -> str:
        return f"{self._prefix}/storage/snapshots/{pool}"

    def storage_volume_snapshots(self, pool: str, volume: str) -> str:
        return f"{self._prefix}/storage/snapshots/{pool}/{volume}"

    def storage_snapshot(self, pool: str, volume: str, snapshot: str) -> str:
        return f"{self._prefix}/storage/snapshots/{pool}/{volume}/{snapshot}"

    # tasks (docs/tasks.md): tasks/<id> written by the API (create, cancel, remove), its
    # executor (claim, progress, result) and the primary (interruption, cleanup, expiry)
    @property
    def tasks(self) -> str:
        return self._join("tasks")

    def task(self, task_id: str) -> str:
        return f"{self._prefix}/tasks/{task_id}"

    # provisioner (extensions.md §3): provisioner/<kind>/<name>, written by the API and the
    # ova.upload task; kinds in pvcd.domain.provisioner.KINDS
    @property
    def provisioner(self) -> str:
        return self._join("provisioner")

    def provisioner_kind(self, kind: str) -> str:
        return f"{self._prefix}/provisioner/{kind}"

    def provisioner_object(self, kind: str, name: str) -> str:
        return f"{self._prefix}/provisioner/{kind}/{name}"

    def storage_base_paths(self) -> list[str]:
        return [self.storage, self.storage_requests, self.storage_osds, self.storage_pools,
                self.storage_volumes, self.storage_snapshots]

    def base_paths(self) -> list[str]:
        """Paths that must exist in every cluster of the current schema."""
        return [self.nodes, self.coordinator, self.sessions, self.vms, self.vm_names,
                self.networks, self.network_names, self.fencing,
                self.cluster, self.tasks, *self.storage_base_paths(), self.provisioner,
                self.faults, self.logs,
                *(self.provisioner_kind(kind) for kind in PROVISIONER_KINDS)]


Migration = Callable[[KazooClient, Paths], None]

# the metadata fields schema 2 gives every VM (extensions.md Appendix A), with their defaults
VM_META_DEFAULTS: dict[str, object] = {
    "node_limit": [], "node_selector": "none", "node_autostart": False,
    "migration_method": "none", "migration_max_downtime": 300, "profile": None, "tags": []}


def upgrade_vm_doc(doc: dict[str, object]) -> dict[str, object]:
    """A schema-1 VM document in schema 2: `selector` is `node_selector` (none: the default),
    a VM a flush shut down for want of a target (`resume_on` its node) has `node_autostart`,
    and every metadata field is there."""
    new = dict(doc)
    selector = new.pop("selector", None)
    if selector and "node_selector" not in new:
        new["node_selector"] = selector
    resume_on = new.pop("resume_on", None)
    if resume_on and resume_on == new.get("node"):
        new["node_autostart"] = True
    for name, default in VM_META_DEFAULTS.items():
        new.setdefault(name, list(default) if isinstance(default, list) else default)
    return new


def _migrate_vm_meta(client: KazooClient, paths: Paths) -> None:
    """Schema 2: every VM document upgraded (`upgrade_vm_doc`), each with compare-and-set (a
    document changed meanwhile is read again). Idempotent: a second run changes nothing."""
    for uuid in client.get_children(paths.vms):
        while True:
            try:
                raw, stat = client.get(paths.vm(uuid))
            except NoNodeError:
                break
            doc = decode(raw)
            if not isinstance(doc, dict):
                break  # not a document of ours: the daemons refuse it as it is
            new = upgrade_vm_doc(doc)
            if new == doc:
                break
            try:
                client.set(paths.vm(uuid), encode(new), version=stat.version)
                break
            except BadVersionError:
                continue
            except NoNodeError:
                break


# MIGRATIONS[n] upgrades a cluster from version n-1 to n. Version 1 is the initial layout,
# created by ensure_schema itself.
MIGRATIONS: dict[int, Migration] = {2: _migrate_vm_meta}


def ensure_schema(client: KazooClient, paths: Paths) -> int:
    """Create the base layout if missing and migrate it to SCHEMA_VERSION; return the version."""
    client.ensure_path(paths.root)
    secure_tree(client, paths.root)  # a tree made before credentials were configured
    client.ensure_path(_parent(paths.schema_version))
    try:
        client.create(paths.schema_version, _version_doc(SCHEMA_VERSION))
    except NodeExistsError:
        pass
    for path in paths.base_paths():
        client.ensure_path(path)
    while True:
        raw, stat = client.get(paths.schema_version)
        version = int(json.loads(raw.decode())["version"])
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"cluster schema version {version} is newer than this pvcd ({SCHEMA_VERSION}); "
                "upgrade pvcd"
            )
        if version == SCHEMA_VERSION:
            return version
        MIGRATIONS[version + 1](client, paths)
        try:
            client.set(paths.schema_version, _version_doc(version + 1), version=stat.version)
        except BadVersionError:
            continue  # another node migrated concurrently; re-read


def _version_doc(version: int) -> bytes:
    return json.dumps({"version": version}).encode()


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"
