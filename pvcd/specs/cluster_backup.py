"""What a cluster state backup holds, and the check of one before it is restored
(extensions.md §9).

`included` is the one rule of which znodes a backup holds (the desired state the API writes),
used to take a backup (`pvcd.state.cluster_backup`) and to refuse a document that names
anything else. `check_backup` applies every rule the API applies on creation, with the rules'
own homes (`pvcd.specs.networks`, `pvcd.specs.vms`, `pvcd.specs.provisioner`,
`pvcd.domain.dns`), to the whole document before anything is written: a document that breaks
one is refused whole, saying where. What it cannot know from the document is passed in: the
cluster's schema version, its node names, and the ACL rule parser.

Two rules differ from a creation, on purpose. A storage template's pools are not checked
against Ceph: Ceph is not part of the backup and is not touched by a restore (a VM or profile
whose volumes or pools are missing fails when it is used, as after any loss of storage). And a
VM's `node` may name a node this cluster lacks: the restore places such a VM again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, cast

from pvcd.domain.dns import check_unique_domain
from pvcd.domain.errors import InvalidValue, PvcError
from pvcd.domain.provisioner import KINDS, RECORDS, Profile, StorageTemplate
from pvcd.domain.records import DhcpLease, NetworkSpec, StaticLeaseSpec, VmSpec, from_dict
from pvcd.domain.states import ACL_DIRECTIONS
from pvcd.specs.networks import (
    check_acl_document,
    check_network_document,
    check_static_lease_document,
)
from pvcd.specs.provisioner import (
    check_network_template,
    check_object_name,
    check_profile,
    check_storage_template,
    check_system_template,
    check_userdata,
)
from pvcd.specs.vms import check_vm_document

FORMAT = "pvcd-cluster-backup"
FORMAT_VERSION = 1
NETWORK_FOLDERS = ("static", "leases", "acl", "acl/in", "acl/out")  # made with each network
_BAD_PART = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATH = 1024

RuleBody = Callable[[str], dict[str, Any]]


def included(relative: str) -> bool:
    """Whether the znode at `relative` (below the cluster root) belongs in a backup: networks
    and everything under them, VM specs and their snapshots, both name indexes, provisioner
    objects, the schema version and the autobackup configuration."""
    parts = relative.split("/")
    top, depth = parts[0], len(parts)
    if top in ("networks", "network-names", "vm-names"):
        return depth >= 2
    if top == "vms":  # the spec and its snapshots; not status, owner, console
        return depth == 2 or (depth >= 3 and parts[2] == "snapshots")
    if top == "provisioner":  # the objects, not the kind folders every cluster has
        return depth == 3
    return relative in ("schema/version", "cluster/autobackup")


@dataclasses.dataclass(frozen=True)
class ClusterBackup:
    """A checked backup: its documents by path relative to the cluster root."""

    schema_version: int
    created: float | None
    primary_node: str | None
    znodes: dict[str, Any]

    def count(self, top: str, depth: int) -> int:
        return sum(1 for path in self.znodes
                   if path.startswith(top + "/") and path.count("/") == depth - 1)

    def summary(self) -> str:
        return (f"{self.count('vms', 2)} VMs, {self.count('networks', 2)} networks, "
                f"{self.count('provisioner', 3)} provisioner objects")


def parse_backup(text: str | bytes) -> Any:
    """The JSON of a backup document; InvalidValue if it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidValue(f"cluster_data is not a JSON document ({exc}): give the document "
                           "GET /backup answered") from None


def check_backup(doc: Any, schema_version: int, nodes: Collection[str],
                 rule_body: RuleBody) -> ClusterBackup:
    """The whole document by the API's rules (module docstring), or InvalidValue (NotFound
    for a reference to a missing object) saying where it breaks one."""
    znodes = _check_header(doc, schema_version)
    for path in znodes:
        _check_path(path)
    if znodes.get("schema/version") != {"version": schema_version}:
        raise InvalidValue(f"znodes lacks schema/version {{\"version\": {schema_version}}}: "
                           "the document is not a whole backup")
    networks = _check_networks(znodes, rule_body)
    _check_vms(znodes)
    _check_provisioner(znodes, nodes, networks)
    autobackup = znodes.get("cluster/autobackup")
    if "cluster/autobackup" in znodes and not isinstance(autobackup, dict):
        raise InvalidValue("cluster/autobackup is not a JSON object")
    created = doc.get("created")
    primary = doc.get("primary_node")
    return ClusterBackup(schema_version,
                         float(created) if isinstance(created, (int, float)) and
                         not isinstance(created, bool) else None,
                         primary if isinstance(primary, str) else None, _with_folders(znodes))


