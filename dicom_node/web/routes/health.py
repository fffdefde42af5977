"""Liveness, readiness and Prometheus metrics.

``/health`` and ``/ready`` answer without a login: an orchestrator or a load
balancer probes them, and they say only "ok" or which dependency is missing.
``/metrics`` needs a logged-in session or, for a scraper, the bearer token
``web.metrics_token``.
"""

from __future__ import annotations

import secrets
import tempfile
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dicom_node.web.auth import NotAuthenticated, session_token
from dicom_node.web.deps import CtxDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness: the process answers HTTP."""
    return {"status": "ok"}


def _spool_writable(ctx: CtxDep) -> bool:
    folder = ctx.spool_root / "tmp"
    if not folder.is_dir():
        folder = ctx.spool_root
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ready-") as probe:
            probe.write(b"ok")
            probe.flush()
    except OSError:
        return False
    return True


def _database_ok(ctx: CtxDep) -> bool:
    try:
        return ctx.queries.ping()
    except Exception:  # any driver error means "not ready"
        return False


@router.get("/ready", responses={503: {"description": "A dependency is missing"}})
def ready(ctx: CtxDep) -> JSONResponse:
    """Readiness: state database, broker, spool writable, at least one worker."""
    checks = {
        "database": _database_ok(ctx),
        "broker": ctx.probe.ping(),
        "spool_writable": _spool_writable(ctx),
        "workers": bool(ctx.probe.workers().workers),
    }
    ok = all(checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
def metrics(
    request: Request, ctx: CtxDep, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """Prometheus text exposition of the node's metrics."""
    token = ctx.settings.web.metrics_token.get_secret_value()
    bearer = (authorization or "").removeprefix("Bearer ").strip()
    by_token = bool(token) and bool(bearer) and secrets.compare_digest(bearer, token)
    if not by_token and ctx.sessions.user(session_token(request), ctx.auth.users) is None:
        raise NotAuthenticated()
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
