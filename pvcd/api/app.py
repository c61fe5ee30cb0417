"""The route table of the API and the Tornado application built from it.

`ROUTES` is the single list of endpoints; later issues add their resources here, and the
OpenAPI document is generated from the same table so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import tornado.web

from pvcd.api import general, nodes
from pvcd.api.base import ApiContext, BaseHandler, NotFoundHandler

PREFIX = "/api/v1"
_NAME = r"([^/]+)"


@dataclass(frozen=True)
class Route:
    path: str  # the manual's form, e.g. /node/<node>/domain-state
    pattern: str
    handler: type[BaseHandler]


def _route(path: str, handler: type[BaseHandler]) -> Route:
    pattern = PREFIX + "".join(
        _NAME if part.startswith("<") else part
        for part in _split_path(path)
    )
    return Route(path, pattern + "/?$" if path else PREFIX + "/?$", handler)


def _split_path(path: str) -> list[str]:
    out: list[str] = []
    for piece in path.split("/")[1:]:
        out.extend(["/", piece])
    return out


ROUTES: list[Route] = [
    _route("", general.RootHandler),
    _route("/auth/login", general.LoginHandler),
    _route("/auth/logout", general.LogoutHandler),
    _route("/node", nodes.NodeListHandler),
    _route("/node/<node>", nodes.NodeHandler),
    _route("/node/<node>/coordinator-state", nodes.NodeCoordinatorStateHandler),
    _route("/node/<node>/domain-state", nodes.NodeDomainStateHandler),
    _route("/node/<node>/daemon-state", nodes.NodeDaemonStateHandler),
]


def make_app(ctx: ApiContext, cookie_secret: str) -> tornado.web.Application:
    handlers = [(route.pattern, route.handler, {"ctx": ctx}) for route in ROUTES]
    return tornado.web.Application(
        handlers,
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        cookie_secret=cookie_secret or None,
        xsrf_cookies=False,
        compress_response=False,
    )
