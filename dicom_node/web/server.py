"""Serve the dashboard with uvicorn in a thread of ``dicom-node serve``.

The socket is bound here, before the thread starts, so the port is known at
once (``web.port: 0`` picks a free one, as the tests do) and a port in use
fails ``serve`` at start rather than in a background thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from dicom_node.settings import WebSettings

__all__ = ["WebServerHandle", "start_web_server"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebServerHandle:
    """A running dashboard."""

    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int
    scheme: str

    @property
    def url(self) -> str:
        """The dashboard's base URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the requests under way and stop."""
        self.server.should_exit = True
        self.thread.join(timeout=timeout_s)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=timeout_s)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = f"dashboard cannot listen on {host}:{port}: {exc.strerror}"
        raise OSError(exc.errno, reason) from exc
    sock.set_inheritable(True)
    return sock


def start_web_server(
    app: FastAPI, settings: WebSettings, timeout_s: float = 15.0
) -> WebServerHandle:
    """Start serving ``app`` on ``settings.host``/``settings.port`` in a daemon thread.

    Parameters
    ----------
    app : fastapi.FastAPI
        The application from :func:`dicom_node.web.app.create_app`.
    settings : WebSettings
        Address, port and TLS files.
    timeout_s : float
        How long to wait for the server to accept connections.

    Returns
    -------
    WebServerHandle
        The running server; ``port`` is the bound port.

    Raises
    ------
    OSError
        If the address cannot be bound (a port in use).
    RuntimeError
        If the server does not start within ``timeout_s``.
    """
    sock = _bind(settings.host, settings.port)
    port = int(sock.getsockname()[1])
    tls = settings.tls
    config = uvicorn.Config(
        app,
        log_config=None,  # the node's logging; uvicorn's access log is replaced (no PHI)
        access_log=False,
        server_header=False,
        lifespan="on",
        ssl_certfile=str(tls.certificate) if tls.certificate else None,
        ssl_keyfile=str(tls.private_key) if tls.private_key else None,
        timeout_graceful_shutdown=5,
        ws="none",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="web", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the dashboard did not start; see the log")
        time.sleep(0.02)
    handle = WebServerHandle(
        server, thread, settings.host, port, "https" if tls.enabled else "http"
    )
    logger.info("dashboard at %s", handle.url)
    return handle
