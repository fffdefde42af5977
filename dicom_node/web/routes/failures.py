"""Failures: FAILED jobs with their reasons, and the buttons to retry or cancel them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from dicom_node.web import views
from dicom_node.web.deps import CtxDep, CurrentUser
from dicom_node.web.models import JobPagePublic
from dicom_node.web.pages import render

__all__ = ["api", "pages"]

api = APIRouter(prefix="/api/failures", tags=["failures"])
pages = APIRouter(include_in_schema=False)


@api.get("", response_model=JobPagePublic)
def list_failures(
    ctx: CtxDep,
    _user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPagePublic:
    """FAILED jobs, most recent first."""
    return views.failures(ctx, limit=limit, offset=offset)


@pages.get("/failures", response_class=HTMLResponse)
def failures_page(
    request: Request, ctx: CtxDep, user: CurrentUser, offset: Annotated[int, Query(ge=0)] = 0
) -> HTMLResponse:
    """The failures page."""
    page = views.failures(ctx, limit=100, offset=offset)
    return render(request, ctx, user, "failures.html", page=page, offset=offset, limit=100)