def check_indexes(znodes: Mapping[str, Any]) -> None:
    """InvalidValue unless both name indexes hold exactly one entry per object, each naming
    it: the test that a copy of the state holds no transaction in part."""
    vms = {str(doc.get("name")): path.split("/")[1] for path, doc in znodes.items()
           if path.startswith("vms/") and path.count("/") == 1 and isinstance(doc, dict)}
    networks = {str(doc.get("description")): int(path.split("/")[1])
                for path, doc in znodes.items() if path.startswith("networks/") and
                path.count("/") == 1 and path.split("/")[1].isascii() and
                path.split("/")[1].isdigit() and isinstance(doc, dict)}
    _check_index(znodes, "vm-names", "uuid", vms, "VM")
    _check_index(znodes, "network-names", "vni", networks, "network")


def _check_header(doc: Any, schema_version: int) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise InvalidValue("cluster_data is not a JSON object: give the document GET /backup "
                           "answered")
    form = doc.get("format")
    if form != FORMAT:
        shown = json.dumps(form)[:60]
        raise InvalidValue(f"the document's format is {shown}, not '{FORMAT}': only a backup "
                           "that pvcd's GET /backup made can be restored (a PVC 1.0 dump of "
                           "its ZooKeeper tree is refused)")
    version = doc.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise InvalidValue(f"format_version {json.dumps(version)[:40]} is not supported: this "
                           f"pvcd restores format_version {FORMAT_VERSION}")
    schema = doc.get("schema_version")
    if type(schema) is not int or schema != schema_version:
        raise InvalidValue(f"the backup was made at schema version {json.dumps(schema)[:40]}; "
                           f"this cluster is at schema version {schema_version}: restore it "
                           "into a cluster of the same version")
    znodes = doc.get("znodes")
    if not isinstance(znodes, dict):
        raise InvalidValue("the document has no znodes object (path: document)")
    return znodes


def _check_path(path: str) -> None:
    shown = path[:80]
    parts = path.split("/")
    if len(path) > MAX_PATH or any(p in ("", ".", "..") or _BAD_PART.search(p) for p in parts):
        raise InvalidValue(f"znodes names '{shown}', which is not a path below the cluster "
                           "root (parts separated by single '/', no '.' or '..', no control "
                           "characters)")
    if not included(path):
        raise InvalidValue(f"znodes names '{shown}', which a cluster backup never holds: only "
                           "schema/version, networks/**, network-names/*, vms/<uuid>, "
                           "vms/<uuid>/snapshots/**, vm-names/*, provisioner/<kind>/<name> and "
                           "cluster/autobackup")


@contextlib.contextmanager
def _at(path: str) -> Iterator[None]:
    """Refusals inside prefixed with the path they are about."""
    try:
        yield
    except PvcError as exc:
        raise type(exc)(f"{path[:80]}: {exc}") from None
    except (TypeError, ValueError, AttributeError):
        raise InvalidValue(f"{path[:80]}: not a document of its kind") from None


# --- networks ------------------------------------------------------------------------------

def _check_networks(znodes: Mapping[str, Any], rule_body: RuleBody) -> dict[int, NetworkSpec]:
    specs: dict[int, NetworkSpec] = {}
    for path, doc in znodes.items():
        parts = path.split("/")
        if parts[0] == "networks" and len(parts) == 2:
            vni = _vni(path, parts[1])
            with _at(path):
                specs[vni] = check_network_document(vni, doc)
    statics: dict[int, list[StaticLeaseSpec]] = {vni: [] for vni in specs}
    for path, doc in sorted(znodes.items()):
        parts = path.split("/")
        if parts[0] != "networks" or len(parts) == 2:
            continue
        vni = _vni(path, parts[1])
        spec = specs.get(vni)
        if spec is None:
            raise InvalidValue(f"{path}: the document has no networks/{parts[1]} it belongs to")
        rest = "/".join(parts[2:])
        if rest in NETWORK_FOLDERS:
            continue
        with _at(path):
            if len(parts) == 4 and parts[2] == "static":
                statics[vni].append(check_static_lease_document(spec, parts[3], doc,
                                                                statics[vni]))
                continue
            if len(parts) == 4 and parts[2] == "leases":
                _active_lease(doc)
                continue
            if len(parts) == 5 and parts[2] == "acl" and parts[3] in ACL_DIRECTIONS:
                check_acl_document(spec, parts[3], parts[4], doc, rule_body)
                continue
            raise InvalidValue("a network holds only static/<mac>, leases/<mac> and "
                               "acl/in|out/<description>")
    _check_index(znodes, "network-names", "vni",
                 {spec.description: vni for vni, spec in specs.items()}, "network")
    for vni, spec in specs.items():
        with _at(f"networks/{vni}"):
            check_unique_domain(vni, spec.domain, [o for o in specs.values() if o.vni != vni])
    return specs


def _vni(path: str, text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 8) or str(int(text)) != text:
        raise InvalidValue(f"{path[:80]}: '{text[:20]}' is not a network's VNI")
    return int(text)


