"""The dashboard in a process of its own: ``dicom-node web serve``, or a child of ``serve``.

The web server must not share a failure fate with the DICOM receiver: a login
runs argon2 with 64 MiB, a page renders an overlay with Pillow, and a bug or a
flood there must not take the receiver's memory or its process down with it.
So the dashboard runs in its own process: ``dicom-node web serve`` (compose,
Kubernetes, systemd), or, when ``serve`` runs it (``web.enabled``,
``web.mode: process``), a child that ``serve`` restarts when it dies. It opens
its own connections to the state DB and the broker; it needs the spool for
result overlays and the readiness probe.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from dicom_node.logs import setup_logging
from dicom_node.settings import Settings
from dicom_node.web.server import WebServerHandle

__all__ = ["WebProcess", "run_web"]

logger = logging.getLogger(__name__)


def run_web(
    settings: Settings, stop: threading.Event, on_started: Callable[[WebServerHandle], None]
) -> None:
    """Serve the dashboard in this process until ``stop`` is set.

    Parameters
    ----------
    settings : Settings
        The node configuration; ``web`` says where and how.
    stop : threading.Event
        Set it (from a signal handler) to finish the requests under way and stop.
    on_started : Callable[[WebServerHandle], None]
        Called once the server accepts connections (the bound port is known).
    """
    from dicom_node.web.app import create_app  # FastAPI only where the dashboard runs
    from dicom_node.web.server import start_web_server

    app = create_app(settings)
    handle = start_web_server(app, settings.web)
    try:
        on_started(handle)
        while not stop.wait(1.0):
            if not handle.thread.is_alive():
                logger.error("the dashboard's server stopped; exiting")
                break
    finally:
        handle.stop()


def _watch_parent(parent: int, stop: threading.Event) -> None:
    # A parent killed with SIGKILL cannot stop us; orphaned, we would keep its port.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            logger.warning("serve (process %d) is gone; the dashboard stops", parent)
            stop.set()


def _child_main(settings: Settings, port_pipe: Connection, parent: int) -> None:
    """Entry point of the dashboard child of ``serve`` (spawned: a fresh interpreter)."""
    setup_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches serve, which stops us
    threading.Thread(target=_watch_parent, args=(parent, stop), daemon=True).start()

    def _started(handle: WebServerHandle) -> None:
        port_pipe.send(handle.port)
        port_pipe.close()

    run_web(settings, stop, _started)


class WebProcess:
    """The dashboard as a child process of ``serve``, restarted when it dies.

    Parameters
    ----------
    settings : Settings
        The node configuration.
    start_timeout_s : float
        How long the child may take to accept connections.
    """

    def __init__(self, settings: Settings, start_timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.start_timeout_s = start_timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._wanted = False
        #: The port bound by the first child; restarts bind the same one.
        self.port: int | None = None

    @property
    def url(self) -> str:
        """The dashboard's base URL."""
        host = self.settings.web.host
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.settings.web.tls.enabled else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The child's process ID, while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child and wait until it serves.

        Raises
        ------
        RuntimeError
            If it exits or does not answer within ``start_timeout_s`` (a port in
            use, a state DB that cannot be opened); its log says why.
        """
        self._wanted = True
        self._spawn()

    def _spawn(self) -> None:
        web = self.settings.web
        if self.port is not None:
            web = web.model_copy(update={"port": self.port})
        settings = self.settings.model_copy(update={"web": web})
        receive, send = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_child_main,
            args=(settings, send, os.getpid()),
            name="dicom-node-web",
            daemon=True,
        )
        proc.start()
        send.close()
        try:
            if not receive.poll(self.start_timeout_s):
                raise RuntimeError("timed out")
            port = int(receive.recv())
        except (EOFError, OSError, RuntimeError) as exc:
            _terminate(proc)
            raise RuntimeError("the dashboard process did not start; see the log") from exc
        finally:
            receive.close()
        self._proc, self.port = proc, port
        logger.info("dashboard process %d at %s", proc.pid, self.url)

    def check(self) -> None:
        """Restart the child if it died; call it periodically."""
        if not self._wanted or (self._proc is not None and self._proc.is_alive()):
            return
        if self._proc is not None:
            logger.error(
                "dashboard process %s exited (%s); restarting", self._proc.pid, self._proc.exitcode
            )
            self._proc = None
        try:
            self._spawn()
        except RuntimeError:
            logger.exception("dashboard process did not restart; trying again shortly")

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL) and wait for it."""
        self._wanted = False
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)


def _terminate(proc: BaseProcess, timeout_s: float = 15.0) -> None:
    proc.terminate()
    proc.join(timeout=timeout_s)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=timeout_s)
