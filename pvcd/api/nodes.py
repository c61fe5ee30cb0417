"""Node endpoints: list, element, coordinator-state, domain-state, daemon-state.

Reads come from the cache. Writes record desired state in one compare-and-set transaction; the
named node (or, for the coordinator role, the coordinators) carry it out.
"""

from __future__ import annotations

from typing import Any

from pvcd.api.base import BaseHandler
from pvcd.api.render import FragmentRenderer
from pvcd.api.routing import route
from pvcd.api.values import accepts, choice, limit
from pvcd.api.waiting import (
    WAIT_VALUES,
    coordinator_settles,
    node_domain_settles,
    reply_when_settled,
    requested_wait,
)
from pvcd.domain.errors import InvalidValue, NotFound
from pvcd.domain.health import NodeHealth
from pvcd.domain.records import Handover
from pvcd.domain.states import COORDINATOR_STATE_REQUESTS, DOMAIN_STATE_REQUESTS
from pvcd.state.store import Op
from pvcd.state.view import ClusterView


def node_object(view: ClusterView, name: str, primary: str | None = None) -> dict[str, Any] | None:
    """A node as objects.md describes it."""
    spec = view.cache.get(view.paths.node(name))
    if spec is None:
        return None
    if primary is None:
        primary = view.primary()
    status = view.cache.get(view.paths.node_status(name)) or {}
    stats = status.get("stats") or {}
    fence = view.cache.get(view.paths.fence_record(name)) or {}
    role = "secondary" if spec.get("coordinator") else "client"
    coordinator_state = status.get("coordinator_state", role)
    if coordinator_state in ("primary", "takeover") and primary != name:
        coordinator_state = role  # a dead or stopped node's last report; it holds no lock
    daemon_state = view.node_daemon_state(name, str(status.get("daemon_state", "init")))
    return {
        "name": name,
        "daemon_state": daemon_state,
        "coordinator_state": coordinator_state,
        "domain_state": status.get("domain_state", "ready"),
        "coordinator": bool(spec.get("coordinator", False)),
        "cpu_count": stats.get("cpu_count", 0),
        "kernel": stats.get("kernel", ""),
        "os": stats.get("os", ""),
        "arch": stats.get("arch", ""),
        "load": stats.get("load", 0.0),
        "domains_count": stats.get("domains_count", 0),
        "running_domains": stats.get("running_domains", []),
        "vcpu": {"total": stats.get("vcpu_total", 0),
                 "allocated": stats.get("vcpu_allocated", 0)},
        "memory": {"total": stats.get("memory_total", 0),
                   "allocated": stats.get("memory_allocated", 0),
                   "used": stats.get("memory_used", 0),
                   "free": stats.get("memory_free", 0)},
        "keepalive": status.get("keepalive"),
        "pid": status.get("pid"),
        "fence_state": fence.get("state"),
        "fence_message": fence.get("message"),
        # documents this node refuses to act on, and why (docs/security.md)
        "refused": status.get("refused") or {},
        **health_fields(view.cache.get(view.paths.node_health(name)), daemon_state),
    }


def health_fields(doc: Any, daemon_state: str) -> dict[str, Any]:
    """`health`, `health_plugins`, `health_details` (extensions.md §8.3) from the node's
    latest round: null and empty before the first round, while the node does not run, and
    when the document is not a valid one (anything that reaches ZooKeeper may have written
    it)."""
    empty: dict[str, Any] = {"health": None, "health_plugins": [], "health_details": []}
    if doc is None or daemon_state != "run":
        return empty
    try:
        health = NodeHealth.from_doc(doc)
    except InvalidValue:
        return empty
    return {"health": health.health,
            "health_plugins": [check.name for check in health.checks],
            "health_details": [check.to_doc() for check in health.checks]}


def node_renderer(view: ClusterView) -> FragmentRenderer:
    """Node list rendering: a node's fragment changes with its spec, status, liveness and
    whether it holds the primary lock."""
    entry, paths = view.cache.entry, view.paths

    def basis(name: str) -> tuple[Any, ...]:
        return (entry(paths.node(name)), entry(paths.node_status(name)),
                entry(paths.node_alive(name)) is not None, view.primary() == name,
                entry(paths.fence_record(name)), entry(paths.node_health(name)))

    return FragmentRenderer(basis, lambda name: node_object(view, name))


class NodeBaseHandler(BaseHandler):
    def node(self, name: str) -> dict[str, Any]:
        obj = node_object(self.ctx.view, name)
        if obj is None:
            raise NotFound(f"Node '{name}' not found")
        return obj


NODE_LIMIT = limit("node names")


class NodeListHandler(BaseHandler):
    @accepts(NODE_LIMIT)
    def get(self) -> None:
        view = self.ctx.view
        renderer = self.ctx.node_list
        limit = self.values[NODE_LIMIT]
        names = [n for n in view.node_names() if limit is None or limit.search(n)]
        self.reply_bytes(renderer.render(names))


