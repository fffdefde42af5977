"""Retention: disk use by age, and what the next clean-up will free."""

from __future__ import annotations

import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from dicom_node.phi import study_tag
from dicom_node.retention import Retention
from dicom_node.state.schema import utcnow
from dicom_node.web.deps import CtxDep, CurrentUser
from dicom_node.web.models import RetentionCandidatePublic, RetentionPublic, UsageBucketPublic
from dicom_node.web.pages import render

__all__ = ["api", "pages"]

api = APIRouter(prefix="/api/retention", tags=["retention"])
pages = APIRouter(include_in_schema=False)


def _retention(ctx: CtxDep) -> RetentionPublic:
    rules = ctx.settings.retention
    retention = Retention(rules, ctx.spool, ctx.state)
    now = utcnow()
    status = retention.status()
    next_run = status.get("next_run")
    horizon = rules.interval_s
    if isinstance(next_run, str):
        moment = datetime.datetime.fromisoformat(next_run.removesuffix("Z"))
        horizon = max((moment - now).total_seconds(), 0.0)
    upcoming = retention.candidates(now, horizon) if rules.enabled else []
    return RetentionPublic(
        enabled=rules.enabled,
        interval_s=rules.interval_s,
        last_run=str(status["last_run"]) if "last_run" in status else None,
        next_run=next_run if isinstance(next_run, str) else None,
        usage=[
            UsageBucketPublic(
                label=b.label, instance_bytes=b.instance_bytes, result_bytes=b.result_bytes
            )
            for b in retention.usage(now)
        ],
        due_now_bytes=sum(c.bytes for c in upcoming if c.due_at <= now),
        next_cleanup_bytes=sum(c.bytes for c in upcoming),
        candidates=[
            RetentionCandidatePublic(
                kind=c.kind,
                study_tag=study_tag(c.study_uid),
                job_id=c.job_id,
                calling_ae=c.calling_ae,
                outcome=c.outcome,
                due_at=c.due_at.replace(tzinfo=datetime.UTC),
                bytes=c.bytes,
            )
            for c in upcoming[:200]
        ],
    )


@api.get("", response_model=RetentionPublic)
def get_retention(ctx: CtxDep, _user: CurrentUser) -> RetentionPublic:
    """Disk use by age and the next clean-up."""
    return _retention(ctx)


@pages.get("/retention", response_class=HTMLResponse)
def retention_page(request: Request, ctx: CtxDep, user: CurrentUser) -> HTMLResponse:
    """The retention page."""
    return render(request, ctx, user, "retention.html", retention=_retention(ctx))
