"""What a VM import or restore will create, checked against the cluster (extensions.md §5.2
import, §5.4 restore): the API checks it before it creates the task (a 510 changes nothing),
and the task checks it again right before it creates the first volume.

From the chain of manifests (its full root first, the target last): the VM's name and UUID
(the manifest's, or `new_name` with a new UUID), its volumes (named `<vm>` or `<vm>_<suffix>`
renamed as in §11.1; others keep their names), and its XML with the new name, UUID and disk
sources. Refused (nothing created): the name taken or reserved, the UUID taken, a target
volume that exists or is busy in a storage request, an unknown pool, an XML the API would not
take.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from typing import Any

from pvcd.domain.errors import Conflict, InvalidValue, NotFound
from pvcd.domain.placement import choose_node
from pvcd.domain.records import VmSpec, from_dict
from pvcd.domain.vm_backups import Manifest, renamed_volume
from pvcd.domain.vm_snapshots import CONSISTENCY_RECORDED, NOT_CONSISTENT, VmSnapshot
from pvcd.state.view import ClusterView
from pvcd.vmxml import (
    RESERVED_VM_NAMES,
    DomainDefinition,
    check_vm_name,
    parse_domain_xml,
    parse_safely,
    renamed_domain_xml,
)

META_FIELDS = ("node_limit", "node_selector", "node_autostart", "migration_method",
               "migration_max_downtime", "profile")


@dataclasses.dataclass
class RestorePlan:
    chain: list[Manifest]  # full root first, the target last
    name: str
    uuid: str
    volumes: list[tuple[str, str, str]]  # (pool, exported volume, new volume)
    definition: DomainDefinition

    @property
    def target(self) -> Manifest:
        return self.chain[-1]

    def objects(self) -> list[str]:
        return [f"vm:{self.uuid}", *(f"volume:{pool}/{new}" for pool, _, new in self.volumes)]


def plan_restore(view: ClusterView, chain: list[Manifest], new_name: str | None,
                 new_uuid: str | None) -> RestorePlan:
    """The plan (module docstring), or the refusal."""
    target = chain[-1]
    old_name = target.vm_name
    name = check_vm_name(new_name if new_name is not None else old_name)
    uuid = new_uuid if new_name is not None and new_uuid else target.vm_uuid
    if name in RESERVED_VM_NAMES:
        raise InvalidValue(f"'{name}' is reserved (an API path); give another new_name")
    if view.resolve_vm(name) is not None:
        raise Conflict(f"a VM named '{name}' exists; remove or rename it first, or give "
                       "new_name; nothing was changed")
    if view.cache.exists(view.paths.vm(uuid)):
        raise Conflict(f"a VM with UUID {uuid} exists (VM "
                       f"'{(view.vm_spec(uuid) or VmSpec(uuid, '?', '', '')).name}'); give "
                       "new_name to import it as a new VM; nothing was changed")
    volumes = [(f.pool, f.volume, renamed_volume(f.volume, old_name, new_name))
               for f in target.files]
    busy = _volumes_in_requests(view)
    for pool, _, volume in volumes:
        if not view.cache.exists(view.paths.storage_pool(pool)):
            raise NotFound(f"RBD pool {pool} does not exist; create it first; nothing was "
                           "changed")
        if view.cache.exists(view.paths.storage_volume(pool, volume)) or \
                (pool, volume) in busy:
            raise Conflict(f"RBD volume {pool}/{volume} exists (or is being made); remove it "
                           "or give another new_name; nothing was changed")
    moved = {f"{pool}/{old}": f"{pool}/{new}" for pool, old, new in volumes}
    xml = renamed_domain_xml(with_uuid(target.vm_detail["xml"], uuid), name, moved)
    definition = parse_domain_xml(xml, default_uuid=uuid)
    return RestorePlan(chain=chain, name=name, uuid=uuid, volumes=volumes,
                       definition=definition)


def with_uuid(xml: str, uuid: str) -> str:
    """The XML with its `<uuid>` set (added if missing)."""
    root = parse_safely(xml)
    element = root.find("uuid")
    if element is None:
        element = ET.SubElement(root, "uuid")
    element.text = uuid
    return ET.tostring(root, encoding="unicode")


def restored_spec(view: ClusterView, plan: RestorePlan, start: bool) -> VmSpec:
    """The VM's record: the manifest's metadata and tags, on its exported node if that is
    ready, else placed by its own selector and limit."""
    detail = plan.target.vm_detail
    definition = plan.definition
    doc: dict[str, Any] = {"uuid": plan.uuid, "name": plan.name, "xml": definition.xml,
                           "node": "", "memory": definition.memory, "vcpu": definition.vcpu,
                           "state": "start" if start else "stop",
                           "info": definition.to_api_fields(),
                           "tags": list(detail.get("tags") or [])}
    doc.update({key: detail[key] for key in META_FIELDS if detail.get(key) is not None})
    spec = from_dict(VmSpec, doc)
    loads = view.node_loads()
    exported = str(detail.get("node") or "")
    spec.node = choose_node(loads, exported or None, spec.node_selector,
                            memory=definition.memory, limit=spec.node_limit)
    return spec


def restored_snapshot(plan: RestorePlan, spec: VmSpec) -> VmSnapshot:
    """The retained snapshot's record on the imported volumes."""
    target = plan.target
    detail = target.vm_detail
    consistency = target.consistency if target.consistency in CONSISTENCY_RECORDED \
        else NOT_CONSISTENT
    return VmSnapshot(name=target.snapshot_name, timestamp=target.created,
                      consistency=consistency, xml=spec.xml,
                      meta={key: detail.get(key) for key in META_FIELDS},
                      tags=list(detail.get("tags") or []),
                      rbd_snapshots=[f"{pool}/{new}@{target.snapshot_name}"
                                     for pool, _, new in plan.volumes])


def _volumes_in_requests(view: ClusterView) -> set[tuple[str, str]]:
    busy = set()
    for request_id in view.cache.children(view.paths.storage_requests):
        doc = view.cache.get(view.paths.storage_request(request_id))
        if not isinstance(doc, dict) or doc.get("state") in ("done", "failed"):
            continue
        args = doc.get("args") or {}
        for key in ("volume", "new_volume", "name"):
            if args.get("pool") and args.get(key):
                busy.add((str(args["pool"]), str(args[key])))
    return busy
