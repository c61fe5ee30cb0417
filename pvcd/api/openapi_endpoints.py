"""What the route table and the declared values cannot say about each endpoint (`ENDPOINTS`):
per route path (the manual's form, as in `Route.path`) and method, a summary, the shape of its
answer (`pvcd.api.openapi_schemas`, the objects of objects.md) and its documented failures.
`pvcd.api.openapi` builds the document from this table, the route table and the values each
handler declares, and refuses a route or method missing here (or listed here and not served).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pvcd.api.openapi_schemas import STR, array_of, obj, ref

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1.0"
HTTP_METHODS = ("get", "post", "put", "delete", "patch", "head", "options")
BODY_METHODS = ("post", "put", "patch")
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


class MetadataError(Exception):
    """The route table and `ENDPOINTS` disagree."""


@dataclass(frozen=True)
class Operation:
    """One method of one route: what it does and what it answers on success (its values are
    declared with the handler method)."""

    summary: str
    # the success body: a schema, and its media type
    answer: Mapping[str, Any] = field(default_factory=lambda: ref("Message"))
    media_type: str = JSON
    status: int = 200
    public: bool = False  # no authentication needed
    description: str = ""
    # more successful answers (media type → schema), e.g. the login form
    alternatives: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # more failure answers (status → description), each a Message
    failures: Mapping[int, str] = field(default_factory=dict)
    # an upload: the body is the file (octet-stream), the values are in the query string only
    upload: bool = False
    # a successful answer without a body (204), and when it comes
    no_content: str = ""


_STORAGE = " Answers 510 when Ceph storage is not configured on the primary."
_WAITS = (" Waits until Ceph carried it out (drivers.ceph.request_timeout); a request still "
          "running then answers 510 naming it (see /tasks/{task_id}).")

_WAIT_FAILURES = {503: "With `wait`: the API is moving to another node (a primary handover); "
                      "the request was accepted."}
_WAIT_GET = " With `wait`: answers once it has settled (as the write's `wait` does)."

_LONG = (" Answers 200 once Ceph has done it within drivers.ceph.request_timeout (api.task_wait "
         "with `wait`), else 202 naming the storage request, which /tasks/{task_id} shows as "
         "the task storage.<op>.")
_STILL_RUNNING = {202: "Still running after the timeout: {task_id, task_name, run_on, message} "
                      "and a Location header; follow it at /tasks/{task_id}."}
_TASK_STARTED = {202: "The task was started: {task_id, task_name, run_on, message} and a "
                      "Location header; follow it at /tasks/{task_id}."}
_SNAPSHOT = {
    "get": Operation("One snapshot (a one-element list)" + _STORAGE, array_of("Snapshot")),
    "post": Operation("Take this snapshot (PVC 1.0's element form)" + _WAITS),
    "put": Operation("Rename a snapshot (rbd snap rename)" + _WAITS),
    "delete": Operation("Remove a snapshot" + _WAITS),
}
_ROLLBACK = {
    "post": Operation("Roll a volume back to this snapshot (rbd snap rollback). Refused while "
                      "a VM whose XML names the volume is not stopped or still runs, while "
                      "anyone has it open (they are listed), or while it is busy." + _LONG,
                      failures=_STILL_RUNNING),
}

_IN_USE = (" Refused (510) while a profile names it.")


def _list_and_add(what: str, schema: str) -> dict[str, Operation]:
    return {"get": Operation(f"List {what}s", array_of(schema)),
            "post": Operation(f"Add a {what}")}


def _element(what: str, schema: str, put: bool = False) -> dict[str, Operation]:
    ops = {"get": Operation(f"One {what} (a one-element list)", array_of(schema)),
           "post": Operation(f"Add a {what} of this name"),
           "delete": Operation(f"Remove a {what}." + ("" if what == "profile" else _IN_USE))}
    if put:
        ops["put"] = Operation(f"Change the values given of a {what}")
    return ops


_OVA_UPLOAD = ("Upload an .ova (task ova.upload): the body is the file, read as a stream into "
               "volumes ova_<name>_sd<x>; on success the OVA, system template <name> and "
               "profile <name> are recorded. Refused before the body: an invalid or taken "
               "name, an unknown pool, ova_size not a positive integer or above the pool's "
               "free space." + _STORAGE)
_OVA_UPLOAD_FAILURES = {200: "The task had ended when the body was in (or with `wait`): "
                             "{message, task_id, result}."}

# route path → method → operation. Keep the order of the route table.
ENDPOINTS: dict[str, dict[str, Operation]] = {
    # general
    "": {"get": Operation("Describe the API (also: is it answering?)", status=209, public=True)},
    "/auth/login": {
        "get": Operation("The login form (HTML), or a message when authentication is disabled",
                         public=True, media_type="text/html",
                         answer={"type": "string"}, alternatives={JSON: ref("Message")}),
        "post": Operation("Open a session for a token (sets the signed session cookie); the "
                          "answer's `csrf_token` goes in the X-CSRF-Token header of every "
                          "write made with the session", answer=ref("Login"),
                          public=True, failures={
                              401: "The token is not valid.",
                              429: "Too many failed attempts from this address: wait "
                                   "Retry-After seconds."}),
    },
    "/auth/logout": {
        "get": Operation("Close the current session", public=True),
        "post": Operation("Close the current session", public=True),
    },
    "/auth/session": {
        "get": Operation("Who the request acts as; with a session cookie, the session's CSRF "
                         "token (the X-CSRF-Token header of its writes)", ref("Session")),
    },
    "/openapi.json": {"get": Operation("This document", public=True, answer={"type": "object"})},
    # nodes
    "/node": {"get": Operation("List nodes", array_of("Node"))},
    "/node/<node>": {"get": Operation("One node (a one-element list)", array_of("Node"))},
    "/node/<node>/log": {
        "get": Operation("The tail of a node daemon's log (INFO and above, extensions.md §7); "
                         "readable after the node stopped", ref("LogTail")),
    },
    "/node/<node>/coordinator-state": {
        "get": Operation("A node's coordinator state." + _WAIT_GET, ref("NodeCoordinatorState"),
                         failures=_WAIT_FAILURES),
        "post": Operation("Make a coordinator primary or secondary (an orderly handover)",
                          failures=_WAIT_FAILURES),
    },
    "/node/<node>/domain-state": {
        "get": Operation("A node's domain state." + _WAIT_GET, ref("NodeDomainState"),
                         failures=_WAIT_FAILURES),
        "post": Operation("Flush a node (move its VMs away) or make it ready again; with "
                          "`wait`, answers once the node reports flushed (ready)",
                          failures=_WAIT_FAILURES),
    },
    "/node/<node>/daemon-state": {
        "get": Operation("A node's daemon state (pvcd addition)", ref("NodeDaemonState")),
    },
    # VMs
    "/vm": {
        "get": Operation("List VMs", array_of("Vm")),
        "post": Operation("Define (and start) a VM from libvirt XML; with `wait`, answers once "
                          "it runs on its node", failures=_WAIT_FAILURES),
    },
    "/vm/autobackup": {
        "get": Operation("The autobackup configuration, its last and next run and each VM's "
                         "latest result (extensions.md §5.5)", ref("Autobackup")),
        "put": Operation("Change the values given of the autobackup configuration. Refused: "
                         "backup_root_path outside backup.allowed_paths (symlinks resolved), "
                         "an invalid schedule, suffix or tag, enabled without a path and "
                         "tags"),
        "post": Operation("Run autobackup now (task cluster.autobackup): every VM with one of "
                          "backup_tags, one after another; a failed VM raises "
                          "AUTOBACKUP_FAILED_<VM> and the run goes on. Refused: not enabled, "
                          "a run in progress (named), email_recipients",
                          failures=_TASK_STARTED),
    },
    "/vm/<vm>": {
        "get": Operation("One VM (a one-element list)", array_of("Vm")),
        "put": Operation("Replace a VM's libvirt XML (same UUID and name; a new name is refused: "
                         "use /vm/{vm}/rename)"),
        "delete": Operation("Stop and undefine a VM (its node does; the answer waits for it)"),
        "post": Operation("Create the VM: from a provisioner profile (vm_template: as "
                          "/provisioner/create with name=<vm>; a task, 202), or from libvirt "
                          "XML naming <vm> (xml: as POST /vm). Exactly one of the two",
                          failures=_TASK_STARTED),
    },
    "/vm/<vm>/state": {
        "get": Operation("A VM's state." + _WAIT_GET, ref("VmState"), failures=_WAIT_FAILURES),
        "post": Operation("Start, shut down, stop or restart a VM; with `wait`, answers once it "
                          "runs on its node (start, restart) or is stopped (stop, shutdown)",
                          failures=_WAIT_FAILURES),
    },
    "/vm/<vm>/node": {
        "get": Operation("A VM's node and the node it was migrated from", ref("VmNode")),
        "post": Operation("Migrate, unmigrate or move a VM; with `wait`, answers once the "
                          "migration is done and the VM is seen on its new node",
                          failures=_WAIT_FAILURES),
    },
    "/vm/<vm>/rename": {
        "post": Operation("Rename a stopped VM and the RBD volumes named after it "
                          "(extensions.md §11.1)"),
    },
    "/vm/<vm>/meta": {
        "get": Operation("A VM's metadata (extensions.md §6.1)", ref("VmMeta")),
        "post": Operation("Change the metadata values given (none given: 510); a new node "
                          "limit applies at the VM's next placement"),
    },
    "/vm/<vm>/tags": {
        "get": Operation("A VM's tags (extensions.md §6.3)", ref("VmTags")),
        "post": Operation("Add or remove a user tag; a protected tag cannot be removed"),
    },
    "/vm/<vm>/console": {
        "get": Operation("The tail of a VM's serial console log, kept by its node (extensions.md "
                         "§7); data \"\" when it has none", ref("LogTail")),
    },
    "/vm/<vm>/snapshot": {
        "get": Operation("A VM's snapshots, oldest first (extensions.md §5.1)",
                         array_of("VmSnapshot")),
        "post": Operation("Take a VM snapshot of every writable RBD disk at one instant, with "
                          "its XML, metadata and tags (task vm.create_snapshot). 202 with the "
                          "task; with `wait`, 200 with the result {name, consistency, "
                          "rbd_snapshots}. Refused: an invalid or taken name (on the VM or "
                          "one of its volumes), the VM provisioning or migrating, no RBD disk, "
                          "a writable disk that is not RBD, a busy VM or volume." + _STORAGE,
                          failures=_TASK_STARTED),
        "delete": Operation("Remove a VM snapshot: its RBD snapshots, then its record (task "
                            "vm.remove_snapshot); one that cannot go fails the task and the "
                            "record keeps what remains" + _STORAGE, failures=_TASK_STARTED),
    },
    "/vm/<vm>/snapshot/rollback": {
        "post": Operation("Roll a stopped VM's disks back to a VM snapshot, then write its XML "
                          "(keeping the VM's name; metadata and tags stay) (task "
                          "vm.rollback_snapshot). Refused unless the VM is stop or disable and "
                          "running nowhere, and every volume and RBD snapshot still exists"
                          + _STORAGE, failures=_TASK_STARTED),
    },
    "/vm/<vm>/snapshot/export": {
        "post": Operation("Export a VM snapshot into <export_path>/<vm>/<snapshot_name>/ (task "
                          "vm.export_snapshot; extensions.md §5.2, §5.3): full (rbd export "
                          "--export-format 2) or, with incremental_parent, the diff from an "
                          "older snapshot whose export is in the same path; a manifest with a "
                          "SHA-256 per file, written last. Refused: a path outside "
                          "backup.allowed_paths (symlinks resolved), an unknown snapshot or "
                          "parent, an existing target directory, a missing parent export"
                          + _STORAGE, failures=_TASK_STARTED),
    },
    "/vm/<vm>/snapshot/import": {
        "post": Operation("Import the export <import_path>/<vm>/<snapshot_name>/ (and the chain "
                          "of exports it is incremental from) as a VM (task "
                          "vm.import_snapshot): every file's SHA-256 is checked before "
                          "anything is created. Refused: a path outside backup.allowed_paths, "
                          "no manifest, a broken chain, a VM of that name or UUID or a target "
                          "volume exists (give new_name)" + _STORAGE, failures=_TASK_STARTED),
    },
    "/vm/<vm>/backup": {
        "get": Operation("The backups of a VM (or of a former VM of that name) in backup_path, "
                         "oldest first (extensions.md §5.4)", array_of("VmBackup")),
        "post": Operation("Back a VM up into <backup_path>/<vm>/<datestring>/ (task vm.backup): "
                          "snapshot backup_<datestring>, exported full or incremental from a "
                          "retained earlier backup; the snapshot is removed unless "
                          "retain_snapshot. Refused: a path outside backup.allowed_paths, an "
                          "unknown parent or its snapshot gone, retain_snapshot with "
                          "incremental_parent" + _STORAGE, failures=_TASK_STARTED),
        "delete": Operation("Remove a backup's directory and its retained snapshot. Refused: "
                            "unknown, or another backup is incremental from it"),
    },
    "/vm/<vm>/restore": {
        "post": Operation("Restore a backup <backup_path>/<vm>/<backup_datestring>/ as a VM "
                          "(task vm.restore), as the snapshot import does (checksums first)"
                          + _STORAGE, failures=_TASK_STARTED),
    },
    "/vm/<vm>/device": {
        "post": Operation("Attach one libvirt device element (extensions.md §11.2), kept in the "
                          "VM's stored XML. A running VM: its node hot-plugs it as the task "
                          "vm.device_attach (202; with `wait`, 200 with the result {vm, uuid, "
                          "node, device, xml}); if libvirt refuses, the XML is restored and "
                          "the task fails. A VM that is not running: only its XML changes "
                          "(200)", failures=_TASK_STARTED),
        "delete": Operation("Detach the matching device (a disk by target dev, an interface by "
                            "MAC, anything else by equal XML) from the stored XML, and from the "
                            "running guest as the task vm.device_detach (202), as POST does",
                            failures=_TASK_STARTED),
    },
    "/vm/<vm>/dump": {
        "get": Operation("A VM's libvirt XML", {"type": "string"}, media_type="application/xml"),
    },
    # networks
    "/network": {
        "get": Operation("List client networks", array_of("Network")),
        "post": Operation("Add a client network"),
    },
    "/network/<network>": {
        "get": Operation("One network (a one-element list)", array_of("Network")),
        "put": Operation("Change a network's addresses; only the values given change; an "
                         "empty value clears it"),
        "delete": Operation("Remove a network"),
    },
    "/network/<network>/lease": {
        "get": Operation("List a network's DHCP leases", array_of("Lease")),
        "post": Operation("Add a static DHCP lease"),
    },
    "/network/<network>/lease/<lease>": {
        "get": Operation("One lease (a one-element list)", array_of("Lease")),
        "delete": Operation("Remove a static lease"),
    },
    "/network/<network>/dhcp": {
        "get": Operation("List a network's DHCP leases (extensions.md §10.1: the manual's "
                         "path, an alias of /lease)", array_of("Lease")),
        "post": Operation("Add a static DHCP lease (an alias of /lease)"),
    },
    "/network/<network>/dhcp/<lease>": {
        "get": Operation("One lease (a one-element list; the manual's path)", array_of("Lease")),
        "delete": Operation("Remove a static lease (the manual's path)"),
    },
    "/network/<network>/acl": {
        "get": Operation("List a network's ACLs", array_of("Acl")),
        "post": Operation("Add an nftables ACL"),
    },
    "/network/<network>/acl/<acl>": {
        "get": Operation("One ACL (a list), or {} when there is none (as the manual says)",
                         {"oneOf": [array_of("Acl"), {"type": "object", "maxProperties": 0}]}),
        "delete": Operation("Remove an ACL"),
    },
    # cluster
    "/maintenance": {
        "get": Operation("Whether maintenance mode is on (pvcd addition)", ref("Maintenance")),
        "post": Operation("Turn maintenance mode on (fencing suspended) or off"),
    },
    # health and faults (extensions.md §8)
    "/status": {
        "get": Operation("The cluster on one page: its health and the reasons for it (the "
                         "unacknowledged faults), each node's health, maintenance, the primary, "
                         "counts, resources (memory MiB, disk KiB) and details", ref("Status")),
        "post": Operation("Turn maintenance mode on or off (PVC's alias of POST /maintenance)"),
    },
    "/status/primary_node": {
        "get": Operation("The primary node's name (no authentication, as in PVC)",
                         obj({"primary_node": STR}, ["primary_node"]), public=True,
                         no_content="No node holds the primary role right now."),
    },
    "/faults": {
        "get": Operation("List the faults, sorted by sort_key (times newest first)",
                         array_of("Fault")),
        "put": Operation("Acknowledge every fault (its health_delta reads 0 from then on)"),
        "delete": Operation("Delete every fault"),
    },
    "/faults/<fault_id>": {
        "get": Operation("One fault (a one-element list)", array_of("Fault")),
        "put": Operation("Acknowledge a fault"),
        "delete": Operation("Delete a fault (raised again, as new, if its condition persists)"),
    },
    "/backup": {
        "get": Operation("The cluster's desired state as a backup document: networks with "
                         "leases and ACLs, VMs, provisioner objects (no node records, "
                         "sessions, tasks or Ceph mirror). Sensitive: it holds user-data and "
                         "addresses", ref("ClusterBackup")),
    },
    "/restore": {
        "post": Operation("Replace the cluster's desired state with a backup document, as "
                          "the task cluster.restore (202; with `wait` 200 and its result "
                          "{pre_restore, removed, created, kept}). Refused (510, nothing "
                          "changed) without yes_i_really_mean_it, outside maintenance mode "
                          "(unless the cluster is empty), for a document that is not a whole "
                          "pvcd backup of this schema version or breaks a rule of the API, "
                          "while a VM runs or a task is unfinished, and without "
                          "backup.allowed_paths (the state it replaces is saved there first)",
                          failures=_TASK_STARTED,
                          description="The document is the value cluster_data (a form, or a "
                          "JSON object of values), or (pvcd addition) the whole JSON body "
                          "itself, GET /backup's answer as it is; then the other values go "
                          "in the query string. A JSON body is an object of values only when "
                          "it has cluster_data."),
        "delete": Operation("Remove the marker an interrupted restore left (pvcd addition); "
                            "510 when there is none"),
    },
    # storage
    "/storage/ceph": {"get": Operation("Ceph status (`ceph status`)" + _STORAGE,
                                       ref("CephStatus"))},
    "/storage/ceph/status": {"get": Operation("Ceph status (alias of /storage/ceph)" + _STORAGE,
                                              ref("CephStatus"))},
    "/storage/ceph/df": {"get": Operation("Ceph utilization (`rados df`)" + _STORAGE,
                                          ref("CephStatus"))},
    "/storage/ceph/cluster-option": {
        "post": Operation("Set or unset a cluster-wide OSD flag (noout, noscrub, ...)" + _WAITS),
    },
    "/storage/ceph/osd": {
        "get": Operation("List OSDs" + _STORAGE, array_of("Osd")),
        "post": Operation("Add an OSD on a node" + _WAITS),
    },
    "/storage/ceph/osd/<osd>": {
        "get": Operation("One OSD (a one-element list)" + _STORAGE, array_of("Osd")),
        "delete": Operation("Drain and remove an OSD" + _WAITS),
    },
    "/storage/ceph/osd/<osd>/state": {
        "get": Operation("Whether an OSD is in and up" + _STORAGE, ref("OsdState")),
        "post": Operation("Set an OSD in or out" + _WAITS),
    },
    "/storage/ceph/pool": {
        "get": Operation("List RBD pools" + _STORAGE, array_of("Pool")),
        "post": Operation("Add an RBD pool" + _WAITS),
    },
    "/storage/ceph/pool/<pool>": {
        "get": Operation("One pool (a one-element list)" + _STORAGE, array_of("Pool")),
        "delete": Operation("Remove a pool and every volume in it" + _WAITS),
    },
    "/storage/ceph/volume": {
        "get": Operation("List RBD volumes" + _STORAGE, array_of("Volume")),
        "post": Operation("Add an RBD volume" + _WAITS),
    },
    "/storage/ceph/volume/snapshot": {
        "get": Operation("List RBD snapshots" + _STORAGE, array_of("Snapshot")),
        "post": Operation("Take an RBD snapshot" + _WAITS),
    },
    "/storage/ceph/request/<request_id>": {
        "get": Operation("A storage request's state (pvcd addition)" + _STORAGE,
                         ref("StorageRequest")),
    },
    # volume clone, resize, rename; snapshot rename, rollback (pvcd.api.volumes)
    "/storage/ceph/volume/snapshot/<pool>/<volume>/<snapshot>": _SNAPSHOT,
    "/storage/ceph/volume/snapshot/<pool>/<volume>/<snapshot>/rollback": _ROLLBACK,
    "/storage/ceph/volume/<pool>/<volume>": {
        "get": Operation("One volume (a one-element list)" + _STORAGE, array_of("Volume")),
        "put": Operation("Resize and/or rename a volume (resize first); PVC 1.0's new_size and "
                         "new_name are accepted too. Refused: a rename while a VM's XML names "
                         "it, a shrink while a running VM uses it, a volume busy with a task, "
                         "no room in the pool (past 80 % of it without force)." + _WAITS),
        "delete": Operation("Remove a volume (it must have no snapshots)" + _WAITS),
    },
    "/storage/ceph/volume/<pool>/<volume>/clone": {
        "post": Operation("Copy a volume (or one of its snapshots) into a new, independent "
                          "volume of the same pool (rbd copy)." + _LONG, failures=_STILL_RUNNING),
    },
    "/storage/ceph/snapshot": {
        "get": Operation("List RBD snapshots (PVC 1.0's path)" + _STORAGE,
                         array_of("Snapshot")),
        "post": Operation("Take an RBD snapshot (PVC 1.0's path)" + _WAITS),
    },
    "/storage/ceph/snapshot/<pool>/<volume>/<snapshot>": _SNAPSHOT,
    "/storage/ceph/snapshot/<pool>/<volume>/<snapshot>/rollback": _ROLLBACK,
    # provisioner objects (extensions.md §3.1-§3.6, §3.8; pvcd.api.provisioner_templates,
    # pvcd.api.provisioner_profiles)
    "/provisioner/template": {"get": Operation("All templates by kind", ref("Templates"))},
    "/provisioner/template/system": _list_and_add("system template", "SystemTemplate"),
    "/provisioner/template/system/<template>": _element("system template", "SystemTemplate",
                                                        put=True),
    "/provisioner/template/network": _list_and_add("network template", "NetworkTemplate"),
    "/provisioner/template/network/<template>": _element("network template",
                                                         "NetworkTemplate", put=True),
    "/provisioner/template/network/<template>/net": {
        "get": Operation("The template's networks, in NIC order", array_of("TemplateNetwork")),
        "post": Operation("Add a network (the next NIC)"),
    },
    "/provisioner/template/network/<template>/net/<vni>": {
        "get": Operation("A network of the template", array_of("TemplateNetwork")),
        "post": Operation("Add this network (the next NIC)"),
        "delete": Operation("Remove this network (every NIC on it)"),
    },
    "/provisioner/template/storage": _list_and_add("storage template", "StorageTemplate"),
    "/provisioner/template/storage/<template>": _element("storage template",
                                                         "StorageTemplate"),
    "/provisioner/template/storage/<template>/disk": {
        "get": Operation("The template's disks", array_of("TemplateDisk")),
        "post": Operation("Add a disk"),
    },
    "/provisioner/template/storage/<template>/disk/<disk_id>": {
        "get": Operation("A disk of the template (a one-element list)", array_of("TemplateDisk")),
        "post": Operation("Add this disk"),
        "delete": Operation("Remove this disk"),
    },
    "/provisioner/userdata": _list_and_add("userdata", "Userdata"),
    "/provisioner/userdata/<userdata>": _element("userdata", "Userdata", put=True),
    "/provisioner/script": {
        "get": Operation("The built-in install methods", array_of("Script")),
        "post": Operation("Refused (510): pvcd runs no uploaded provisioning scripts"),
    },
    "/provisioner/script/<script>": {
        "get": Operation("One built-in install method (a one-element list)",
                         array_of("Script")),
        **{m: Operation("Refused (510): pvcd runs no uploaded provisioning scripts")
           for m in ("post", "put", "delete")},
    },
    "/provisioner/profile": _list_and_add("profile", "Profile"),
    "/provisioner/profile/<profile>": _element("profile", "Profile", put=True),
    # image upload (pvcd.api.uploads)
    "/storage/ceph/volume/<pool>/<volume>/upload": {
        "post": Operation(
            "Write a disk image into an existing volume (the task volume.upload)." + _STORAGE,
            description="The body is the image file itself (application/octet-stream, "
                        "streamed); the values come from the query string only, and the token "
                        "from a header. Refusals (510) come before the body is read "
                        "(Expect: 100-continue is honoured). Answers once the body is in: 200 "
                        "{message, task_id, result} when done (raw), 510 {message, task_id} "
                        "when the task failed, else 202 while the image is converted.",
            failures=_STILL_RUNNING),
    },
    # tasks (docs/tasks.md)
    "/tasks": {
        "get": Operation("List tasks and storage requests, newest first (a storage request "
                         "is the task storage.<op>)", array_of("Task")),
    },
    "/tasks/<task_id>": {
        "get": Operation("One task (the object itself, not a list)", ref("Task")),
        "delete": Operation("Cancel a pending task, or remove a finished one's record; a "
                            "running task cannot be cancelled (510)"),
    },
    # provisioner (extensions.md §3)
    "/provisioner/ova": {
        "get": Operation("List imported OVAs", array_of("Ova")),
        "post": Operation(_OVA_UPLOAD, ref("TaskStarted"), status=202, upload=True,
                          failures=_OVA_UPLOAD_FAILURES),
    },
    "/provisioner/ova/<ova>": {
        "get": Operation("One OVA (a one-element list)", array_of("Ova")),
        "post": Operation(_OVA_UPLOAD + " The name comes from the path.", ref("TaskStarted"),
                          status=202, upload=True, failures=_OVA_UPLOAD_FAILURES),
        "delete": Operation("Remove an OVA: its record, its own system template and profile, "
                            "then its volumes. Refused while another profile names the OVA or "
                            "its system template, or a task uses it." + _STORAGE),
    },
    "/provisioner/create": {
        "post": Operation("Create a VM from a profile as the task provisioner.create: its "
                          "disks, its definition (state provision until they are made), its "
                          "start. 202 with the task; with `wait`, 200 with the result "
                          "{name, uuid, node, volumes, macs, defined, started, xml}",
                          failures=_TASK_STARTED),
    },
    # monitoring
    "/metrics": {
        "get": Operation("Prometheus metrics (docs/operations.md lists them)",
                         {"type": "string"}, media_type="text/plain", public=True),
    },
}
