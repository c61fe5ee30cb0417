"""The OpenAPI 3 document of the API, generated from the route table the server is built from.

`ENDPOINTS` holds what the route table cannot say: per route path (the manual's form, as in
`Route.path`) and per method, a summary, the values the method reads and the shape of its
answer (`SCHEMAS`, the objects of objects.md). `openapi_document(routes)` joins the two and
refuses (`MetadataError`) a route or a handler method without metadata, and metadata for a route
or method the server does not have, so the document cannot drift from the server:
`tests/unit/test_openapi.py` builds it from `pvcd.api.app.ROUTES`.

How values are described: GET and DELETE take them as query parameters; POST and PUT as a
request body, either a form (`application/x-www-form-urlencoded`) or a JSON object. Every value
may also be given in the query string on any method (the manual's rule), which OpenAPI cannot
say without listing each value twice; the descriptions say it instead.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pvcd.api.base import BaseHandler
from pvcd.api.routing import PREFIX, Route, route
from pvcd.domain.states import (
    ACL_DIRECTIONS,
    COORDINATOR_STATE_REQUESTS,
    COORDINATOR_STATES,
    DAEMON_STATES,
    DOMAIN_STATE_REQUESTS,
    DOMAIN_STATES,
    MIGRATE_ACTIONS,
    NETWORK_TYPES,
    SELECTORS,
    VM_STATE_REQUESTS,
    VM_STATES,
)

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1.0"
HTTP_METHODS = ("get", "post", "put", "delete", "patch", "head", "options")
BODY_METHODS = ("post", "put", "patch")
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


class MetadataError(Exception):
    """The route table and `ENDPOINTS` disagree."""


# --- describing values and answers ---------------------------------------------------------

@dataclass(frozen=True)
class Value:
    """One request value: its name, JSON schema, and whether the method needs it."""

    name: str
    schema: Mapping[str, Any]
    description: str
    required: bool = False


def text(name: str, description: str, required: bool = False, **schema: Any) -> Value:
    return Value(name, {"type": "string", **schema}, description, required)


def integer(name: str, description: str, required: bool = False, **schema: Any) -> Value:
    return Value(name, {"type": "integer", **schema}, description, required)


def choice(name: str, allowed: Iterable[str], description: str, required: bool = True) -> Value:
    return Value(name, {"type": "string", "enum": list(allowed)}, description, required)


def flag(name: str, description: str) -> Value:
    return Value(name, {"type": "boolean"}, description + " A flag: set by its presence (any "
                 "value, or none); an explicit false, 0, no or off unsets it.")


def limit(what: str = "names") -> Value:
    return text("limit", f"A regular expression searched anywhere in the {what} (anchor it "
                "with ^ or $); an invalid expression is a failure (510).", format="regex")


@dataclass(frozen=True)
class Operation:
    """One method of one route: what it does, what it reads, what it answers on success."""

    summary: str
    values: tuple[Value, ...] = ()
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

SCHEMAS: dict[str, dict[str, Any]] = {
    "Message": obj({"message": STR}, ["message"], "A human-readable message."),
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
    }, ["name", "daemon_state", "coordinator_state", "domain_state", "cpu_count", "kernel",
        "os", "arch", "load", "domains_count", "running_domains", "vcpu", "memory"]),
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
        "xml": {"type": "string", "description": "the libvirt XML"},
    }, ["name", "uuid", "state", "node", "last_node", "migrated", "xml"]),
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
}

_STORAGE = " Answers 510 when Ceph storage is not configured on the primary."
_WAITS = (" Waits until Ceph carried it out (drivers.ceph.request_timeout); a request still "
          "running then answers 510 naming it (see /storage/ceph/request/{request_id}).")

_SELECTOR = choice("selector", SELECTORS, "How to choose the node when `node` is not given or "
                   "not valid: mem (least allocated memory), vcpus (least allocated vCPUs), "
                   "load (least load), vms (fewest VMs).", required=False)
_NETWORK_VALUES = (
    text("domain", "DNS domain of the network's hosts."),
    text("ip4_network", "IPv4 network in CIDR form, e.g. 10.100.0.0/24."),
    text("ip4_gateway", "The primary's gateway address inside ip4_network (required with it)."),
    text("ip6_network", "IPv6 network in CIDR form, e.g. fd00:100::/64."),
    text("ip6_gateway", "The gateway inside ip6_network (default: <ip6_network>::1)."),
    flag("dhcp4", "Serve DHCPv4 (needs dhcp4_start and dhcp4_end)."),
    text("dhcp4_start", "First address of the DHCPv4 pool."),
    text("dhcp4_end", "Last address of the DHCPv4 pool."),
)
_DANGER = flag("yes_i_really_mean_it", "Confirms a dangerous removal; without it the request "
               "is refused.")

# route path → method → operation. Keep the order of the route table.
ENDPOINTS: dict[str, dict[str, Operation]] = {
    # general
    "": {"get": Operation("Describe the API (also: is it answering?)", status=209, public=True)},
    "/auth/login": {
        "get": Operation("The login form (HTML), or a message when authentication is disabled",
                         public=True, media_type="text/html",
                         answer={"type": "string"}, alternatives={JSON: ref("Message")}),
        "post": Operation("Open a session for a token (sets the signed session cookie)",
                          (text("token", "An API token.", required=True),), public=True,
                          failures={401: "The token is not valid."}),
    },
    "/auth/logout": {
        "get": Operation("Close the current session", public=True),
        "post": Operation("Close the current session", public=True),
    },
    "/openapi.json": {"get": Operation("This document", public=True, answer={"type": "object"})},
    # nodes
    "/node": {"get": Operation("List nodes", (limit("node names"),), array_of("Node"))},
    "/node/<node>": {"get": Operation("One node (a one-element list)", answer=array_of("Node"))},
    "/node/<node>/coordinator-state": {
        "get": Operation("A node's coordinator state", answer=ref("NodeCoordinatorState")),
        "post": Operation("Make a coordinator primary or secondary (an orderly handover)", (
            choice("coordinator-state", COORDINATOR_STATE_REQUESTS, "The wanted state."),)),
    },
    "/node/<node>/domain-state": {
        "get": Operation("A node's domain state", answer=ref("NodeDomainState")),
        "post": Operation("Flush a node (move its VMs away) or make it ready again", (
            choice("domain-state", DOMAIN_STATE_REQUESTS, "The wanted state."),)),
    },
    "/node/<node>/daemon-state": {
        "get": Operation("A node's daemon state (pvcd addition)", answer=ref("NodeDaemonState")),
    },
    # VMs
    "/vm": {
        "get": Operation("List VMs", (
            limit("VM names"),
            text("node", "Only VMs assigned to this node (pvcd addition)."),
            choice("state", VM_STATES, "Only VMs in this state (pvcd addition).",
                   required=False)), array_of("Vm")),
        "post": Operation("Define (and start) a VM from libvirt XML", (
            text("xml", "The libvirt domain XML.", required=True),
            text("node", "The node to run it on (default: chosen by selector)."), _SELECTOR)),
    },
    "/vm/<vm>": {
        "get": Operation("One VM (a one-element list)", answer=array_of("Vm")),
        "put": Operation("Replace a VM's libvirt XML", (
            text("xml", "The new libvirt domain XML (same UUID and name; a new name is "
                 "refused: use /vm/{vm}/rename).", required=True),
            flag("restart", "Restart the VM to apply the change."))),
        "delete": Operation("Stop and undefine a VM (its node does; the answer waits for it)", (
            flag("delete_disks", "Also remove the VM's RBD volumes, after its node has "
                 "undefined it (refused while that node is not running or fenced)."),)),
    },
    "/vm/<vm>/state": {
        "get": Operation("A VM's state", answer=ref("VmState")),
        "post": Operation("Start, shut down, stop or restart a VM", (
            choice("state", VM_STATE_REQUESTS, "The wanted state."),)),
    },
    "/vm/<vm>/node": {
        "get": Operation("A VM's node and the node it was migrated from", answer=ref("VmNode")),
        "post": Operation("Migrate, unmigrate or move a VM", (
            choice("action", MIGRATE_ACTIONS, "migrate, or unmigrate (return to last_node)."),
            text("node", "The target node (default: chosen by selector)."), _SELECTOR,
            flag("permanent", "Do not remember the node it came from (a move)."),
            flag("force", "Migrate again although the VM was migrated already."))),
    },
    "/vm/<vm>/rename": {
        "post": Operation("Rename a stopped VM and the RBD volumes named after it "
                          "(extensions.md §11.1)", (
                              text("new_name", "The new VM name: valid, unused, not reserved.",
                                   required=True),)),
    },
    "/vm/<vm>/dump": {
        "get": Operation("A VM's libvirt XML", answer={"type": "string"},
                         media_type="application/xml"),
    },
    # networks
    "/network": {
        "get": Operation("List client networks", (limit("descriptions (and VNIs)"),),
                         array_of("Network")),
        "post": Operation("Add a client network", (
            integer("vni", "VXLAN id (managed, 1-16777215) or vLAN id (bridged, 1-4094).",
                    required=True, minimum=1, maximum=2**24 - 1),
            text("description", "A whitespace-free name, not a number.", required=True),
            choice("nettype", NETWORK_TYPES, "managed (VXLAN, with gateway/DHCP) or bridged "
                   "(vLAN; every other value is ignored)."),
            *_NETWORK_VALUES)),
    },
    "/network/<network>": {
        "get": Operation("One network (a one-element list)", answer=array_of("Network")),
        "put": Operation("Change a network's addresses; only the values given change; an "
                         "empty value clears it", _NETWORK_VALUES),
        "delete": Operation("Remove a network"),
    },
    "/network/<network>/lease": {
        "get": Operation("List a network's DHCP leases", (
            limit("MAC addresses"), flag("static", "Only static leases.")), array_of("Lease")),
        "post": Operation("Add a static DHCP lease", (
            text("macaddress", "The MAC address.", required=True),
            text("ipaddress", "An address in the network's ip4_network.", required=True),
            text("hostname", "A host name for the lease."))),
    },
    "/network/<network>/lease/<lease>": {
        "get": Operation("One lease (a one-element list)", answer=array_of("Lease")),
        "delete": Operation("Remove a static lease"),
    },
    "/network/<network>/dhcp/<lease>": {
        "get": Operation("One lease (a one-element list; the manual's path)",
                         answer=array_of("Lease")),
        "delete": Operation("Remove a static lease (the manual's path)"),
    },
    "/network/<network>/acl": {
        "get": Operation("List a network's ACLs", (
            limit("ACL descriptions"),
            choice("direction", ACL_DIRECTIONS, "Only this direction.", required=False)),
            array_of("Acl")),
        "post": Operation("Add an nftables ACL", (
            text("description", "A whitespace-free name.", required=True),
            choice("direction", ACL_DIRECTIONS, "in (into the network) or out."),
            text("rule", "An nftables rule.", required=True),
            integer("order", "Position in the chain, from 0 (default: the end).", minimum=0))),
    },
    "/network/<network>/acl/<acl>": {
        "get": Operation("One ACL (a list), or {} when there is none (as the manual says)",
                         answer={"oneOf": [array_of("Acl"),
                                           {"type": "object", "maxProperties": 0}]}),
        "delete": Operation("Remove an ACL", (
            choice("direction", ACL_DIRECTIONS, "The ACL's direction."),)),
    },
    # cluster
    "/maintenance": {
        "get": Operation("Whether maintenance mode is on (pvcd addition)",
                         answer=ref("Maintenance")),
        "post": Operation("Turn maintenance mode on (fencing suspended) or off", (
            text("state", "on or off (also true/false, yes/no, 1/0).", required=True),)),
    },
    # storage
    "/storage/ceph": {"get": Operation("Ceph status (`ceph status`)" + _STORAGE,
                                       answer=ref("CephStatus"))},
    "/storage/ceph/status": {"get": Operation("Ceph status (alias of /storage/ceph)" + _STORAGE,
                                              answer=ref("CephStatus"))},
    "/storage/ceph/df": {"get": Operation("Ceph utilization (`rados df`)" + _STORAGE,
                                          answer=ref("CephStatus"))},
    "/storage/ceph/cluster-option": {
        "post": Operation("Set or unset a cluster-wide OSD flag (noout, noscrub, ...)" + _WAITS, (
            choice("action", ("set", "unset"), "set or unset."),
            text("option", "The OSD flag, e.g. noout.", required=True))),
    },
    "/storage/ceph/osd": {
        "get": Operation("List OSDs" + _STORAGE, (limit("OSD ids"),), array_of("Osd")),
        "post": Operation("Add an OSD on a node" + _WAITS, (
            text("node", "The node with the disk.", required=True),
            text("device", "A block device, e.g. /dev/sdb (memstore in a lab).",
                 required=True),
            Value("weight", {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                             "maximum": 1000}, "The CRUSH weight, e.g. 1.0.", True))),
    },
    "/storage/ceph/osd/<osd>": {
        "get": Operation("One OSD (a one-element list)" + _STORAGE, answer=array_of("Osd")),
        "delete": Operation("Drain and remove an OSD" + _WAITS, (_DANGER,)),
    },
    "/storage/ceph/osd/<osd>/state": {
        "get": Operation("Whether an OSD is in and up" + _STORAGE, answer=ref("OsdState")),
        "post": Operation("Set an OSD in or out" + _WAITS, (
            choice("state", ("in", "out"), "in or out."),)),
    },
    "/storage/ceph/pool": {
        "get": Operation("List RBD pools" + _STORAGE, (limit("pool names"),), array_of("Pool")),
        "post": Operation("Add an RBD pool" + _WAITS, (
            text("pool", "The pool name.", required=True),
            integer("pgs", "Placement groups: a power of two, 1 to 32768.", required=True,
                    minimum=1, maximum=32768))),
    },
    "/storage/ceph/pool/<pool>": {
        "get": Operation("One pool (a one-element list)" + _STORAGE, answer=array_of("Pool")),
        "delete": Operation("Remove a pool and every volume in it" + _WAITS, (_DANGER,)),
    },
    "/storage/ceph/volume": {
        "get": Operation("List RBD volumes" + _STORAGE, (
            text("pool", "Only volumes of this pool."), limit("volume names")),
            array_of("Volume")),
        "post": Operation("Add an RBD volume" + _WAITS, (
            text("volume", "The volume name.", required=True),
            text("pool", "The pool.", required=True),
            text("size", "Bytes, or with a K/M/G/T suffix (binary), e.g. 4096M or 20G.",
                 required=True))),
    },
    "/storage/ceph/volume/snapshot": {
        "get": Operation("List RBD snapshots" + _STORAGE, (
            text("pool", "Only snapshots in this pool."),
            text("volume", "Only snapshots of volumes with this name."),
            limit("snapshot names")), array_of("Snapshot")),
        "post": Operation("Take an RBD snapshot" + _WAITS, (
            text("snapshot", "The snapshot name.", required=True),
            text("volume", "The volume.", required=True),
            text("pool", "The volume's pool.", required=True))),
    },
    "/storage/ceph/volume/snapshot/<pool>/<volume>/<snapshot>": {
        "get": Operation("One snapshot (a one-element list)" + _STORAGE,
                         answer=array_of("Snapshot")),
        "delete": Operation("Remove a snapshot" + _WAITS),
    },
    "/storage/ceph/volume/<pool>/<volume>": {
        "get": Operation("One volume (a one-element list)" + _STORAGE,
                         answer=array_of("Volume")),
        "put": Operation("Rename and/or resize a volume" + _WAITS, (
            text("name", "A new name."),
            text("size", "A new size (as for POST); shrinking needs allow_shrink."),
            flag("allow_shrink", "Allow a size below the current one (destroys data)."))),
        "delete": Operation("Remove a volume (it must have no snapshots)" + _WAITS),
    },
    "/storage/ceph/request/<request_id>": {
        "get": Operation("A storage request's state (pvcd addition)" + _STORAGE,
                         answer=ref("StorageRequest")),
    },
    # monitoring
    "/metrics": {
        "get": Operation("Prometheus metrics (docs/operations.md lists them)", public=True,
                         media_type="text/plain", answer={"type": "string"}),
    },
}


# --- the generator -------------------------------------------------------------------------

def openapi_path(r: Route) -> str:
    """The route's path in OpenAPI form: /api/v1/node/{node}; routes outside the API prefix
    (/metrics) keep their own path."""
    path = re.sub(r"<([^>]+)>", r"{\1}", r.path)
    return PREFIX + path if r.pattern.startswith(PREFIX) else path


def handler_methods(handler: type[BaseHandler]) -> list[str]:
    """The HTTP methods a handler class implements, as OpenAPI names them (lower case)."""
    allowed = handler.allowed_methods()
    return [m for m in HTTP_METHODS if m.upper() in allowed]


def check_metadata(routes: Sequence[Route],
                   endpoints: Mapping[str, Mapping[str, Operation]] = ENDPOINTS) -> None:
    """MetadataError listing every route or method without metadata, and every metadata entry
    the routes do not have."""
    problems = []
    paths = {r.path for r in routes}
    for r in routes:
        described = endpoints.get(r.path)
        if described is None:
            problems.append(f"route {r.path or '/'} ({r.handler.__name__}) has no metadata")
            continue
        served = handler_methods(r.handler)
        for method in served:
            if method not in described:
                problems.append(f"{method.upper()} {r.path} has no metadata")
        for method in described:
            if method not in served:
                problems.append(f"metadata for {method.upper()} {r.path}, which "
                                f"{r.handler.__name__} does not implement")
        for name in re.findall(r"<([^>]+)>", r.path):
            if name not in PATH_VALUES:
                problems.append(f"path value <{name}> of {r.path} is not described")
    for path in endpoints:
        if path not in paths:
            problems.append(f"metadata for {path or '/'}, which is not a route")
    if problems:
        raise MetadataError("; ".join(problems))


def openapi_document(routes: Sequence[Route],
                     endpoints: Mapping[str, Mapping[str, Operation]] = ENDPOINTS
                     ) -> dict[str, Any]:
    check_metadata(routes, endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        item = paths.setdefault(openapi_path(r), {})
        names = re.findall(r"<([^>]+)>", r.path)
        if names:
            item["parameters"] = [
                {"name": name, "in": "path", "required": True, "description": PATH_VALUES[name],
                 "schema": {"type": "string", "minLength": 1}} for name in names]
        for method in handler_methods(r.handler):
            item[method] = _operation(r, method, endpoints[r.path][method])
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "PVC API (pvcd)",
            "version": API_VERSION,
            "description": (
                "The HTTP API of the pvcd cluster manager, served by the primary node. "
                "Values come from the query string, a form body or a JSON object body, on any "
                "method. Success is 200; a failure (bad value, unknown object, wrong state, "
                "backend error) is 510 with a message; without valid authentication, 401."),
        },
        "tags": [{"name": t} for t in ("general", "node", "vm", "network", "cluster",
                                       "storage", "monitoring")],
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "apiKeyValue": {"type": "apiKey", "in": "query", "name": "token",
                                "description": "The token as a value (query, form or JSON)."},
                "session": {"type": "apiKey", "in": "cookie", "name": "pvc_session",
                            "description": "The signed cookie set by POST /api/v1/auth/login."},
            },
        },
        "security": [{"apiKeyHeader": []}, {"apiKeyValue": []}, {"session": []}],
    }


def _operation(r: Route, method: str, op: Operation) -> dict[str, Any]:
    failure = {"description": "Failure: a bad or missing value, an unknown object, a wrong "
               "state, or a backend error; `message` says what and what is allowed.",
               "content": {JSON: {"schema": ref("Message")}}}
    content = {op.media_type: {"schema": dict(op.answer)}}
    for media_type, alternative in op.alternatives.items():
        content[media_type] = {"schema": dict(alternative)}
    responses: dict[str, Any] = {
        str(op.status): {"description": "Success.", "content": content},
        "510": failure,
    }
    failures = dict(op.failures)
    if not op.public:
        failures[401] = "Authentication required: no valid session, token value or X-Api-Key."
    for status, description in sorted(failures.items()):
        responses[str(status)] = {"description": description,
                                  "content": {JSON: {"schema": ref("Message")}}}
    result: dict[str, Any] = {
        "operationId": method + re.sub(r"[^A-Za-z0-9]+", "_", openapi_path(r)).rstrip("_"),
        "summary": op.summary,
        "tags": [_tag(r)],
        "responses": responses,
    }
    if op.description:
        result["description"] = op.description
    if op.public:
        result["security"] = []
    if op.values and method in BODY_METHODS:
        properties = {v.name: {**v.schema, "description": v.description} for v in op.values}
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        required = [v.name for v in op.values if v.required]
        if required:
            schema["required"] = required
        result["requestBody"] = {
            "required": bool(required),
            "description": "The values, as a form or a JSON object; each may also be given in "
                           "the query string.",
            "content": {FORM: {"schema": schema}, JSON: {"schema": copy.deepcopy(schema)}},
        }
    elif op.values:
        result["parameters"] = [
            {"name": v.name, "in": "query", "required": v.required,
             "description": v.description, "schema": dict(v.schema)} for v in op.values]
    return result


def _tag(r: Route) -> str:
    first = r.path.split("/")[1] if r.path.count("/") else ""
    return {"": "general", "auth": "general", "openapi.json": "general", "node": "node",
            "vm": "vm", "network": "network", "maintenance": "cluster", "storage": "storage",
            "metrics": "monitoring"}[first]


class OpenApiHandler(BaseHandler):
    """GET /api/v1/openapi.json: generated once per application from its own route table."""

    public = True

    def get(self) -> None:
        settings = self.application.settings
        document = settings.get("pvc_openapi")
        if document is None:
            document = settings["pvc_openapi"] = openapi_document(settings["pvc_routes"])
        self.reply(document)


ROUTES = [route("/openapi.json", OpenApiHandler)]
