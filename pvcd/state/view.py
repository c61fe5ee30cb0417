"""Read-side helpers over the cache: typed answers to "what does the cluster look like now".

Used by the API (to render objects) and by controllers (to decide). Everything here reads the
watch-fed cache only; nothing here talks to ZooKeeper.
"""

from __future__ import annotations

from typing import Any

from pvcd.domain.placement import NodeLoad
from pvcd.domain.records import (
    AclSpec,
    DhcpLease,
    Handover,
    NetworkSpec,
    NodeSpec,
    NodeStatus,
    StaticLeaseSpec,
    VmSpec,
    VmStatus,
    from_dict,
)
from pvcd.state.cache import Entry, StateCache
from pvcd.state.schema import Paths
from pvcd.state.vm_loads import AssignedLoads

# daemon states in which a node without a live session is reported dead
_LIVE_DAEMON_STATES = ("init", "run")


class ClusterView:
    def __init__(self, cache: StateCache, paths: Paths) -> None:
        self.cache = cache
        self.paths = paths
        self._assigned = AssignedLoads(cache, paths)  # kept from change notifications

    # nodes
    def node_names(self) -> list[str]:
        return self.cache.children(self.paths.nodes)

    def node_spec(self, name: str) -> NodeSpec | None:
        doc = self.cache.get(self.paths.node(name))
        return None if doc is None else from_dict(NodeSpec, doc)

    def node_spec_entry(self, name: str) -> Entry | None:
        return self.cache.entry(self.paths.node(name))

    def node_status(self, name: str) -> NodeStatus | None:
        doc = self.cache.get(self.paths.node_status(name))
        return None if doc is None else from_dict(NodeStatus, doc)

    def node_alive(self, name: str) -> bool:
        return self.cache.exists(self.paths.node_alive(name))

    def node_daemon_state(self, name: str, reported: str | None = None) -> str:
        """The daemon state as operators should see it: a node whose session is gone while it
        claimed to run is `dead`, whatever its last own report (`reported`) said."""
        if reported is None:
            doc = self.cache.get(self.paths.node_status(name)) or {}
            reported = str(doc.get("daemon_state", "init"))
        state = reported
        if state in _LIVE_DAEMON_STATES and not self.node_alive(name):
            return "dead"
        return state

    def node_libvirt_uri(self, name: str) -> str | None:
        doc = self.cache.get(self.paths.node_status(name)) or {}
        return doc.get("libvirt_uri") or None

    def node_migration_uri(self, name: str) -> str | None:
        doc = self.cache.get(self.paths.node_status(name)) or {}
        return doc.get("migration_uri") or None

    def node_loads(self) -> list[NodeLoad]:
        """Every node as placement sees it: states, size, and what is assigned to it."""
        assigned = self._assigned.totals()  # node -> (memory, vcpus, vms)
        loads = []
        for name in self.node_names():
            status = self.node_status(name) or NodeStatus()
            memory, vcpus, vms = assigned.get(name, (0, 0, 0))
            loads.append(NodeLoad(
                name=name, daemon_state=self.node_daemon_state(name, status.daemon_state),
                domain_state=status.domain_state, memory_total=status.stats.memory_total,
                load=status.stats.load, memory_allocated=memory, vcpus_allocated=vcpus,
                vms=vms))
        return loads

    def live_coordinators(self) -> list[str]:
        names = []
        for name in self.node_names():
            spec = self.cache.get(self.paths.node(name)) or {}
            if spec.get("coordinator") and self.node_daemon_state(name) == "run":
                names.append(name)
        return names

    # VMs
    def vm_uuids(self) -> list[str]:
        return self.cache.children(self.paths.vms)

    def vm_spec(self, uuid: str) -> VmSpec | None:
        doc = self.cache.get(self.paths.vm(uuid))
        return None if doc is None else from_dict(VmSpec, doc)

    def vm_status(self, uuid: str) -> VmStatus | None:
        doc = self.cache.get(self.paths.vm_status(uuid))
        return None if doc is None else from_dict(VmStatus, doc)

    def vm_owner(self, uuid: str) -> str | None:
        """The node holding the VM's claim (the one that may run it), if any."""
        doc = self.cache.get(self.paths.vm_owner(uuid))
        return str(doc["node"]) if isinstance(doc, dict) and doc.get("node") else None

    def vm_uuid_by_name(self, name: str) -> str | None:
        doc = self.cache.get(self.paths.vm_name(name))
        return doc.get("uuid") if isinstance(doc, dict) else None

    def resolve_vm(self, name_or_uuid: str) -> str | None:
        """The UUID of the VM named or identified by `name_or_uuid`, or None."""
        if self.cache.exists(self.paths.vm(name_or_uuid.lower())):
            return name_or_uuid.lower()
        return self.vm_uuid_by_name(name_or_uuid)

    def vm_docs_on(self, node: str) -> list[dict[str, Any]]:
        """Spec documents of the VMs assigned to `node`."""
        docs = []
        for uuid in self.vm_uuids():
            doc = self.cache.get(self.paths.vm(uuid))
            if isinstance(doc, dict) and doc.get("node") == node:
                docs.append(doc)
        return docs

    def maintenance(self) -> bool:
        """Maintenance mode: fencing and recovery are suspended while operators work."""
        doc = self.cache.get(self.paths.maintenance)
        return isinstance(doc, dict) and bool(doc.get("enabled"))

    # coordinator
    def primary_entry(self) -> Entry | None:
        return self.cache.entry(self.paths.primary)

    def primary(self) -> str | None:
        doc = self.cache.get(self.paths.primary)  # on the hot path of list reads: no dataclass
        return doc.get("node") if isinstance(doc, dict) else None

    def handover(self) -> Handover | None:
        doc = self.cache.get(self.paths.handover)
        if not isinstance(doc, dict) or "from_node" not in doc:
            return None
        return Handover(doc["from_node"], doc.get("to_node"), float(doc.get("requested", 0)))

    # client networks
    def network_vnis(self) -> list[int]:
        return sorted(int(v) for v in self.cache.children(self.paths.networks) if v.isdigit())

    def network(self, vni: int) -> NetworkSpec | None:
        doc = self.cache.get(self.paths.network(vni))
        return None if not isinstance(doc, dict) else from_dict(NetworkSpec, doc)

    def resolve_network(self, name: str) -> int | None:
        """The VNI of the network named by `name`: its VNI, else its description."""
        # isascii: str.isdigit() also accepts digits int() refuses (e.g. superscripts)
        if name.isascii() and name.isdigit() and self.cache.exists(self.paths.network(int(name))):
            return int(name)
        doc = self.cache.get(self.paths.network_name(name)) if "/" not in name else None
        return int(doc["vni"]) if isinstance(doc, dict) and "vni" in doc else None

    def static_leases(self, vni: int) -> list[StaticLeaseSpec]:
        path = self.paths.network_static_leases(vni)
        docs = (self.cache.get(f"{path}/{mac}") for mac in self.cache.children(path))
        return [from_dict(StaticLeaseSpec, d) for d in docs if isinstance(d, dict)]

    def dhcp_leases(self, vni: int) -> list[DhcpLease]:
        path = self.paths.network_leases(vni)
        docs = (self.cache.get(f"{path}/{mac}") for mac in self.cache.children(path))
        return [from_dict(DhcpLease, d) for d in docs if isinstance(d, dict)]

    def acls(self, vni: int, direction: str) -> list[AclSpec]:
        """The network's ACLs of one direction, in chain order."""
        path = self.paths.network_acls(vni, direction)
        docs = (self.cache.get(f"{path}/{name}") for name in self.cache.children(path))
        acls = [from_dict(AclSpec, d) for d in docs if isinstance(d, dict)]
        return sorted(acls, key=lambda acl: (acl.order, acl.description))

    def node_underlay_address(self, name: str) -> str | None:
        doc = self.cache.get(self.paths.node_status(name)) or {}
        return doc.get("underlay_address") or None
