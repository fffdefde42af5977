"""Request dependencies as ``Annotated`` aliases: the context, the user, the admin.

Authorisation is a chain: :func:`get_current_user` (a live server-side
session of a configured user, else :class:`NotAuthenticated`) → :func:`get_admin_user` (an
admin, else :class:`Forbidden`). The application turns the first into a
redirect to the login page (pages) or 401 (API), the second into 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from dicom_node.settings import WebRole, WebUser
from dicom_node.web.auth import Forbidden, NotAuthenticated, session_token
from dicom_node.web.context import WebContext

__all__ = [
    "AdminUser",
    "CtxDep",
    "CurrentUser",
    "get_admin_user",
    "get_context",
    "get_current_user",
]


def get_context(request: Request) -> WebContext:
    """The application's :class:`WebContext`."""
    ctx: WebContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[WebContext, Depends(get_context)]


def get_current_user(request: Request, ctx: CtxDep) -> WebUser:
    """The logged-in user.

    Raises
    ------
    NotAuthenticated
        If the cookie names no live server-side session of a configured user.
    """
    user = ctx.sessions.user(session_token(request), ctx.auth.users)
    if user is None:
        raise NotAuthenticated()
    return user


CurrentUser = Annotated[WebUser, Depends(get_current_user)]


def get_admin_user(user: CurrentUser) -> WebUser:
    """The logged-in user, who must be an admin.

    Raises
    ------
    Forbidden
        If the user is a viewer.
    """
    if user.role is not WebRole.ADMIN:
        raise Forbidden()
    return user


AdminUser = Annotated[WebUser, Depends(get_admin_user)]
