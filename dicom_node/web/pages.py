"""Server-rendered pages: the Jinja2 environment, its filters, and one render call."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from dicom_node import __version__
from dicom_node.settings import WebRole, WebUser
from dicom_node.web.auth import csrf_token
from dicom_node.web.context import WebContext
from dicom_node.web.formatting import human_duration, human_size, human_time

__all__ = ["flash", "make_templates", "render"]

_TEMPLATES = Path(__file__).parent / "templates"
_FLASH = "flash"


def make_templates() -> Jinja2Templates:
    """The page templates with the dashboard's filters (autoescaping on)."""
    templates = Jinja2Templates(directory=str(_TEMPLATES))
    templates.env.filters["when"] = human_time
    templates.env.filters["size"] = human_size
    templates.env.filters["duration"] = human_duration
    templates.env.globals["version"] = __version__
    return templates


def flash(request: Request, message: str) -> None:
    """Keep a one-line message for the next page the user sees."""
    request.session[_FLASH] = message


def render(
    request: Request,
    ctx: WebContext,
    user: WebUser | None,
    template: str,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """Render a page with the user, the CSRF token and any pending message."""
    message = request.session.pop(_FLASH, None)
    return ctx.templates.TemplateResponse(
        request,
        template,
        {
            "user": user,
            "is_admin": user is not None and user.role is WebRole.ADMIN,
            "csrf_token": csrf_token(request),
            "flash": message,
            "node_ae": ctx.settings.scp.ae_title,
            **context,
        },
        status_code=status_code,
        headers=headers,
    )
