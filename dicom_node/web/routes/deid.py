"""The de-identification map: a research UID back to the study it stands for (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse

from dicom_node.deidentify import DeidentifyError, UidMap, load_key
from dicom_node.web import auditing
from dicom_node.web.deps import AdminUser, CtxDep
from dicom_node.web.models import DeidLookupPublic
from dicom_node.web.pages import render

__all__ = ["api", "pages"]

api = APIRouter(prefix="/api/deid", tags=["deid"])
pages = APIRouter(include_in_schema=False)

_UID = r"^[0-9.]{1,64}$"


def _lookup(
    request: Request, ctx: CtxDep, user: AdminUser, destination: str, pseudonym: str
) -> DeidLookupPublic:
    dest = next((d for d in ctx.settings.export.destinations if d.name == destination), None)
    if dest is None or not dest.deidentify.enabled:
        raise HTTPException(404, "no research destination of that name")
    try:
        found = UidMap(ctx.state, dest.name, load_key(dest.deidentify.key_file)).original(pseudonym)
    except DeidentifyError as exc:
        raise HTTPException(503, exc.reason) from exc
    if found is None:
        raise HTTPException(404, "no such de-identified UID")
    original, tag = found
    auditing.mapping_read(ctx, request, user, tag, dest.name)
    return DeidLookupPublic(
        destination=dest.name, pseudonym=pseudonym, original=original, study_tag=tag
    )


@api.get("/{destination}/uids/{pseudonym}", response_model=DeidLookupPublic)
def lookup(
    request: Request,
    ctx: CtxDep,
    user: AdminUser,
    destination: str,
    pseudonym: Annotated[str, Path(pattern=_UID)],
) -> DeidLookupPublic:
    """The original UID behind a de-identified one (admins only; audited)."""
    return _lookup(request, ctx, user, destination, pseudonym)


@pages.get("/deid", response_class=HTMLResponse)
def lookup_page(
    request: Request,
    ctx: CtxDep,
    user: AdminUser,
    destination: Annotated[str, Query(max_length=64)] = "",
    uid: Annotated[str, Query(pattern=r"^([0-9.]{1,64})?$")] = "",
) -> HTMLResponse:
    """Resolve a research UID on the dashboard (admins only; audited)."""
    found, error = None, ""
    if destination and uid:
        try:
            found = _lookup(request, ctx, user, destination, uid)
        except HTTPException as exc:
            error = str(exc.detail)
    names = [d.name for d in ctx.settings.export.destinations if d.deidentify.enabled]
    return render(
        request, ctx, user, "deid.html", destinations=names, destination=destination, uid=uid,
        found=found, error=error,
    )  # fmt: skip
