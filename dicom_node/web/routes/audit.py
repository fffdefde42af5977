"""The audit trail, for admins only: who read which study, who changed what, what went where."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from dicom_node.audit import read_records
from dicom_node.web import auditing
from dicom_node.web.deps import AdminUser, CtxDep
from dicom_node.web.models import AuditPagePublic, AuditRecordPublic
from dicom_node.web.pages import render

__all__ = ["api", "pages"]

api = APIRouter(prefix="/api/audit", tags=["audit"])
pages = APIRouter(include_in_schema=False)

User = Annotated[str, Query(max_length=64, description="Only this user's records.")]
Tag = Annotated[str, Query(max_length=16, description="Only records about this study tag.")]
Event = Annotated[str, Query(max_length=64, description="Only this event, e.g. Login.")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]


def _page(
    request: Request, ctx: CtxDep, user: AdminUser, who: str, tag: str, event: str, limit: int,
    offset: int,
) -> AuditPagePublic:  # fmt: skip
    auditing.audit_log_read(ctx, request, user)
    total, records = read_records(
        ctx.audit.path, user=who, tag=tag, event=event, limit=limit, offset=offset
    )
    return AuditPagePublic(
        total=total,
        items=[
            AuditRecordPublic(
                seq=r.seq,
                time=r.time,
                event=r.event,
                action=r.action,
                outcome=r.outcome,
                user=r.user,
                study_tags=list(r.study_tags),
                summary=r.summary,
                record=r.raw,
            )
            for r in records
        ],
    )


@api.get("", response_model=AuditPagePublic)
def list_audit(
    request: Request,
    ctx: CtxDep,
    user: AdminUser,
    who: User = "",
    tag: Tag = "",
    event: Event = "",
    limit: Limit = 100,
    offset: Offset = 0,
) -> AuditPagePublic:
    """Audit records, newest first (admins only)."""
    return _page(request, ctx, user, who, tag, event, limit, offset)


@pages.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    ctx: CtxDep,
    user: AdminUser,
    who: User = "",
    tag: Tag = "",
    event: Event = "",
    offset: Offset = 0,
) -> HTMLResponse:
    """The audit page (admins only)."""
    page = _page(request, ctx, user, who, tag, event, 100, offset)
    search = {"who": who, "tag": tag, "event": event}
    return render(
        request, ctx, user, "audit.html", page=page, search=search, offset=offset, limit=100
    )
