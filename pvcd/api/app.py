"""The route table of the API and the Tornado application built from it.

Each resource module declares its endpoints (`ROUTES`, built with `pvcd.api.routing.route`);
`ROUTES` here is their concatenation: the single table the server is built from, and the one
the OpenAPI document is generated from, so the two cannot drift. The application also serves
the web dashboard (`pvcd.api.dashboard`: its pages and event stream, not API endpoints, so not
in the route table).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import tornado.web

from pvcd.api import (
    autobackup,
    cluster,
    cluster_backup,
    faults,
    general,
    logs,
    metrics,
    networks,
    nodes,
    openapi,
    ova,
    provisioner_create,
    provisioner_profiles,
    provisioner_templates,
    status,
    storage,
    tasks,
    uploads,
    vm_backups,
    vm_devices,
    vm_meta,
    vm_snapshots,
    vms,
    volumes,
)
from pvcd.api.auth import Tokens
from pvcd.api.base import ApiContext, NotFoundHandler
from pvcd.api.dashboard import web_handlers
from pvcd.api.ratelimit import FailureLimiter
from pvcd.api.requestlog import log_request
from pvcd.api.routing import Route
from pvcd.api.sessions import Sessions
from pvcd.api.upload_port import Uploads
from pvcd.config.schema import ApiSection
from pvcd.domain.pool_space import PoolSpace
from pvcd.state.store import Store
from pvcd.state.view import ClusterView
from pvcd.upload_pipe import UploadPipes

ROUTES: list[Route] = [
    *general.ROUTES,
    *nodes.ROUTES,
    *autobackup.ROUTES,  # before /vm/<vm> (extensions.md §5.5)
    *vms.ROUTES,
    *vm_meta.ROUTES,
    *logs.ROUTES,
    *vm_snapshots.ROUTES,
    *vm_backups.ROUTES,
    *vm_devices.ROUTES,
    *networks.ROUTES,
    *cluster.ROUTES,
    *status.ROUTES,
    *faults.ROUTES,
    *cluster_backup.ROUTES,
    *storage.ROUTES,
    *volumes.ROUTES,
    *provisioner_templates.ROUTES,
    *provisioner_profiles.ROUTES,
    *uploads.ROUTES,
    *tasks.ROUTES,
    *ova.ROUTES,
    *provisioner_create.ROUTES,
    *openapi.ROUTES,
    *metrics.ROUTES,
]


def make_context(view: ClusterView, store: Store, node_name: str, auth_enabled: bool,
                 tokens: Tokens, storage_request_timeout: float | None = None,
                 clock: Callable[[], float] = time.time,
                 registry: metrics.Metrics | None = None,
                 api: ApiSection | None = None, uploads: UploadPipes | None = None,
                 pool_space: Callable[[str], PoolSpace] | None = None,
                 upload_service: Uploads | None = None,
                 upstream_ip: str | None = None,
                 backup_paths: tuple[str, ...] = ()) -> ApiContext:
    """The API's context with its list renderers and its metrics (`registry`: the daemon's
    own, which also reads its controllers and this context's requests in flight; else a new
    one of the API alone). `api`: the config section with the session lifetime, the body
    limit and the failure budget (the defaults when not given). `uploads`: the pipes shared
    with this node's upload tasks; `pool_space`: a pool's usage from Ceph (uploads check it);
    `upstream_ip`: the upstream floating address `GET /status` names;
    `backup_paths`: backup.allowed_paths."""
    api = api or ApiSection()
    registry = registry or metrics.Metrics(view, node_name, clock,
                                           in_flight=lambda: ctx.in_flight)
    vm_list = vms.vm_renderer(view, clock)
    ctx = ApiContext(view=view, store=store, node_name=node_name, auth_enabled=auth_enabled,
                     tokens=tokens, vm_list=vm_list,
                     vm_answers=vms.vm_answers(view, vm_list, clock),
                     node_list=nodes.node_renderer(view),
                     sessions=Sessions(view, store, tokens, api.auth.session_lifetime, clock),
                     failures=FailureLimiter(api.auth.max_failures, api.auth.failure_window,
                                             clock),
                     max_body_size=api.max_body_size, task_wait=api.task_wait,
                     storage_request_timeout=storage_request_timeout, clock=clock,
                     metrics=registry, uploads=uploads if uploads is not None else UploadPipes(),
                     pool_space=pool_space, upload_service=upload_service,
                     upstream_ip=upstream_ip, backup_paths=backup_paths)
    return ctx


def make_app(ctx: ApiContext, cookie_secret: str) -> tornado.web.Application:
    handlers: list[Any] = [(route.pattern, route.handler,
                            {"ctx": ctx, "route": openapi.openapi_path(route)})
                           for route in ROUTES]
    handlers += web_handlers(ctx)  # the web dashboard at /, beside the API
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
