"""The running node: receiver, supervisor and (optionally) dashboard over one spool and state DB."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from dicom_node.audit import open_audit, record_start, record_stop
from dicom_node.broker import make_producer
from dicom_node.notify import Notifier
from dicom_node.retention import Retention
from dicom_node.scp import Receiver, ReceiverHandle
from dicom_node.scp.pool import ReceiverPool
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.supervisor import Supervisor
from pipelines.spec import load_pipeline_specs

if TYPE_CHECKING:
    from dicom_node.web.process import WebProcess
    from dicom_node.web.server import WebServerHandle

__all__ = ["Node"]

logger = logging.getLogger(__name__)


class Node:
    """Everything ``dicom-node serve`` runs, in one object.

    Parameters
    ----------
    settings : Settings
        The validated configuration.

    Raises
    ------
    pipelines.errors.PipelineConfigError
        If a pipeline definition is invalid.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool_dir, settings.scp.min_free_bytes)
        self.state = StateDB(settings.state_db_url, upgrade=settings.database_auto_upgrade)
        self.pipelines = load_pipeline_specs(settings.pipelines_dir)
        longest = max((p.time_limit_s for p in self.pipelines.values()), default=900)
        self.producer = make_producer(settings.broker, longest)
        self.receiver = Receiver(settings.scp, settings.stability, self.spool, self.state)
        self.audit = open_audit(settings)
        self.supervisor = Supervisor(
            settings, self.spool, self.state, self.pipelines, self.producer, audit=self.audit
        )
        self.notifier = Notifier(settings.notify, settings.scp.ae_title, self.state, self.pipelines)
        if self.notifier.enabled:
            # Notifications commit with the state change that causes them (an outbox).
            self.state.add_job_listener(self.notifier.on_job_state)
            self.supervisor.add_loop("notify", (self.notifier.send_due,))
        self.retention = Retention(settings.retention, self.spool, self.state)
        if settings.retention.enabled:
            self.supervisor.add_loop("retention", (self._retention_pass,))
        self._next_retention = 0.0
        self._handle: ReceiverHandle | None = None
        self._pool: ReceiverPool | None = None
        #: The dashboard, when ``web.enabled``: a child process (``web.mode: process``)
        #: or a server in a thread of this process (``thread``); set by :meth:`start`.
        self.web: WebProcess | WebServerHandle | None = None
        self._web_process: WebProcess | None = None

    def start(self) -> ReceiverHandle:
        """Start receiving and supervising; return the receiver's handle."""
        logger.info(
            "starting: spool=%s pipelines=%s", self.spool.root, ", ".join(self.pipelines) or "-"
        )
        record_start(self.audit, self.settings, "serve")
        stale = self.spool.remove_stale_temporaries()
        if stale:
            logger.info("removed %d partial writes left by a previous run", stale)
        processes = self.settings.scp.processes
        self._handle = self.receiver.start(reuse_port=processes > 1)
        if processes > 1:
            self._pool = ReceiverPool(self.settings, self._handle.port)
            self._pool.start()
        self.supervisor.start()
        if self.settings.web.enabled:
            try:
                self._start_web()
            except Exception:
                self.stop()  # a dashboard that cannot start (port in use) stops the node
                raise
        return self._handle

    def _start_web(self) -> None:
        if self.settings.web.mode == "process":
            from dicom_node.web.process import WebProcess

            self._web_process = WebProcess(self.settings)
            self._web_process.start()
            self.web = self._web_process
            return
        from dicom_node.web import create_app, start_web_server  # FastAPI only when served

        app = create_app(
            self.settings, state=self.state, spool=self.spool, pipelines=self.pipelines
        )
        self.web = start_web_server(app, self.settings.web)

    def _retention_pass(self) -> None:
        """Run the clean-up every ``retention.interval_s`` (the loop itself polls faster)."""
        now = time.monotonic()
        if now < self._next_retention:
            return
        self._next_retention = now + self.settings.retention.interval_s
        self.retention.run()

    def check(self) -> None:
        """Restart extra receiver processes and the dashboard process that died.

        Call it periodically.
        """
        if self._pool is not None:
            self._pool.check()
        if self._web_process is not None:
            self._web_process.check()

    def stop(self) -> None:
        """Stop receiving first, then let the supervisor finish its pass."""
        if self._pool is not None:
            self._pool.stop()
        if self._handle is not None:
            self._handle.stop()
        self.supervisor.stop()
        if self.web is not None:
            self.web.stop()
        record_stop(self.audit, "serve")
        self.audit.close()
        self.state.close()
