"""Liveness of one dicom-node process, for a container's HEALTHCHECK or a probe.

Each role answers in its own way: ``serve`` answers C-ECHO on its port, ``web``
answers ``GET /health``, a ``worker`` answers a Celery ping. In a container the
role is the command the container runs (``/proc/1/cmdline``), so one image
carries one health check for all three.
"""

from __future__ import annotations

import re
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

from dicom_node.broker import make_producer
from dicom_node.doctor import own_receiver
from dicom_node.export import echo
from dicom_node.settings import Settings

__all__ = ["Role", "check_health", "role_of_container"]

#: What a dicom-node process does.
Role = Literal["serve", "web", "worker"]


def role_of_container(cmdline: Path = Path("/proc/1/cmdline")) -> Role | None:
    """The role of the command PID 1 runs (``dicom-node web serve`` is ``web``), or None."""
    try:
        words = cmdline.read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if "web" in words and "serve" in words:
        return "web"
    if "worker" in words:
        return "worker"
    if "serve" in words:
        return "serve"
    return None


def check_health(settings: Settings, role: Role, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether the local process of ``role`` answers, and what it said.

    Parameters
    ----------
    settings : Settings
        The node configuration (ports, TLS, broker).
    role : {"serve", "web", "worker"}
        Which process to ask.
    timeout_s : float
        How long to wait for the answer.

    Returns
    -------
    tuple[bool, str]
        Healthy or not, and a one-line reason.
    """
    if role == "serve":
        ok, reason = echo(settings.scp.ae_title, own_receiver(settings, timeout_s))
        return ok, reason or f"C-ECHO answered on port {settings.scp.port}"
    if role == "web":
        return _web_health(settings, timeout_s)
    return _worker_health(settings, timeout_s)


def _web_health(settings: Settings, timeout_s: float) -> tuple[bool, str]:
    web = settings.web
    host = "127.0.0.1" if web.host in ("0.0.0.0", "") else web.host
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if web.tls.enabled else "http"
    context = None
    if web.tls.enabled:
        # Loopback to our own server: its certificate names the public host, not this one.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{scheme}://{host}:{web.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as answer:
            return answer.status == 200, f"{url} answered HTTP {answer.status}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} does not answer ({getattr(exc, 'reason', exc)})"


def _worker_health(settings: Settings, timeout_s: float) -> tuple[bool, str]:
    app = make_producer(settings.broker)
    host = socket.gethostname()
    try:
        # Only this host's workers are asked, and the first answer ends the wait.
        replies = (
            app.control.ping(
                timeout=timeout_s, pattern=f".*@{re.escape(host)}$", matcher="pcre", limit=1
            )
            or []
        )
    except Exception as exc:  # kombu raises several types when the broker is away
        return False, f"the broker could not be asked ({type(exc).__name__})"
    finally:
        app.close()
    ours = sorted(name for reply in replies for name in reply if name.endswith(f"@{host}"))
    if ours:
        return True, f"{', '.join(ours)} answered the ping"
    return False, f"no worker on {host} answered the ping"
