"""The route table of the API and the Tornado application built from it.

Each resource module declares its endpoints (`ROUTES`, built with `pvcd.api.routing.route`);
`ROUTES` here is their concatenation: the single table the server is built from, and the one
the OpenAPI document is generated from, so the two cannot drift.
"""

from __future__ import annotations

import tornado.web

from pvcd.api import cluster, general, metrics, networks, nodes, openapi, storage, vms
from pvcd.api.base import ApiContext, NotFoundHandler
from pvcd.api.routing import Route

ROUTES: list[Route] = [
    *general.ROUTES,
    *nodes.ROUTES,
    *vms.ROUTES,
    *networks.ROUTES,
    *cluster.ROUTES,
    *storage.ROUTES,
    *openapi.ROUTES,
    *metrics.ROUTES,
]


def make_app(ctx: ApiContext, cookie_secret: str) -> tornado.web.Application:
    if ctx.metrics is None:  # the daemon passes its own (with its controllers)
        ctx.metrics = metrics.Metrics(ctx.view, ctx.node_name, ctx.clock)
    if isinstance(ctx.metrics, metrics.Metrics):
        ctx.metrics.in_flight = lambda: ctx.in_flight
    handlers = [(route.pattern, route.handler,
                 {"ctx": ctx, "route": openapi.openapi_path(route)}) for route in ROUTES]
    return tornado.web.Application(
        handlers,
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        cookie_secret=cookie_secret or None,
        xsrf_cookies=False,
        compress_response=False,
        pvc_routes=ROUTES,  # the OpenAPI document is generated from them
    )
