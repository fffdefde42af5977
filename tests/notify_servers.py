"""Real receivers for notification tests: an HTTP server and an SMTP server (aiosmtpd)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

__all__ = ["Hook", "Mailbox", "run_plain_smtp", "run_smtp", "run_webhook_receiver"]


@dataclass
class Hook:
    """What a webhook receiver got: (headers by lower-case name, raw body) per request."""

    port: int
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@contextmanager
def run_webhook_receiver(port: int = 0) -> Iterator[Hook]:
    """An HTTP server on loopback that answers 204 to every POST and keeps it."""
    hook = Hook(port)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hook.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    hook.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Mailbox:
    """Messages an SMTP server accepted, and the logins it saw."""

    port: int
    messages: list[Message] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        self.box.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@contextmanager
def run_plain_smtp(port: int) -> Iterator[Mailbox]:
    """An SMTP server without TLS or login, on loopback (aiosmtpd)."""
    box = Mailbox(port)
    controller = Controller(_Handler(box), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@contextmanager
def run_smtp(
    port: int, certificate: Path, key: Path, user: str, password: str
) -> Iterator[Mailbox]:
    """An SMTP server that requires STARTTLS and a login (aiosmtpd, a real server)."""
    box = Mailbox(port)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate), str(key))

    def authenticate(_server: Any, _session: Any, _envelope: Any, mechanism: str,
                     data: Any) -> AuthResult:  # fmt: skip
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            user.encode(),
            password.encode(),
        )
        if ok:
            box.logins.append(f"{mechanism}:{user}")
        return AuthResult(success=ok)

    controller = Controller(
        _Handler(box),
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
