"""Cluster-wide settings: maintenance mode (suspends fencing while operators work)."""

from __future__ import annotations

from pvcd.api.base import BaseHandler
from pvcd.api.routing import route
from pvcd.domain.errors import InvalidValue
from pvcd.state.store import Op

_ON = ("on", "true", "yes", "1")
_OFF = ("off", "false", "no", "0")


class MaintenanceHandler(BaseHandler):
    def get(self) -> None:
        doc = self.ctx.view.cache.get(self.ctx.view.paths.maintenance) or {}
        self.reply({"maintenance": bool(doc.get("enabled", False)), "since": doc.get("since")})

    async def post(self) -> None:
        value = self.values.require("state").strip().lower()
        if value not in _ON + _OFF:
            raise InvalidValue(f"invalid state '{value}'; valid values are: on, off")
        enabled = value in _ON
        view = self.ctx.view
        entry = view.cache.entry(view.paths.maintenance)
        doc = {"enabled": enabled, "since": self.ctx.clock() if enabled else None}
        op = Op.create(view.paths.maintenance, doc) if entry is None else \
            Op.set(view.paths.maintenance, doc, entry.version)
        await self.commit([op])
        self.message("Maintenance mode is on: fencing is suspended" if enabled else
                     "Maintenance mode is off: fencing is active")


ROUTES = [route("/maintenance", MaintenanceHandler)]
