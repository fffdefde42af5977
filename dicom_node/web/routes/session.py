"""Logging in and out: the login page, and ``/api/session`` for programs."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from dicom_node.web import auditing
from dicom_node.web.auth import (
    TooManyAttempts,
    csrf_token,
    log_in,
    log_out,
    session_user_name,
)
from dicom_node.web.deps import CtxDep
from dicom_node.web.models import LoginRequest, SessionPublic
from dicom_node.web.pages import render

__all__ = ["api", "pages", "safe_next"]

logger = logging.getLogger(__name__)

api = APIRouter(prefix="/api/session", tags=["session"])
pages = APIRouter(include_in_schema=False)


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything else (another site) becomes ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _session_public(request: Request, ctx: CtxDep) -> SessionPublic:
    user = ctx.auth.user(session_user_name(request))
    return SessionPublic(
        name=user.name if user else None,
        role=user.role if user else None,
        csrf_token=csrf_token(request),
    )


@api.get("", response_model=SessionPublic)
def get_session(request: Request, ctx: CtxDep) -> SessionPublic:
    """Who is logged in (nobody, before login) and the session's CSRF token."""
    return _session_public(request, ctx)


@api.post("", response_model=SessionPublic)
def post_session(request: Request, ctx: CtxDep, body: LoginRequest) -> SessionPublic:
    """Log in with a name and password (the CSRF token from ``GET /api/session``)."""
    try:
        user = ctx.auth.authenticate(body.name, body.password)
    except TooManyAttempts as exc:
        auditing.authentication(ctx, request, body.name, ok=False)
        raise HTTPException(429, "too many failed logins; wait a few minutes") from exc
    if user is None:
        logger.warning("failed login for %r", body.name[:64])
        auditing.authentication(ctx, request, body.name, ok=False)
        raise HTTPException(401, "wrong name or password")
    log_in(request, user)
    auditing.authentication(ctx, request, user.name, ok=True)
    logger.info("%s logged in (api)", user.name)
    return _session_public(request, ctx)


@api.post("/logout", response_model=SessionPublic)
def api_logout(request: Request, ctx: CtxDep) -> SessionPublic:
    """End the session."""
    name = session_user_name(request)
    log_out(request)
    if name:
        auditing.authentication(ctx, request, name, ok=True, logout=True)
    return _session_public(request, ctx)


@pages.get("/login", response_class=HTMLResponse)
def login_page(request: Request, ctx: CtxDep, next: str = "/") -> HTMLResponse:
    """The login form."""
    return render(request, ctx, None, "login.html", next=safe_next(next), error=None)


@pages.post("/login", response_model=None)
def login_form(
    request: Request,
    ctx: CtxDep,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form()] = "/",
) -> HTMLResponse | RedirectResponse:
    """Check the credentials; on success start a session and go on."""
    error = "wrong name or password"
    try:
        user = ctx.auth.authenticate(name, password)
    except TooManyAttempts:
        user, error = None, "too many failed logins; wait a few minutes"
    if user is None:
        logger.warning("failed login for %r", name[:64])
        auditing.authentication(ctx, request, name, ok=False)
        return render(
            request, ctx, None, "login.html", status_code=401, next=safe_next(next), error=error
        )
    log_in(request, user)
    auditing.authentication(ctx, request, user.name, ok=True)
    logger.info("%s logged in", user.name)
    return RedirectResponse(safe_next(next), status_code=303)


@pages.post("/logout")
def logout_form(request: Request, ctx: CtxDep) -> RedirectResponse:
    """End the session and show the login page."""
    name = session_user_name(request)
    log_out(request)
    if name:
        auditing.authentication(ctx, request, name, ok=True, logout=True)
    return RedirectResponse("/login", status_code=303)
