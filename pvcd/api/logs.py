"""`GET /vm/<vm>/console` and `GET /node/<node>/log` (extensions.md §7): the tail of a VM's
serial console and of a node daemon's log, read from the watch-fed cache.

Both buffers are written by nodes (`pvcd.controllers.console`, `pvcd.controllers.node_log`);
what is read and how `after` works is `pvcd.domain.log_tail.read_tail`. A node's log stays
readable after the node stopped; a VM whose node keeps no console for it answers `data: ""`.
"""

from __future__ import annotations

from typing import Any

from pvcd.api.base import BaseHandler
from pvcd.api.routing import route
from pvcd.api.values import accepts, integer
from pvcd.api.vms import VmBaseHandler
from pvcd.domain.errors import NotFound
from pvcd.domain.log_tail import LogTail, read_tail

DEFAULT_LINES = 10  # PVC's default
LINES = integer("lines", f"How many lines to return at most (default {DEFAULT_LINES}).",
                minimum=1, default=DEFAULT_LINES)
AFTER = integer("after", "Only lines after this line number (a previous answer's "
                "`last_line`): the oldest `lines` of them, and `last_line` is then the last "
                "one returned, so a follower neither repeats nor misses lines. `truncated: "
                "true` says lines after it had already left the buffer.", minimum=0)


def tail_object(name: str, doc: object, lines: int | None, after: int | None
                ) -> dict[str, Any]:
    read = read_tail(LogTail.from_doc(doc), lines or DEFAULT_LINES, after)
    answer: dict[str, Any] = {"name": name, "data": read.data, "last_line": read.last_line}
    if read.truncated:
        answer["truncated"] = True
    return answer


class VmConsoleHandler(VmBaseHandler):
    @accepts(LINES, AFTER)
    def get(self, vm: str) -> None:
        spec, _ = self.vm_spec(vm)
        doc = self.ctx.view.cache.get(self.ctx.view.paths.vm_console(spec.uuid))
        self.reply(tail_object(spec.name, doc, self.values[LINES], self.values[AFTER]))


class NodeLogHandler(BaseHandler):
    @accepts(LINES, AFTER)
    def get(self, node: str) -> None:
        view = self.ctx.view
        if not view.cache.exists(view.paths.node(node)):
            raise NotFound(f"Node '{node}' not found")
        doc = view.cache.get(view.paths.node_log(node))
        self.reply(tail_object(node, doc, self.values[LINES], self.values[AFTER]))


ROUTES = [
    route("/vm/<vm>/console", VmConsoleHandler),
    route("/node/<node>/log", NodeLogHandler),
]
