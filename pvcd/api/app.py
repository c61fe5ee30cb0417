"""The route table of the API and the Tornado application built from it.

Each resource module declares its endpoints (`ROUTES`, built with `pvcd.api.routing.route`);
`ROUTES` here is their concatenation: the single table the server is built from, and the one
the OpenAPI document is generated from, so the two cannot drift.
"""

from __future__ import annotations

import logging

import tornado.web
from tornado.log import access_log

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


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The access log: 510 is the API's answer to a request it refuses (bad input, a backend
    saying no), not a server fault, so it is a warning; 500 (a bug) stays an error."""
    status = handler.get_status()
    if status < 400:
        level = logging.INFO
    elif status < 500 or status == 510:
        level = logging.WARNING
    else:
        level = logging.ERROR
    request = handler.request
    access_log.log(level, "%d %s %s (%s) %.1fms", status, request.method, request.uri,
                   request.remote_ip, 1000.0 * request.request_time())


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
        log_function=log_request,
        pvc_routes=ROUTES,  # the OpenAPI document is generated from them
    )
