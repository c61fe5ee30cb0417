"""The route table of the API and the Tornado application built from it.

Each resource module declares its endpoints (`ROUTES`, built with `pvcd.api.routing.route`);
`ROUTES` here is their concatenation: the single table the server is built from, and the one
the OpenAPI document is generated from, so the two cannot drift.
"""

from __future__ import annotations

import tornado.web

from pvcd.api import cluster, general, networks, nodes, storage, vms
from pvcd.api.base import ApiContext, NotFoundHandler
from pvcd.api.routing import Route

ROUTES: list[Route] = [
    *general.ROUTES,
    *nodes.ROUTES,
    *vms.ROUTES,
    *networks.ROUTES,
    *cluster.ROUTES,
    *storage.ROUTES,
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
