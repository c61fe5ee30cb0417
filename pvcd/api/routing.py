"""Route declarations: each resource module lists its endpoints with `route()`.

`pvcd.api.app` concatenates the lists into the one route table that the server (and, later, the
OpenAPI document) is built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pvcd.api.base import BaseHandler

PREFIX = "/api/v1"
_PARAM = r"([^/]+)"


@dataclass(frozen=True)
class Route:
    path: str  # the manual's form, e.g. /node/<node>/domain-state
    pattern: str
    handler: type[BaseHandler]


def route(path: str, handler: type[BaseHandler]) -> Route:
    """`path` in the manual's form; `<name>` segments become captured arguments."""
    parts = [_PARAM if part.startswith("<") else part for part in path.split("/")[1:]]
    pattern = PREFIX + "".join("/" + part for part in parts)
    return Route(path, pattern + "/?$", handler)
