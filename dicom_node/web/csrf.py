"""CSRF protection for every request that can change something.

A pure ASGI middleware, so no route can forget it: every method but GET, HEAD
and OPTIONS must carry the session's CSRF token, in the ``X-CSRF-Token``
header (the API, ``dicom-node status``) or in the ``csrf_token`` field of an
URL-encoded form (the pages). The form body is read here and replayed to the
route unchanged. It sits inside the session middleware, which decodes the
cookie first.
"""

from __future__ import annotations

import json
import secrets
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicom_node.web.auth import CSRF_FIELD, CSRF_HEADER, session_csrf

__all__ = ["CsrfMiddleware"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Forms here are a token and a button; anything bigger is not one of ours.
_MAX_FORM_BYTES = 64 * 1024


class CsrfMiddleware:
    """Refuse unsafe requests whose CSRF token does not match the session's (403).

    Parameters
    ----------
    app : starlette.types.ASGIApp
        The application inside.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the token of an unsafe request, then pass the request on."""
        if scope["type"] != "http" or scope["method"] in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        expected = session_csrf(scope.get("session") or {})
        headers = Headers(scope=scope)
        supplied = headers.get(CSRF_HEADER)
        replay: list[Message] = []
        if supplied is None and headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            body = bytearray()
            while True:
                message = await receive()
                replay.append(message)
                if message["type"] != "http.request":
                    break
                body += message.get("body", b"")
                if len(body) > _MAX_FORM_BYTES:
                    await _refuse(send, 413, "form too large")
                    return
                if not message.get("more_body", False):
                    break
            values = parse_qs(body.decode("latin-1"), max_num_fields=32).get(CSRF_FIELD)
            supplied = values[0] if values else None
        if not expected or not supplied or not secrets.compare_digest(expected, supplied):
            await _refuse(send, 403, "CSRF token missing or invalid")
            return

        async def replayed() -> Message:
            if replay:
                return replay.pop(0)
            return await receive()

        await self.app(scope, replayed, send)


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
