"""The running configuration, with secrets hidden."""

from __future__ import annotations

from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from dicom_node.web import views
from dicom_node.web.deps import CtxDep, CurrentUser
from dicom_node.web.pages import render

__all__ = ["api", "pages"]

api = APIRouter(prefix="/api/config", tags=["config"])
pages = APIRouter(include_in_schema=False)


@api.get("")
def get_config(ctx: CtxDep, _user: CurrentUser) -> dict[str, Any]:
    """The configuration in effect; secrets and passwords in URLs are hidden."""
    return views.config_public(ctx)


@pages.get("/config", response_class=HTMLResponse)
def config_page(request: Request, ctx: CtxDep, user: CurrentUser) -> HTMLResponse:
    """The configuration page, as YAML."""
    text = yaml.safe_dump(views.config_public(ctx), sort_keys=False)
    pipelines = sorted(ctx.queues.items())
    return render(request, ctx, user, "config.html", config_yaml=text, queues=pipelines)