class NodeHandler(NodeBaseHandler):
    def get(self, name: str) -> None:
        self.reply([self.node(name)])


class NodeDaemonStateHandler(NodeBaseHandler):
    def get(self, name: str) -> None:
        self.reply({"name": name, "daemon_state": self.node(name)["daemon_state"]})


COORDINATOR_STATE = choice("coordinator-state", COORDINATOR_STATE_REQUESTS, "The wanted state.",
                           required=True)


WAIT_FOR_COORDINATOR_STATE = choice("coordinator-state", COORDINATOR_STATE_REQUESTS,
                                    "With `wait`: the state to wait for (required then).")


class NodeCoordinatorStateHandler(NodeBaseHandler):
    @accepts(WAIT_FOR_COORDINATOR_STATE, *WAIT_VALUES)
    async def get(self, name: str) -> None:
        self.node(name)
        wait = requested_wait(self.values)
        wanted = self.values[WAIT_FOR_COORDINATOR_STATE]
        if wait is not None and wanted is None:
            raise InvalidValue("missing mandatory value 'coordinator-state': with `wait`, the "
                               "state to wait for (primary or secondary)")
        await reply_when_settled(
            self, wait, coordinator_settles(self.ctx.view, name, str(wanted)),
            lambda: {"name": name, "coordinator_state": self.node(name)["coordinator_state"]})

    @accepts(COORDINATOR_STATE, *WAIT_VALUES)
    async def post(self, name: str) -> None:
        node = self.node(name)
        wanted = self.values[COORDINATOR_STATE]
        wait = requested_wait(self.values)
        view = self.ctx.view
        if not node["coordinator"]:
            raise InvalidValue(f"Node '{name}' is not a coordinator; only coordinators can "
                               "be primary or secondary")
        if node["daemon_state"] != "run":
            raise InvalidValue(f"Node '{name}' is not running (daemon state "
                               f"{node['daemon_state']}); it cannot change coordinator state")
        primary = view.primary()
        if wanted == "primary":
            if primary == name:
                return await reply_when_settled(self, wait, coordinator_settles(
                    view, name, str(wanted)), f"Node '{name}' is already primary")
            request = Handover(from_node=primary or "", to_node=name, requested=self.ctx.clock())
        else:
            if primary != name:
                return await reply_when_settled(self, wait, coordinator_settles(
                    view, name, str(wanted)), f"Node '{name}' is already secondary")
            others = [n for n in view.live_coordinators() if n != name]
            if not others:
                raise InvalidValue(f"No other coordinator is running to take over from "
                                   f"'{name}'; it stays primary")
            request = Handover(from_node=name, to_node=None, requested=self.ctx.clock())
        entry = view.cache.entry(view.paths.handover)
        op = Op.create(view.paths.handover, request.to_doc()) if entry is None else \
            Op.set(view.paths.handover, request.to_doc(), entry.version)
        await self.commit([op])
        await reply_when_settled(
            self, wait, coordinator_settles(view, name, str(wanted)),
            f"Setting node '{name}' to {wanted}; the primary role is being handed over")


DOMAIN_STATE = choice("domain-state", DOMAIN_STATE_REQUESTS, "The wanted state.", required=True)


class NodeDomainStateHandler(NodeBaseHandler):
    @accepts(*WAIT_VALUES)
    async def get(self, name: str) -> None:
        self.node(name)
        await reply_when_settled(
            self, requested_wait(self.values), node_domain_settles(self.ctx.view, name),
            lambda: {"name": name, "domain_state": self.node(name)["domain_state"]})

    @accepts(DOMAIN_STATE, *WAIT_VALUES)
    async def post(self, name: str) -> None:
        node = self.node(name)
        wanted = self.values[DOMAIN_STATE]
        wait = requested_wait(self.values)
        view = self.ctx.view
        entry = view.node_spec_entry(name)
        assert entry is not None  # node() found it
        spec = dict(entry.doc)
        settled = {"flush": "flushed", "ready": "ready"}[str(wanted)]
        if spec.get("domain_state") == wanted and node["domain_state"] == settled:
            return await reply_when_settled(self, wait, node_domain_settles(view, name),
                                            f"Node '{name}' is already in domain state {settled}")
        spec["domain_state"] = wanted
        spec["domain_request"] = int(spec.get("domain_request", 0)) + 1
        await self.commit([Op.set(view.paths.node(name), spec, entry.version)])
        await reply_when_settled(self, wait, node_domain_settles(view, name),
                                 f"Setting node '{name}' to domain state {wanted}")


ROUTES = [
    route("/node", NodeListHandler),
    route("/node/<node>", NodeHandler),
    route("/node/<node>/coordinator-state", NodeCoordinatorStateHandler),
    route("/node/<node>/domain-state", NodeDomainStateHandler),
    route("/node/<node>/daemon-state", NodeDaemonStateHandler),
]
