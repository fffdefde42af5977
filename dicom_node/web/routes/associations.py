"""The association log: who connected, when, what they sent and how it ended."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from dicom_node.web import views
from dicom_node.web.deps import CtxDep, CurrentUser
from dicom_node.web.models import AssociationPagePublic
from dicom_node.web.pages import render

__all__ = ["api", "pages"]

api = APIRouter(prefix="/api/associations", tags=["associations"])
pages = APIRouter(include_in_schema=False)


@api.get("", response_model=AssociationPagePublic)
def list_associations(
    ctx: CtxDep,
    _user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AssociationPagePublic:
    """The association log, newest first."""
    return views.associations(ctx, limit=limit, offset=offset)


@pages.get("/associations", response_class=HTMLResponse)
def associations_page(
    request: Request, ctx: CtxDep, user: CurrentUser, offset: Annotated[int, Query(ge=0)] = 0
) -> HTMLResponse:
    """The association log page."""
    page = views.associations(ctx, limit=100, offset=offset)
    return render(request, ctx, user, "associations.html", page=page, offset=offset, limit=100)
