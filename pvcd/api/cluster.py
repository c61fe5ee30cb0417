"""Cluster-wide settings: maintenance mode (suspends fencing and fault raising while operators
work)."""

from __future__ import annotations

from pvcd.api.base import BaseHandler
from pvcd.api.routing import route
from pvcd.api.values import accepts, value
from pvcd.domain.errors import InvalidValue
from pvcd.state.store import Op

_ON = ("on", "true", "yes", "1")
_OFF = ("off", "false", "no", "0")


def parse_maintenance(raw: str) -> bool:
    word = raw.strip().lower()
    if word not in _ON + _OFF:
        raise InvalidValue(f"invalid state '{word}'; valid values are: on, off")
    return word in _ON


STATE = value("state", "on or off (also true/false, yes/no, 1/0).", parse_maintenance,
              required=True)


class MaintenanceHandler(BaseHandler):
    def get(self) -> None:
        doc = self.ctx.view.cache.get(self.ctx.view.paths.maintenance) or {}
        self.reply({"maintenance": bool(doc.get("enabled", False)), "since": doc.get("since")})

    @accepts(STATE)
    async def post(self) -> None:
        await set_maintenance(self, self.values[STATE])


async def set_maintenance(handler: BaseHandler, enabled: bool) -> None:
    """Turn maintenance mode on or off and answer (`POST /maintenance`, `POST /status`)."""
    view = handler.ctx.view
    entry = view.cache.entry(view.paths.maintenance)
    doc = {"enabled": enabled, "since": handler.ctx.clock() if enabled else None}
    op = Op.create(view.paths.maintenance, doc) if entry is None else \
        Op.set(view.paths.maintenance, doc, entry.version)
    await handler.commit([op])
    handler.message("Maintenance mode is on: fencing is suspended and no faults are raised"
                    if enabled else "Maintenance mode is off: fencing is active")


ROUTES = [route("/maintenance", MaintenanceHandler)]
