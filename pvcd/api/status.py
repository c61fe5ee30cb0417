"""`/status` (extensions.md §8.1): the cluster on one page, with its health and the reasons for
it, from the cache; `POST /status` (maintenance, PVC's spelling) and `GET /status/primary_node`
(no authentication: PVC's clients ask it to find the API).

Health: the cluster's is 100 minus the deltas of the unacknowledged faults
(`pvcd.domain.faults.cluster_health`); a node's is its own latest round of checks
(`nodes/<node>/health`), null while it has none or the node is not running.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pvcd
from pvcd.api.base import BaseHandler
from pvcd.api.cluster import STATE, set_maintenance
from pvcd.api.nodes import node_object
from pvcd.api.routing import route
from pvcd.api.values import accepts
from pvcd.domain.faults import cluster_health, sort_faults
from pvcd.domain.health import FAULT_NEW
from pvcd.domain.states import vm_state
from pvcd.state.health import read_faults, read_node_health
from pvcd.state.view import ClusterView

KIB = 1024


def _percent(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else 0.0


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, (int, float)) and value > 0)


def status_document(view: ClusterView, upstream_ip: str | None) -> dict[str, Any]:
    """The §8.1 document."""
    cache, paths = view.cache, view.paths
    primary = view.primary()
    faults = sort_faults([s.fault for s in read_faults(view).values()])
    nodes = [n for n in (node_object(view, name, primary) for name in view.node_names())
             if n is not None]
    vms = []
    provisioned = 0
    for uuid in view.vm_uuids():
        spec = cache.get(paths.vm(uuid))
        if isinstance(spec, dict):
            vms.append({"uuid": uuid, "name": spec.get("name"),
                        "state": vm_state(spec, cache.get(paths.vm_status(uuid)) or {})})
            provisioned += int(_number(spec.get("memory")))
    osds = []
    for name in cache.children(paths.storage_osds):
        doc = cache.get(f"{paths.storage_osds}/{name}")
        stats = doc.get("stats") if isinstance(doc, dict) else None
        if isinstance(stats, dict):
            osds.append((name, stats))
    pools = cache.children(paths.storage_pools)
    volumes = sum(len(cache.children(f"{paths.storage_volumes}/{p}"))
                  for p in cache.children(paths.storage_volumes))
    snapshots = sum(len(cache.children(f"{paths.storage_snapshots}/{p}/{v}"))
                    for p in cache.children(paths.storage_snapshots)
                    for v in cache.children(f"{paths.storage_snapshots}/{p}"))
    return {
        "cluster_health": {
            "health": cluster_health(faults),
            "messages": [{"id": f.id, "health_delta": f.health_delta, "text": f.message}
                         for f in faults if f.status == FAULT_NEW],
        },
        "node_health": {n["name"]: _node_health(view, n["name"]) for n in nodes},
        "maintenance": view.maintenance(),
        "primary_node": primary,
        "pvc_version": pvcd.__version__,
        "upstream_ip": upstream_ip,
        "nodes": _counts(f"{n['daemon_state']},{n['domain_state']}" for n in nodes),
        "vms": _counts(str(vm["state"]) for vm in vms),
        "networks": len(view.network_vnis()),
        "osds": _counts(f"{'up' if _flag(s.get('up')) else 'down'},"
                        f"{'in' if _flag(s.get('in')) else 'out'}" for _, s in osds),
        "pools": len(pools),
        "volumes": volumes,
        "snapshots": snapshots,
        "resources": _resources(nodes, provisioned, [s for _, s in osds]),
        "detail": {
            "node": [{"name": n["name"], "daemon_state": n["daemon_state"],
                      "domain_state": n["domain_state"]} for n in nodes],
            "vm": vms,
            "osd": [{"id": int(name) if name.isdigit() else name, "up": _flag(s.get("up")),
                     "in": _flag(s.get("in"))}
                    for name, s in osds],
            "faults": [f.to_api() for f in faults],
        },
    }


def _counts(keys: Any) -> dict[str, int]:
    counted = Counter(keys)
    return {"total": sum(counted.values()), **dict(sorted(counted.items()))}


def _node_health(view: ClusterView, node: str) -> dict[str, Any]:
    health = read_node_health(view, node)
    if health is None:
        return {"health": None, "messages": []}
    return {"health": health.health,
            "messages": [f"'{c.name}': {c.message}" for c in health.checks
                         if c.health_delta > 0]}


def _resources(nodes: list[dict[str, Any]], provisioned: int,
               osds: list[dict[str, Any]]) -> dict[str, Any]:
    """Memory (MiB) and CPU of the running nodes; disk (KiB) of the OSDs."""
    running = [n for n in nodes if n["daemon_state"] == "run"]
    memory = {part: int(sum(_number(n["memory"][part]) for n in running))
              for part in ("total", "used", "free", "allocated")}
    cpus = sum(_number(n["cpu_count"]) for n in running)
    load = round(sum(_number(n["load"]) for n in running), 2)
    disk_total = int(sum(_number(s.get("kb")) for s in osds))
    disk_used = int(sum(_number(s.get("used")) for s in osds) // KIB)
    disk_free = int(sum(_number(s.get("avail")) for s in osds) // KIB)
    return {
        "memory": {**memory, "provisioned": provisioned,
                   "utilization": _percent(memory["used"], memory["total"])},
        "cpu": {"total": int(cpus), "load": load,
                "allocated": int(sum(_number(n["vcpu"]["allocated"]) for n in running)),
                "utilization": _percent(load, cpus)},
        "disk": {"total": disk_total, "used": disk_used, "free": disk_free,
                 "utilization": _percent(disk_used, disk_total)},
    }


class StatusHandler(BaseHandler):
    def get(self) -> None:
        self.reply(status_document(self.ctx.view, self.ctx.upstream_ip))

    @accepts(STATE)
    async def post(self) -> None:
        await set_maintenance(self, self.values[STATE])


class PrimaryNodeHandler(BaseHandler):
    """Public, as in PVC: where the API is, for clients that look for it."""

    public = True

    def get(self) -> None:
        primary = self.ctx.view.primary()
        if primary is None:
            self.set_status(204)
            self.finish()
            return
        self.reply({"primary_node": primary})


ROUTES = [
    route("/status", StatusHandler),
    route("/status/primary_node", PrimaryNodeHandler),
]
