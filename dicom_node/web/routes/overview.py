"""The overview: arrivals, queues, jobs, workers, failures and disk at a glance."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from dicom_node.web import views
from dicom_node.web.deps import CtxDep, CurrentUser
from dicom_node.web.models import OverviewPublic
from dicom_node.web.pages import render

__all__ = ["api", "pages"]

api = APIRouter(prefix="/api/overview", tags=["overview"])
pages = APIRouter(include_in_schema=False)


@api.get("", response_model=OverviewPublic)
def get_overview(ctx: CtxDep, _user: CurrentUser) -> OverviewPublic:
    """The node at a glance (what ``dicom-node status`` prints)."""
    return views.overview(ctx)


@pages.get("/", response_class=HTMLResponse)
def overview_page(request: Request, ctx: CtxDep, user: CurrentUser) -> HTMLResponse:
    """The overview page; it refreshes itself every 15 s."""
    return render(request, ctx, user, "overview.html", overview=views.overview(ctx))
