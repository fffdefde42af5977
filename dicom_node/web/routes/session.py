"""Logging in and out: the login page, ``/api/session`` for programs, and an admin's
"log out everywhere" (the Sessions page, ``/api/session/all``, ``/api/session/revoke``).

A login goes through :class:`dicom_node.web.login_guard.LoginGuard`: an attempt
that must wait is answered 429 with ``Retry-After``, one that finds every
password check busy 503 with ``Retry-After``, both at once. Every login, refused
login and logout goes into the audit trail (:mod:`dicom_node.web.auditing`), a
typed name that is no user only as a keyed hash.
"""

from __future__ import annotations

import datetime
import logging
import math
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from dicom_node.web import auditing
from dicom_node.web.auth import (
    LoginBusy,
    csrf_token,
    log_in,
    log_out,
    session_token,
)
from dicom_node.web.deps import AdminUser, CtxDep
from dicom_node.web.login_guard import DEVICE_COOKIE, LoginAttempt, LoginOutcome, TooManyAttempts
from dicom_node.web.models import (
    LoginRequest,
    RevokePublic,
    RevokeRequest,
    SessionInfoPublic,
    SessionPublic,
)
from dicom_node.web.pages import flash, render

__all__ = ["api", "pages", "safe_next"]

logger = logging.getLogger(__name__)

api = APIRouter(prefix="/api/session", tags=["session"])
pages = APIRouter(include_in_schema=False)

#: Seconds a client turned away because every password check was busy should wait.
_BUSY_RETRY_S = 1


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything else (another site) becomes ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _session_public(request: Request, ctx: CtxDep) -> SessionPublic:
    user = ctx.sessions.user(session_token(request), ctx.auth.users)
    return SessionPublic(
        name=user.name if user else None,
        role=user.role if user else None,
        csrf_token=csrf_token(request),
    )


def _attempt(request: Request, ctx: CtxDep, name: str, password: str) -> LoginOutcome | None:
    """Run a login attempt; refusals become ``HTTPException`` 429 or 503."""
    attempt = LoginAttempt(
        source=request.client.host if request.client else "",
        name=name,
        password=password,
        device_cookie=request.cookies.get(DEVICE_COOKIE),
    )
    try:
        outcome = ctx.logins.attempt(attempt)
    except TooManyAttempts as exc:
        auditing.authentication(ctx, request, ctx.logins.display_name(name), ok=False)
        wait = str(max(1, math.ceil(exc.retry_after_s)))
        raise HTTPException(
            429, f"too many failed logins; try again in {wait} s", {"Retry-After": wait}
        ) from exc
    except LoginBusy as exc:
        raise HTTPException(
            503, "the server is busy checking passwords; try again", {"Retry-After": "1"}
        ) from exc
    if outcome is None:
        auditing.authentication(ctx, request, ctx.logins.display_name(name), ok=False)
    else:
        auditing.authentication(ctx, request, outcome.user.name, ok=True)
    return outcome


def _log_out(request: Request, ctx: CtxDep) -> None:
    """End the session on the server and put the logout in the audit trail."""
    user = ctx.sessions.user(session_token(request), ctx.auth.users)
    log_out(request, ctx.sessions)
    if user is not None:
        auditing.authentication(ctx, request, user.name, ok=True, logout=True)


def _remember_device(response: Response, ctx: CtxDep, outcome: LoginOutcome) -> None:
    response.set_cookie(
        DEVICE_COOKIE,
        outcome.device_cookie,
        max_age=ctx.logins.device_max_age_s,
        httponly=True,
        secure=ctx.settings.web.tls.enabled,
        samesite="lax",
    )


@api.get("", response_model=SessionPublic)
def get_session(request: Request, ctx: CtxDep) -> SessionPublic:
    """Who is logged in (nobody, before login) and the session's CSRF token."""
    return _session_public(request, ctx)


@api.post("", response_model=SessionPublic)
def post_session(
    request: Request, response: Response, ctx: CtxDep, body: LoginRequest
) -> SessionPublic:
    """Log in with a name and password (the CSRF token from ``GET /api/session``)."""
    outcome = _attempt(request, ctx, body.name, body.password)
    if outcome is None:
        raise HTTPException(401, "wrong name or password")
    log_in(request, outcome.user, ctx.sessions)
    _remember_device(response, ctx, outcome)
    return _session_public(request, ctx)


@api.post("/logout", response_model=SessionPublic)
def api_logout(request: Request, ctx: CtxDep) -> SessionPublic:
    """End the session, on the server too: a copy of the cookie no longer works."""
    _log_out(request, ctx)
    return _session_public(request, ctx)


@api.get("/all", response_model=list[SessionInfoPublic])
def list_sessions(ctx: CtxDep, _admin: AdminUser) -> list[SessionInfoPublic]:
    """Every open session, most recently used first (admins only)."""
    return [
        SessionInfoPublic(
            user=info.user_name,
            address=info.address,
            created_at=info.created_at.replace(tzinfo=datetime.UTC),
            last_seen_at=info.last_seen_at.replace(tzinfo=datetime.UTC),
            expires_at=info.expires_at.replace(tzinfo=datetime.UTC),
        )
        for info in ctx.sessions.active()
    ]


def _revoke(ctx: CtxDep, admin: AdminUser, user: str | None) -> int:
    count = ctx.sessions.end_all(user)
    logger.warning(
        "%s logged %s out everywhere (%d sessions)", admin.name, user or "every user", count
    )
    return count


@api.post("/revoke", response_model=RevokePublic)
def revoke_sessions(ctx: CtxDep, admin: AdminUser, body: RevokeRequest) -> RevokePublic:
    """Log a user, or everyone (the caller too), out everywhere (admins only)."""
    return RevokePublic(revoked=_revoke(ctx, admin, body.user))


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
    try:
        outcome = _attempt(request, ctx, name, password)
    except HTTPException as exc:
        return render(
            request,
            ctx,
            None,
            "login.html",
            status_code=exc.status_code,
            next=safe_next(next),
            error=exc.detail,
            headers=exc.headers,
        )
    if outcome is None:
        return render(
            request,
            ctx,
            None,
            "login.html",
            status_code=401,
            next=safe_next(next),
            error="wrong name or password",
        )
    log_in(request, outcome.user, ctx.sessions)
    redirect = RedirectResponse(safe_next(next), status_code=303)
    _remember_device(redirect, ctx, outcome)
    return redirect


@pages.post("/logout")
def logout_form(request: Request, ctx: CtxDep) -> RedirectResponse:
    """End the session and show the login page."""
    _log_out(request, ctx)
    return RedirectResponse("/login", status_code=303)


@pages.get("/sessions", response_class=HTMLResponse)
def sessions_page(request: Request, ctx: CtxDep, admin: AdminUser) -> HTMLResponse:
    """Open sessions, with the buttons that log users out everywhere (admins only)."""
    users = sorted(ctx.auth.users)
    return render(request, ctx, admin, "sessions.html", sessions=ctx.sessions.active(), users=users)


@pages.post("/sessions/revoke")
def revoke_form(
    request: Request,
    ctx: CtxDep,
    admin: AdminUser,
    user: Annotated[str, Form(max_length=64)] = "",
) -> RedirectResponse:
    """The "log out everywhere" buttons: one user's, or everyone's (empty ``user``)."""
    count = _revoke(ctx, admin, user or None)
    if user and user != admin.name:
        flash(request, f"{user} logged out everywhere ({count} sessions)")
        return RedirectResponse("/sessions", status_code=303)
    # The admin's own session ended too.
    return RedirectResponse("/login", status_code=303)
