"""The dashboard application: ``create_app(settings)``.

Importing this module connects nowhere; each call builds an application with
its own settings, so a test builds one against its own state DB.

Layers, outermost first: the access log (no PHI, security headers), the
session (a signed cookie), CSRF (every unsafe method), then the routers, one
per resource. Nothing but ``/login``, ``/api/session``, ``/health`` and
``/ready`` answers without a logged-in user.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client import CollectorRegistry
from starlette.middleware.sessions import SessionMiddleware

from dicom_node import __version__
from dicom_node.audit import open_audit
from dicom_node.metrics import NodeCollector
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.state.queries import StateQueries
from dicom_node.web.access_log import AccessLogMiddleware
from dicom_node.web.auth import Forbidden, NotAuthenticated
from dicom_node.web.context import WebContext
from dicom_node.web.csrf import CsrfMiddleware
from dicom_node.web.deps import CurrentUser
from dicom_node.web.pages import make_templates
from dicom_node.web.probe import BrokerProbe
from dicom_node.web.routes import (
    associations,
    audit,
    config,
    deid,
    failures,
    health,
    jobs,
    overview,
    retention,
    session,
    studies,
)
from pipelines.errors import PipelineConfigError
from pipelines.spec import PipelineSpec, load_pipeline_specs

__all__ = ["ROUTERS", "SESSION_COOKIE", "create_app", "queue_names"]

logger = logging.getLogger(__name__)

#: Every router the application includes: each resource's REST routes and pages.
ROUTERS: tuple[APIRouter, ...] = (
    *(
        router
        for module in (
            session,
            overview,
            studies,
            jobs,
            failures,
            associations,
            config,
            retention,
            audit,
            deid,
        )
        for router in (module.api, module.pages)
    ),
    health.router,
)

#: Name of the signed session cookie.
SESSION_COOKIE = "dicom_node_session"


def queue_names(
    settings: Settings, pipelines: Mapping[str, PipelineSpec] | None
) -> dict[str, list[str]]:
    """Queue names to watch (the worker's and every pipeline's), with their pipelines.

    Parameters
    ----------
    settings : Settings
        ``worker.queues`` and, when ``pipelines`` is None, ``pipelines_dir``.
    pipelines : Mapping[str, PipelineSpec] or None
        Pipeline definitions; None loads them.

    Returns
    -------
    dict[str, list[str]]
        Queue name to the names of the pipelines routed to it.
    """
    if pipelines is None:
        try:
            pipelines = load_pipeline_specs(settings.pipelines_dir)
        except PipelineConfigError as exc:
            logger.warning("dashboard: pipelines not loaded (%s)", exc.reason)
            pipelines = {}
    queues: dict[str, list[str]] = defaultdict(list)
    for name in settings.worker.queues:
        queues[name]
    for spec in pipelines.values():
        # A disabled pipeline sends nothing: its queue needs no worker.
        if spec.enabled:
            queues[spec.queue].append(spec.name)
    return dict(queues)


def _wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith("/api") or path == "/metrics":
        return False
    return "text/html" in request.headers.get("accept", "text/html") or request.method == "GET"


def create_app(
    settings: Settings,
    *,
    state: StateDB | None = None,
    spool: Spool | None = None,
    pipelines: Mapping[str, PipelineSpec] | None = None,
    probe: BrokerProbe | None = None,
) -> FastAPI:
    """Build the dashboard, the REST API and the metrics endpoint.

    Parameters
    ----------
    settings : Settings
        The node configuration (``web`` for users, secret, TLS).
    state : StateDB or None
        The node's state DB; None opens ``settings.state_db_url`` (closed at shutdown).
    spool : Spool or None
        The node's spool; None opens ``settings.spool_dir``. Pass the node's own
        when it runs: opening a spool clears its ``tmp`` folder, where the
        receiver writes.
    pipelines : Mapping[str, PipelineSpec] or None
        Pipeline definitions, for the queue names; None loads ``settings.pipelines_dir``.
    probe : BrokerProbe or None
        Broker questions; None builds one on ``settings.broker``.

    Returns
    -------
    fastapi.FastAPI
        The application; serve it with :func:`dicom_node.web.server.start_web_server`.
    """
    owns_state = state is None
    # The spool first: it creates the folder a default SQLite state DB lives in.
    node_spool = (
        spool if spool is not None else Spool(settings.spool_dir, settings.scp.min_free_bytes)
    )
    db = (
        state
        if state is not None
        else StateDB(settings.state_db_url, upgrade=settings.database_auto_upgrade)
    )
    queues = queue_names(settings, pipelines)
    ctx = WebContext(
        settings=settings,
        state=db,
        spool=node_spool,
        queries=StateQueries(db),
        probe=probe or BrokerProbe(settings.broker, queues, settings.web.worker_ping_timeout_s),
        queues=queues,
        templates=make_templates(),
        audit=open_audit(settings),
        owns_state=owns_state,
    )
    # A user removed from the configuration, or given a new password, finds every
    # old session gone, even if added back later.
    ctx.sessions.prune(ctx.auth.users)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.close()

    app = FastAPI(
        title="dicom-node",
        version=__version__,
        description="The admin's view of a dicom-node: studies, jobs, failures, metrics.",
        openapi_url=None,  # served below, behind the login
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    registry = CollectorRegistry()
    registry.register(
        NodeCollector(ctx.queries, ctx.probe, ctx.spool_root, settings.scp.min_free_bytes)
    )
    app.state.registry = registry

    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(CsrfMiddleware)
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.web.session_secret.get_secret_value(),
        session_cookie=SESSION_COOKIE,
        max_age=settings.web.session_max_age_s,
        same_site="lax",
        https_only=settings.web.tls.enabled,
    )
    app.add_middleware(AccessLogMiddleware)

    @app.exception_handler(NotAuthenticated)
    async def _not_authenticated(request: Request, _exc: NotAuthenticated) -> Response:
        if _wants_html(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.method != "GET":
                target = "/"  # a form's POST cannot be replayed as a GET after the login
            return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
        return JSONResponse({"detail": "not authenticated"}, status_code=401)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, _exc: Forbidden) -> Response:
        if _wants_html(request):
            return PlainTextResponse("forbidden: admins only", status_code=403)
        return JSONResponse({"detail": "admins only"}, status_code=403)

    for router in ROUTERS:
        app.include_router(router)

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_user: CurrentUser) -> dict[str, Any]:
        """The OpenAPI description of ``/api`` (logged-in users only)."""
        return app.openapi()

    return app
