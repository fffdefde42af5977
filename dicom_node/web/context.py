"""Everything a request handler needs, built once per application."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.templating import Jinja2Templates

from dicom_node.audit import AuditLog
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.state.queries import StateQueries
from dicom_node.web.auth import Authenticator
from dicom_node.web.identity import PatientNames
from dicom_node.web.login_guard import LoginGuard
from dicom_node.web.probe import BrokerProbe
from dicom_node.web.sessions import SessionStore

__all__ = ["OverlayCache", "WebContext"]


class OverlayCache:
    """Rendered overlay PNGs by (job, SEG file version), least recently used dropped.

    Parameters
    ----------
    size : int
        Pictures to keep.
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> bytes | None:
        """A cached picture, or None."""
        with self._lock:
            png = self._items.get(key)
            if png is not None:
                self._items.move_to_end(key)
            return png

    def put(self, key: tuple[int, int], png: bytes) -> None:
        """Keep a picture."""
        with self._lock:
            self._items[key] = png
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@dataclass
class WebContext:
    """The dashboard's dependencies: settings, state DB, broker, spool and templates.

    Parameters
    ----------
    settings : Settings
        The node configuration.
    state : StateDB
        The state DB (the node's own when served by ``dicom-node serve``).
    spool : Spool
        The spool (the node's own when served by ``dicom-node serve``).
    queries : StateQueries
        Reads over ``state``.
    probe : BrokerProbe
        Queue depths and workers.
    queues : Mapping[str, list[str]]
        Queue name to the pipelines routed to it.
    templates : fastapi.templating.Jinja2Templates
        The page templates.
    audit : AuditLog
        The audit trail (:mod:`dicom_node.web.auditing` writes to it).
    owns_state : bool
        Whether closing the context closes ``state`` (it opened it).
    """

    settings: Settings
    state: StateDB
    spool: Spool
    queries: StateQueries
    probe: BrokerProbe
    queues: Mapping[str, list[str]]
    templates: Jinja2Templates
    audit: AuditLog
    owns_state: bool = False
    auth: Authenticator = field(init=False)
    sessions: SessionStore = field(init=False)
    logins: LoginGuard = field(init=False)
    names: PatientNames = field(default_factory=PatientNames)
    overlays: OverlayCache = field(default_factory=OverlayCache)

    def __post_init__(self) -> None:
        web = self.settings.web
        self.auth = Authenticator(web.users, web.login)
        self.sessions = SessionStore(
            self.state, max_age_s=web.session_max_age_s, idle_s=web.session_idle_timeout_s
        )
        self.logins = LoginGuard(self.auth, web.login, web.session_secret.get_secret_value())

    @property
    def spool_root(self) -> Path:
        """The spool folder."""
        return self.spool.root

    def spool_path(self, relative: str) -> Path:
        """A spool-relative path made absolute; refuses paths that leave the spool.

        Raises
        ------
        ValueError
            If the path points outside the spool.
        """
        root = self.spool_root
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise ValueError("path points outside the spool")
        return path

    def job_dir(self, job_id: int) -> Path:
        """The folder of a job's results (not created, unlike :meth:`Spool.job_dir`)."""
        return self.spool.jobs_dir / str(int(job_id))

    def close(self) -> None:
        """Close what this context opened."""
        self.probe.close()
        self.audit.close()
        if self.owns_state:
            self.state.close()