def _active_lease(doc: Any) -> DhcpLease:
    if not isinstance(doc, dict):
        raise InvalidValue("not a DHCP lease document")
    lease = from_dict(DhcpLease, doc)
    if not isinstance(lease.mac, str) or not isinstance(lease.ip, str):
        raise InvalidValue("a DHCP lease names its mac and ip as texts")
    return lease


def _check_index(znodes: Mapping[str, Any], folder: str, key: str, expected: dict[str, Any],
                 what: str) -> None:
    """The name index `folder/<name>` → `{key: id}` holds exactly one entry per object, each
    naming the object of that name (`expected`: name → id)."""
    found: dict[str, Any] = {}
    for path, doc in znodes.items():
        parts = path.split("/")
        if parts[0] != folder:
            continue
        if len(parts) != 2 or not isinstance(doc, dict) or set(doc) != {key}:
            raise InvalidValue(f"{path[:80]}: an entry of {folder} is {{\"{key}\": ...}}")
        found[parts[1]] = doc[key]
    for name, ident in expected.items():
        if found.get(name) != ident:
            raise InvalidValue(f"{folder}/{name[:64]}: the {what} {ident} of that name needs "
                               f"this index entry, naming it ({{\"{key}\": {json.dumps(ident)}}})")
    for name, ident in found.items():
        if expected.get(name) != ident:
            raise InvalidValue(f"{folder}/{name[:64]} names {json.dumps(ident)[:60]}, which is "
                               f"no {what} of that name in the document")


# --- VMs -----------------------------------------------------------------------------------

def _check_vms(znodes: Mapping[str, Any]) -> None:
    names: dict[str, str] = {}
    for path, doc in znodes.items():
        parts = path.split("/")
        if parts[0] != "vms":
            continue
        if len(parts) > 2:
            if f"vms/{parts[1]}" not in znodes:
                raise InvalidValue(f"{path[:80]}: the document has no vms/{parts[1]} it "
                                   "belongs to")
            if len(parts) > 3 and not isinstance(doc, dict):
                raise InvalidValue(f"{path[:80]}: a snapshot record is a JSON object")
            continue
        if not isinstance(doc, dict):
            raise InvalidValue(f"{path[:80]}: not a VM document")
        with _at(path):
            spec = from_dict(VmSpec, doc)
            check_vm_document(parts[1], spec)
        if spec.name in names:
            raise InvalidValue(f"{path}: the VM name '{spec.name}' is also the name of "
                               f"vms/{names[spec.name]}: VM names are unique")
        names[spec.name] = spec.uuid
    _check_index(znodes, "vm-names", "uuid", names, "VM")


# --- provisioner ---------------------------------------------------------------------------

def _check_provisioner(znodes: Mapping[str, Any], nodes: Collection[str],
                       networks: Mapping[int, NetworkSpec]) -> None:
    objects: dict[tuple[str, str], Any] = {}
    for path, doc in znodes.items():
        parts = path.split("/")
        if parts[0] != "provisioner":
            continue
        kind, name = parts[1], parts[2]
        if kind not in KINDS:
            raise InvalidValue(f"{path[:80]}: '{kind[:20]}' is not a provisioner kind; the "
                               f"kinds are: {', '.join(KINDS)}")
        if not isinstance(doc, dict):
            raise InvalidValue(f"{path[:80]}: not a provisioner object document")
        record = cast(Any, RECORDS[kind]).from_doc(doc)
        if record.name != name:
            raise InvalidValue(f"{path[:80]}: the document names '{str(record.name)[:64]}'")
        objects[kind, name] = record
    storage = {name: r for (kind, name), r in objects.items() if kind == "storage"}
    pools = {d.pool for t in storage.values() for d in t.disks}  # not Ceph's: module docstring
    for (kind, name), record in sorted(objects.items()):
        with _at(f"provisioner/{kind}/{name}"):
            if kind == "system":
                check_system_template(record, nodes)
            elif kind == "network":
                check_network_template(record, networks)
            elif kind == "storage":
                check_storage_template(record, pools)
            elif kind == "userdata":
                check_object_name(record.name, "userdata")
                check_userdata(record.userdata)
            elif kind == "ova":
                check_object_name(record.name, "OVA")
            else:
                _check_profile(record, objects, storage)


def _check_profile(profile: Profile, objects: Mapping[tuple[str, str], Any],
                   storage: Mapping[str, StorageTemplate]) -> Profile:
    named = storage.get(profile.storage_template) if profile.storage_template else None
    return check_profile(profile, lambda kind, name: (kind, name) in objects, named)


def _with_folders(znodes: dict[str, Any]) -> dict[str, Any]:
    """The documents with each network's folders (made with every network) where missing."""
    whole = dict(znodes)
    for path in list(znodes):
        parts = path.split("/")
        if parts[0] == "networks" and len(parts) == 2:
            for folder in NETWORK_FOLDERS:
                whole.setdefault(f"{path}/{folder}", {})
    return dict(sorted(whole.items()))
