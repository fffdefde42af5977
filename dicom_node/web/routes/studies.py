"""Studies: a search over what arrived, with the state of every job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from dicom_node.web import auditing, views
from dicom_node.web.deps import CtxDep, CurrentUser
from dicom_node.web.models import StudyDetailPublic, StudyPagePublic
from dicom_node.web.pages import render

__all__ = ["api", "pages"]

api = APIRouter(prefix="/api/studies", tags=["studies"])
pages = APIRouter(include_in_schema=False)

_DATE = r"^(\d{8})?$"

Text = Annotated[str, Query(max_length=64, description="Part of the accession number or AE.")]
Modality = Annotated[str, Query(max_length=16, description="A modality of the study.")]
CallingAe = Annotated[str, Query(max_length=16, description="The sender's AE title.")]
DateFrom = Annotated[str, Query(pattern=_DATE, description="Study Date from (YYYYMMDD).")]
DateTo = Annotated[str, Query(pattern=_DATE, description="Study Date to (YYYYMMDD).")]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0)]


@api.get("", response_model=StudyPagePublic)
def list_studies(
    request: Request,
    ctx: CtxDep,
    user: CurrentUser,
    q: Text = "",
    modality: Modality = "",
    calling_ae: CallingAe = "",
    date_from: DateFrom = "",
    date_to: DateTo = "",
    limit: Limit = 50,
    offset: Offset = 0,
) -> StudyPagePublic:
    """Studies matching the search, newest first."""
    page = views.studies(
        ctx,
        user,
        text=q,
        modality=modality,
        calling_ae=calling_ae,
        date_from=date_from,
        date_to=date_to,
        limit=limit,
        offset=offset,
    )
    auditing.studies_searched(ctx, request, user, page.total)
    return page


@api.get("/{study_uid}", response_model=StudyDetailPublic)
def get_study(
    request: Request, ctx: CtxDep, user: CurrentUser, study_uid: str
) -> StudyDetailPublic:
    """One study, its jobs, and why each series got each pipeline or not."""
    found = views.study(ctx, user, study_uid)
    if found is None:
        raise HTTPException(404, "no such study")
    auditing.study_accessed(ctx, request, user, study_uid, "study (api)")
    return found


@pages.get("/studies", response_class=HTMLResponse)
def studies_page(
    request: Request,
    ctx: CtxDep,
    user: CurrentUser,
    q: Text = "",
    modality: Modality = "",
    calling_ae: CallingAe = "",
    date_from: DateFrom = "",
    date_to: DateTo = "",
    offset: Offset = 0,
) -> HTMLResponse:
    """The study search page."""
    page = views.studies(
        ctx,
        user,
        text=q,
        modality=modality,
        calling_ae=calling_ae,
        date_from=date_from,
        date_to=date_to,
        limit=50,
        offset=offset,
    )
    auditing.studies_searched(ctx, request, user, page.total)
    search = {"q": q, "modality": modality, "calling_ae": calling_ae, "date_from": date_from,
              "date_to": date_to}  # fmt: skip
    return render(
        request, ctx, user, "studies.html", page=page, search=search, offset=offset, limit=50
    )


@pages.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(request: Request, ctx: CtxDep, user: CurrentUser, study_uid: str) -> HTMLResponse:
    """One study: its identity (masked for viewers) and its jobs."""
    found = views.study(ctx, user, study_uid)
    if found is None:
        raise HTTPException(404, "no such study")
    name = views.patient_name(ctx, user, study_uid)
    auditing.study_accessed(ctx, request, user, study_uid, "study page")
    return render(request, ctx, user, "study.html", study=found, patient_name=name)
