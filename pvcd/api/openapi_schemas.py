"""The JSON schemas of the API's answers (the objects of objects.md) and of its path values.

A declarative table for `pvcd.api.openapi`: the document refers to these objects by name
(`ref("Node")`); the request values' schemas are declared with the handlers (`pvcd.api.values`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pvcd.domain.health import FAULT_STATUSES
from pvcd.domain.states import (
    ACL_DIRECTIONS,
    COORDINATOR_STATES,
    DAEMON_STATES,
    DOMAIN_STATES,
    MIGRATION_METHODS,
    NETWORK_TYPES,
    NODE_SELECTORS,
    TASK_ERRORS,
    TASK_STATES,
    VM_STATES,
    VM_TAG_TYPES,
)
from pvcd.domain.vm_snapshots import CONSISTENCY_RECORDED


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def array_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": ref(name)}


def nullable(kind: str, **schema: Any) -> dict[str, Any]:
    return {"type": kind, "nullable": True, **schema}


STR, INT, NUM, BOOL = ({"type": t} for t in ("string", "integer", "number", "boolean"))


def obj(properties: Mapping[str, Any], required: Sequence[str] = (), description: str = ""
        ) -> dict[str, Any]:
    """An object schema; further properties are allowed (objects.md: fields may be added)."""
    schema: dict[str, Any] = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


# --- the objects of objects.md -------------------------------------------------------------

_VCPU = obj({"total": INT, "allocated": INT}, ["total", "allocated"])
_MEMORY = obj({"total": INT, "allocated": INT, "used": INT, "free": INT},
              ["total", "allocated", "used", "free"], "MiB")
_NS = nullable("string")
_VM_META = {  # extensions.md §6.1
    "node_limit": {"type": "array", "items": STR, "description": "empty: any node"},
    "node_selector": {"type": "string", "enum": list(NODE_SELECTORS)},
    "node_autostart": BOOL,
    "migration_method": {"type": "string", "enum": list(MIGRATION_METHODS)},
    "migration_max_downtime": {"type": "integer", "description": "ms"},
    "profile": _NS,
}
_COUNTS = obj({"total": INT}, ["total"], "total, and a count per state")
_HEALTH_CHECK = obj({  # extensions.md §8.3
    "name": STR, "last_run": {"type": "number", "description": "Unix time"},
    "health_delta": {"type": "integer", "minimum": 0, "maximum": 100},
    "message": STR, "data": {"type": "object"}},
    ["name", "last_run", "health_delta", "message", "data"], "One check's latest result")
_VM_TAG = obj({"name": STR, "type": {"type": "string", "enum": list(VM_TAG_TYPES)},
               "protected": BOOL}, ["name", "type", "protected"])
_VM_SNAPSHOT = obj({  # extensions.md §5.1
    "name": STR, "timestamp": {"type": "number", "description": "Unix seconds"},
    "age": {"type": "integer", "description": "seconds since it was taken"},
    "consistency": {"type": "string", "enum": list(CONSISTENCY_RECORDED)},
    "rbd_snapshots": {"type": "array", "items": STR, "description": "pool/volume@name"},
    "xml_diff_lines": {"type": "array", "items": STR,
                       "description": "unified diff from the current XML to the snapshot's"},
}, ["name", "timestamp", "age", "consistency", "rbd_snapshots", "xml_diff_lines"])

SCHEMAS: dict[str, dict[str, Any]] = {
    "Message": obj({"message": STR}, ["message"], "A human-readable message."),
    "Login": obj({"message": STR, "csrf_token": STR}, ["message"],
                 "A session opened: its CSRF token for the X-CSRF-Token header (none when "
                 "authentication is disabled)."),
    "Session": obj({"who": STR, "via": {"type": "string", "enum": ["token", "session", "none"]},
                    "csrf_token": {"type": "string", "nullable": True},
                    "auth_enabled": BOOL},
                   ["who", "via", "csrf_token", "auth_enabled"],
                   "Who a request acts as (a token's name) and how it proved it."),
    "Node": obj({
        "name": STR,
        "daemon_state": {"type": "string", "enum": list(DAEMON_STATES)},
        "coordinator_state": {"type": "string", "enum": list(COORDINATOR_STATES)},
        "domain_state": {"type": "string", "enum": list(DOMAIN_STATES)},
        "coordinator": BOOL, "cpu_count": INT, "kernel": STR, "os": STR, "arch": STR,
        "load": {"type": "number", "description": "1-minute load average"},
        "domains_count": INT,
        "running_domains": {"type": "array", "items": STR, "description": "VM UUIDs"},
        "vcpu": _VCPU, "memory": _MEMORY,
        "keepalive": nullable("number", description="Unix time of the last keepalive"),
        "pid": nullable("integer"), "fence_state": _NS, "fence_message": _NS,
        "refused": {"type": "object", "additionalProperties": STR,
                    "description": "Documents (networks, ACLs, static leases) this node "
                                   "refuses to act on, each with the reason (pvcd addition)"},
        "health": nullable("integer", description="100 minus the deltas of the node's latest "
                                                  "round of checks; null before the first "
                                                  "round and while the node is not running"),
        "health_plugins": {"type": "array", "items": STR, "description": "the checks' names"},
        "health_details": {"type": "array", "items": _HEALTH_CHECK},
    }, ["name", "daemon_state", "coordinator_state", "domain_state", "cpu_count", "kernel",
        "os", "arch", "load", "domains_count", "running_domains", "vcpu", "memory", "health",
        "health_plugins", "health_details"]),
    "NodeCoordinatorState": obj({"name": STR, "coordinator_state": {
        "type": "string", "enum": list(COORDINATOR_STATES)}}, ["name", "coordinator_state"]),
    "NodeDomainState": obj({"name": STR, "domain_state": {
        "type": "string", "enum": list(DOMAIN_STATES)}}, ["name", "domain_state"]),
    "NodeDaemonState": obj({"name": STR, "daemon_state": {
        "type": "string", "enum": list(DAEMON_STATES)}}, ["name", "daemon_state"]),
    "Vm": obj({
        "name": STR, "uuid": STR,
        "state": {"type": "string", "enum": list(VM_STATES)},
        "node": STR,
        "last_node": nullable("string", description="the node to return to on unmigrate"),
        "migrated": BOOL, "failed_reason": _NS,
        "running_on": nullable("string", description="the node running it, when it runs"),
        "description": _NS, "memory": {"type": "integer", "description": "MiB"},
        "vcpu": INT, "vcpu_topology": nullable("string", description="sockets/cores/threads"),
        "networks": {"type": "array", "items": obj(
            {"type": _NS, "mac": _NS, "source": _NS, "model": _NS})},
        "type": STR, "arch": _NS, "machine": _NS, "console": _NS, "emulator": _NS,
        "features": {"type": "array", "items": STR},
        "disks": {"type": "array", "items": obj(
            {"type": _NS, "name": _NS, "dev": _NS, "bus": _NS})},
        "controllers": {"type": "array", "items": obj({"type": _NS, "model": _NS})},
        **_VM_META, "tags": {"type": "array", "items": _VM_TAG},
        "xml": {"type": "string", "description": "the libvirt XML"},
        "snapshots": {"type": "array", "items": _VM_SNAPSHOT},
    }, ["name", "uuid", "state", "node", "last_node", "migrated", "xml"]),
    "VmSnapshot": _VM_SNAPSHOT,
    "VmBackup": obj({"datestring": nullable("string"), "type": STR,
                     "incremental_parent": nullable("string"), "result": BOOL,
                     "export_size_bytes": INT, "retained_snapshot": BOOL, "snapshot_name": STR,
                     "created": NUM},
                    ["datestring", "type", "incremental_parent", "result", "export_size_bytes",
                     "retained_snapshot"],
                    "A backup found in backup_path (its pvcbackup.json)."),
    "Autobackup": obj({"enabled": BOOL, "backup_root_path": nullable("string"),
                       "backup_root_suffix": STR, "backup_tags": {"type": "array",
                                                                  "items": STR},
                       "schedule": STR, "full_interval": INT, "full_retention": INT,
                       "last_run": nullable("object"), "next_run": nullable("number"),
                       "latest": {"type": "object"}},
                      ["enabled", "backup_root_path", "backup_root_suffix", "backup_tags",
                       "schedule", "full_interval", "full_retention", "last_run", "next_run"],
                      "The autobackup configuration (cluster/autobackup) and its runs."),
    "VmMeta": obj({"name": STR, **_VM_META}, ["name", *_VM_META]),
    "LogTail": obj({"name": STR, "data": STR, "last_line": INT, "truncated": BOOL},
                   ["name", "data", "last_line"],
                   "Lines joined by newlines; `last_line` numbers the last line given (every "
                   "line ever appended counts); `truncated` (only when true): lines after "
                   "`after` had already left the buffer."),
    "VmTags": obj({"name": STR, "tags": {"type": "array", "items": _VM_TAG}}, ["name", "tags"]),
    "VmState": obj({"name": STR, "state": {"type": "string", "enum": list(VM_STATES)}},
                   ["name", "state"]),
    "VmNode": obj({"name": STR, "node": STR, "last_node": _NS}, ["name", "node", "last_node"]),
    "Network": obj({
        "vni": INT, "description": STR,
        "type": {"type": "string", "enum": list(NETWORK_TYPES)}, "domain": _NS,
        "ip4": obj({"network": _NS, "gateway": _NS, "dhcp_flag": BOOL, "dhcp_start": _NS,
                    "dhcp_end": _NS}),
        "ip6": obj({"network": _NS, "gateway": _NS, "dhcp_flag": BOOL}),
    }, ["vni", "description", "type", "domain", "ip4", "ip6"]),
    "Lease": obj({
        "hostname": _NS, "ip4_address": STR, "mac_address": STR,
        "timestamp": {"description": "expiry as a Unix time (0: never), or \"static\"",
                      "anyOf": [NUM, {"type": "string", "enum": ["static"]}]},
    }, ["hostname", "ip4_address", "mac_address", "timestamp"]),
    "Acl": obj({"description": STR, "direction": {"type": "string", "enum": list(ACL_DIRECTIONS)},
                "order": {"type": "integer", "description": "position in its chain, from 0"},
                "rule": {"type": "string", "description": "the nftables rule text"}},
               ["description", "direction", "order", "rule"]),
    "Maintenance": obj({"maintenance": BOOL, "since": nullable("number")},
                       ["maintenance", "since"]),
    "Fault": obj({
        "id": STR, "first_reported": NUM, "last_reported": NUM,
        "acknowledged_at": nullable("number"),
        "status": {"type": "string", "enum": list(FAULT_STATUSES)},
        "health_delta": {"type": "integer", "description": "0 once acknowledged"},
        "message": STR,
        "active": {"type": "boolean", "description": "seen in the latest round of checks"},
    }, ["id", "first_reported", "last_reported", "acknowledged_at", "status", "health_delta",
        "message", "active"]),
    "Status": obj({
        "cluster_health": obj({"health": INT, "messages": {"type": "array", "items": obj(
            {"id": STR, "health_delta": INT, "text": STR}, ["id", "health_delta", "text"])}},
            ["health", "messages"]),
        "node_health": {"type": "object", "additionalProperties": obj(
            {"health": nullable("integer"), "messages": {"type": "array", "items": STR}},
            ["health", "messages"])},
        "maintenance": BOOL, "primary_node": _NS, "pvc_version": STR, "upstream_ip": _NS,
        "nodes": _COUNTS, "vms": _COUNTS, "networks": INT, "osds": _COUNTS, "pools": INT,
        "volumes": INT, "snapshots": INT,
        "resources": obj({
            "memory": obj({k: NUM for k in ("total", "used", "free", "allocated",
                                            "provisioned", "utilization")}),
            "cpu": obj({k: NUM for k in ("total", "load", "allocated", "utilization")}),
            "disk": obj({k: NUM for k in ("total", "used", "free", "utilization")})},
            ["memory", "cpu", "disk"]),
        "detail": obj({"node": {"type": "array", "items": obj(
                           {"name": STR, "daemon_state": STR, "domain_state": STR})},
                       "vm": {"type": "array", "items": obj(
                           {"uuid": STR, "name": _NS, "state": STR})},
                       "osd": {"type": "array", "items": obj({"up": BOOL, "in": BOOL})},
                       "faults": array_of("Fault")}, ["node", "vm", "osd", "faults"]),
    }, ["cluster_health", "node_health", "maintenance", "primary_node", "pvc_version",
        "upstream_ip", "nodes", "vms", "networks", "osds", "pools", "volumes", "snapshots",
        "resources", "detail"]),
    "ClusterBackup": obj({  # extensions.md §9
        "format": {"type": "string", "enum": ["pvcd-cluster-backup"]},
        "format_version": INT, "schema_version": INT, "created": NUM, "primary_node": STR,
        "znodes": {"type": "object", "description": "documents by path below the cluster "
                   "root: the desired state (docs/backups.md)"},
    }, ["format", "format_version", "schema_version", "created", "primary_node", "znodes"]),
    "CephStatus": obj({
        "type": {"type": "string", "enum": ["status", "utilization"]},
        "primary_node": STR,
        "ceph_data": {"type": "string",
                      "description": "raw output of `ceph status` or `rados df`"},
        "health": nullable("string", description="HEALTH_OK, HEALTH_WARN or HEALTH_ERR"),
        "updated": {"type": "number", "description": "Unix time of the reading"},
    }, ["type", "primary_node", "ceph_data"]),
    "Osd": obj({"id": INT, "node": _NS, "device": _NS,
                "stats": obj({}, description="uuid, up, in, primary_affinity, utilization, "
                             "var, pgs, kb, weight, reweight, node, used, avail, wr_ops, "
                             "wr_data, rd_ops, rd_data, state")},
               ["id", "stats"]),
    "OsdState": obj({"id": INT, "in": {}, "up": {}}, ["id", "in", "up"]),
    "Pool": obj({"name": STR, "pgs": nullable("integer"),
                 "stats": obj({}, description="id, size_bytes, num_objects, ... as objects.md")},
                ["name", "stats"]),
    "Volume": obj({"name": STR, "pool": STR,
                   "stats": obj({}, description="the fields of `rbd info --format json`")},
                  ["name", "pool", "stats"]),
    "Snapshot": obj({"pool": STR, "volume": STR, "snapshot": STR},
                    ["pool", "volume", "snapshot"]),
    "StorageRequest": obj({
        "id": STR, "op": STR, "args": obj({}), "target": STR,
        "state": {"type": "string", "description": "pending, running, done or failed"},
        "message": _NS, "progress": _NS, "result": {}, "executor": _NS,
        "created": NUM, "started": nullable("number"), "finished": nullable("number"),
    }, ["id", "op", "state"]),
    "Task": obj({
        "id": STR, "name": STR,
        "state": {"type": "string", "enum": list(TASK_STATES)},
        "progress": obj({"current": INT, "total": INT, "message": STR}),
        "current": INT, "total": INT, "status": STR, "message": STR,
        "error": nullable("string", enum=[*TASK_ERRORS, None]),
        "result": {"type": "object", "nullable": True}, "args": obj({}),
        "objects": {"type": "array", "items": STR},
        "artifacts": {"type": "array", "items": obj({"kind": STR, "ref": STR})},
        "run_on": STR, "follows_primary": BOOL, "executor": _NS, "cleanup": BOOL,
        "log": {"type": "array", "items": STR},
        "created": NUM, "started": nullable("number"), "updated": nullable("number"),
        "finished": nullable("number"),
    }, ["id", "name", "state", "progress", "run_on"]),
    "TaskStarted": obj({"task_id": STR, "task_name": STR, "run_on": STR, "message": STR},
                       ["task_id", "task_name", "run_on", "message"]),
    # the provisioner (extensions.md §3)
    "SystemTemplate": obj({
        "name": STR, "vcpu_count": INT, "vram_mb": INT, "serial": BOOL, "vnc": BOOL,
        "vnc_bind": STR, "node_limit": {"type": "array", "items": STR}, "node_selector": STR,
        "node_autostart": BOOL, "migration_method": STR, "migration_max_downtime": INT,
        "ova": _NS}, ["name", "vcpu_count", "vram_mb"]),
    "TemplateNetwork": obj({"vni": INT}, ["vni"]),
    "NetworkTemplate": obj({"name": STR, "mac_template": _NS,
                            "networks": array_of("TemplateNetwork")}, ["name", "networks"]),
    "TemplateDisk": obj({
        "disk_id": STR, "pool": STR, "source_volume": _NS, "disk_size_gb": nullable("integer"),
        "filesystem": _NS, "filesystem_args": {"type": "array", "items": STR},
        "mountpoint": _NS}, ["disk_id", "pool"]),
    "StorageTemplate": obj({"name": STR, "disks": array_of("TemplateDisk")},
                           ["name", "disks"]),
    "Templates": obj({"system-templates": array_of("SystemTemplate"),
                      "network-templates": array_of("NetworkTemplate"),
                      "storage-templates": array_of("StorageTemplate")},
                     ["system-templates", "network-templates", "storage-templates"]),
    "Userdata": obj({"name": STR, "userdata": STR}, ["name", "userdata"]),
    "Script": obj({"name": STR, "description": STR, "builtin": BOOL, "arguments": {
        "type": "array", "items": obj({"name": STR, "description": STR, "default": _NS})}},
        ["name", "description", "arguments", "builtin"]),
    "Profile": obj({
        "name": STR, "profile_type": STR, "system_template": STR, "network_template": _NS,
        "storage_template": _NS, "userdata": _NS, "script": STR, "ova": _NS,
        "arguments": {"type": "array", "items": STR}}, ["name", "profile_type", "script"]),
    "Ova": obj({
        "name": STR, "pool": STR,
        "volumes": {"type": "array", "items": obj({
            "disk_id": STR, "disk_size_gb": INT, "pool": STR, "volume_name": STR,
            "volume_format": STR})},
        "system_template": _NS, "profile": _NS,
    }, ["name", "pool", "volumes"]),
}

# path parameters, by the name used in the route path
PATH_VALUES: dict[str, str] = {
    "node": "A node name.",
    "vm": "A VM name or UUID.",
    "network": "A network's VNI or description.",
    "lease": "A MAC address (a static or dynamic DHCP lease).",
    "acl": "An ACL description.",
    "osd": "An OSD id (a number).",
    "pool": "An RBD pool name.",
    "volume": "An RBD volume name.",
    "snapshot": "An RBD snapshot name.",
    "request_id": "A storage request id (as named in a timeout message).",
    "task_id": "A task id (a storage request's id too).",
    "template": "A template name.",
    "vni": "The VNI of a network in the template.",
    "disk_id": "A disk of the template: sd[a-z] or vd[a-z].",
    "userdata": "A userdata name.",
    "script": "A built-in install method: clone, blank or ova.",
    "profile": "A profile name.",
    "fault_id": "A fault id, e.g. DEAD_NODE_HV1 (upper case; other characters than A-Z, 0-9 "
                "and _ are read as _).",
    "ova": "An OVA name.",
}
