"""Jobs: the job page (timeline, log, outputs, picture) and an admin's retry and cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from dicom_node.audit import EventId
from dicom_node.state.schema import JobState
from dicom_node.web import actions, auditing, views
from dicom_node.web.deps import AdminUser, CtxDep, CurrentUser
from dicom_node.web.models import JobDetailPublic, JobPagePublic
from dicom_node.web.overlay import OverlayError
from dicom_node.web.pages import flash, render

__all__ = ["api", "pages"]

api = APIRouter(prefix="/api/jobs", tags=["jobs"])
pages = APIRouter(include_in_schema=False)

JobId = Annotated[int, Path(ge=1, le=2**62)]


@api.get("", response_model=JobPagePublic)
def list_jobs(
    ctx: CtxDep,
    _user: CurrentUser,
    state: Annotated[list[JobState] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPagePublic:
    """Jobs, most recently changed first; ``state`` may repeat."""
    total, rows = ctx.queries.jobs(states=state or [], limit=limit, offset=offset)
    return JobPagePublic(total=total, items=views.jobs_public(ctx, rows))


@api.get("/{job_id}", response_model=JobDetailPublic)
def get_job(request: Request, ctx: CtxDep, user: CurrentUser, job_id: JobId) -> JobDetailPublic:
    """A job: its timeline, log lines, outputs and exports."""
    found = views.job_detail(ctx, user, job_id)
    if found is None:
        raise HTTPException(404, "no such job")
    auditing.study_accessed(ctx, request, user, found.study_uid, f"job {job_id} (api)")
    return found


@api.get(
    "/{job_id}/overlay.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "No picture"}},
)
def get_overlay(request: Request, ctx: CtxDep, user: CurrentUser, job_id: JobId) -> Response:
    """The segmentation drawn over a few source slices (PNG)."""
    try:
        png, study_uid = views.overlay_png(ctx, job_id)
    except OverlayError as exc:
        raise HTTPException(404, exc.reason) from exc
    auditing.study_accessed(
        ctx,
        request,
        user,
        study_uid,
        f"picture of job {job_id}",
        event_id=EventId.INSTANCES_ACCESSED,
    )
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


def _act(request: Request, ctx: CtxDep, user: AdminUser, job_id: int, what: str) -> JobDetailPublic:
    try:
        _do(request, ctx, user, job_id, what)
    except actions.ActionRefused as exc:
        raise HTTPException(409, exc.reason) from exc
    found = views.job_detail(ctx, user, job_id)
    if found is None:
        raise HTTPException(404, "no such job")
    return found


def _do(request: Request, ctx: CtxDep, user: AdminUser, job_id: int, what: str) -> str:
    """Retry or cancel, and put the attempt in the audit trail whatever its outcome."""
    job = ctx.state.job(job_id)
    studies = [job.study_uid] if job is not None else []
    try:
        outcome = (
            actions.retry(ctx, user, job_id)
            if what == "retry"
            else actions.cancel(ctx, user, job_id)
        )
    except actions.ActionRefused as exc:
        auditing.job_action(
            ctx, request, user, job_id=job_id, study_uids=studies, action=what, ok=False,
            detail=exc.reason,
        )  # fmt: skip
        raise
    auditing.job_action(
        ctx, request, user, job_id=job_id, study_uids=studies, action=what, ok=True,
        detail=outcome,
    )  # fmt: skip
    return outcome


@api.post("/{job_id}/retry", response_model=JobDetailPublic)
def retry_job(request: Request, ctx: CtxDep, user: AdminUser, job_id: JobId) -> JobDetailPublic:
    """Retry a FAILED or SKIPPED job (admins only)."""
    return _act(request, ctx, user, job_id, "retry")


@api.post("/{job_id}/cancel", response_model=JobDetailPublic)
def cancel_job(request: Request, ctx: CtxDep, user: AdminUser, job_id: JobId) -> JobDetailPublic:
    """Cancel a job that is queued, running, exporting or failed (admins only)."""
    return _act(request, ctx, user, job_id, "cancel")


@pages.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, ctx: CtxDep, user: CurrentUser, job_id: JobId) -> HTMLResponse:
    """The job page."""
    found = views.job_detail(ctx, user, job_id)
    if found is None:
        raise HTTPException(404, "no such job")
    study = views.study(ctx, user, found.study_uid)
    name = views.patient_name(ctx, user, found.study_uid)
    auditing.study_accessed(ctx, request, user, found.study_uid, f"job {job_id} page")
    return render(request, ctx, user, "job.html", job=found, study=study, patient_name=name)


def _page_action(
    request: Request, ctx: CtxDep, user: AdminUser, job_id: int, what: str
) -> RedirectResponse:
    try:
        outcome = _do(request, ctx, user, job_id, what)
        flash(request, f"job {job_id}: {outcome}")
    except actions.ActionRefused as exc:
        flash(request, f"job {job_id}: {exc.reason}")
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@pages.post("/jobs/{job_id}/retry")
def retry_form(request: Request, ctx: CtxDep, user: AdminUser, job_id: JobId) -> RedirectResponse:
    """The retry button."""
    return _page_action(request, ctx, user, job_id, "retry")


@pages.post("/jobs/{job_id}/cancel")
def cancel_form(request: Request, ctx: CtxDep, user: AdminUser, job_id: JobId) -> RedirectResponse:
    """The cancel button."""
    return _page_action(request, ctx, user, job_id, "cancel")
