"""Dashboard sessions kept on the server, so that ending one ends it everywhere.

A signed cookie alone cannot be taken back: a copy made before logout would
work until it expires. So a login creates a row in the state DB
(``web_sessions``) and the cookie carries only a random token naming it; every
request looks the row up. A session ends when:

- its user logs out (the row is deleted);
- an admin logs a user, or everyone, out everywhere (the dashboard's Sessions
  page, ``POST /api/session/revoke``, ``dicom-node web logout``);
- the user's password changes in the configuration (the row remembers a
  fingerprint of the password hash it was opened with);
- the user is removed from the configuration;
- it expires (``web.session_max_age_s`` after login) or stays unused for
  ``web.session_idle_timeout_s``.

The state DB is shared by every process of the node, so a session ended in one
(the CLI, another dashboard process) is ended in all at once. Rows are plain
SQLAlchemy, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, or_, select, update

from dicom_node.settings import WebUser
from dicom_node.state import StateDB
from dicom_node.state.schema import WebSession, utcnow

__all__ = ["SessionInfo", "SessionStore", "credential_of"]

#: How stale ``last_seen_at`` may get before a request writes it again: one
#: write a minute per session at most, never one per request.
_TOUCH_EVERY = datetime.timedelta(seconds=60)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def credential_of(user: WebUser) -> str:
    """Fingerprint of a user's password hash: it changes when the password changes.

    Parameters
    ----------
    user : WebUser
        A configured user.

    Returns
    -------
    str
        64 hex digits.
    """
    return _digest(user.password_hash)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """An open session as an admin sees it: no token, no hash of one."""

    user_name: str
    address: str
    created_at: datetime.datetime
    last_seen_at: datetime.datetime
    expires_at: datetime.datetime


class SessionStore:
    """Sessions in the state DB.

    Parameters
    ----------
    state : StateDB
        The node's state DB.
    max_age_s : float
        Lifetime of a session from its login.
    idle_s : float
        A session unused for this long ends.
    """

    def __init__(self, state: StateDB, *, max_age_s: float, idle_s: float) -> None:
        self.state = state
        self.max_age = datetime.timedelta(seconds=max_age_s)
        self.idle = datetime.timedelta(seconds=idle_s)

    def start(self, user: WebUser, address: str) -> str:
        """Open a session for ``user`` and return the token its cookie carries.

        Parameters
        ----------
        user : WebUser
            Who logged in.
        address : str
            The client's address, shown to admins.

        Returns
        -------
        str
            A random token (256 bits).
        """
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self.state.session() as s:
            s.add(
                WebSession(
                    token_hash=_digest(token),
                    user_name=user.name,
                    credential=credential_of(user),
                    address=address[:64],
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + self.max_age,
                )
            )
        return token

    def user(self, token: str | None, users: Mapping[str, WebUser]) -> WebUser | None:
        """The user of a live session, or None; a session found dead is deleted.

        Parameters
        ----------
        token : str or None
            The token from the cookie.
        users : Mapping[str, WebUser]
            The configured users by name.

        Returns
        -------
        WebUser or None
            The user, when the session exists, has not expired or idled out, and
            its user is still configured with the password it logged in with.
        """
        if not token:
            return None
        digest = _digest(token)
        with self.state.read_engine.connect() as conn:
            row = conn.execute(
                select(
                    WebSession.user_name,
                    WebSession.credential,
                    WebSession.last_seen_at,
                    WebSession.expires_at,
                ).where(WebSession.token_hash == digest)
            ).first()
        if row is None:
            return None
        now = utcnow()
        user = users.get(row.user_name)
        alive = (
            user is not None
            and secrets.compare_digest(row.credential, credential_of(user))
            and now < row.expires_at
            and now - row.last_seen_at < self.idle
        )
        if not alive:
            self._delete(WebSession.token_hash == digest)
            return None
        if now - row.last_seen_at >= _TOUCH_EVERY:
            with self.state.session() as s:
                s.execute(
                    update(WebSession)
                    .where(WebSession.token_hash == digest)
                    .values(last_seen_at=now)
                )
        return user

    def end(self, token: str | None) -> None:
        """End one session (logout); nothing happens for an unknown token."""
        if token:
            self._delete(WebSession.token_hash == _digest(token))

    def end_all(self, user_name: str | None = None) -> int:
        """Log a user, or everyone, out everywhere.

        Parameters
        ----------
        user_name : str or None
            The user whose sessions end; None ends every session.

        Returns
        -------
        int
            How many sessions ended.
        """
        if user_name is None:
            return self._delete(WebSession.token_hash.is_not(None))
        return self._delete(WebSession.user_name == user_name)

    def prune(self, users: Mapping[str, WebUser]) -> int:
        """Delete sessions that can no longer be used: expired, idle, or of a changed user.

        Run at start, so a user removed from the configuration, or given a new
        password, finds every old session gone even if it is added back.

        Parameters
        ----------
        users : Mapping[str, WebUser]
            The configured users by name.

        Returns
        -------
        int
            How many sessions were deleted.
        """
        now = utcnow()
        with self.state.read_engine.connect() as conn:
            rows = conn.execute(
                select(WebSession.token_hash, WebSession.user_name, WebSession.credential)
            ).all()
        stale = [
            digest
            for digest, name, credential in rows
            if name not in users or credential != credential_of(users[name])
        ]
        condition = or_(
            WebSession.expires_at <= now,
            WebSession.last_seen_at <= now - self.idle,
            WebSession.token_hash.in_(stale),
        )
        return self._delete(condition)

    def active(self) -> list[SessionInfo]:
        """Open sessions, most recently used first."""
        with self.state.read_engine.connect() as conn:
            rows = conn.execute(
                select(
                    WebSession.user_name,
                    WebSession.address,
                    WebSession.created_at,
                    WebSession.last_seen_at,
                    WebSession.expires_at,
                )
                .where(WebSession.expires_at > utcnow())
                .order_by(WebSession.last_seen_at.desc())
            ).all()
        return [SessionInfo(*row) for row in rows]

    def _delete(self, condition: ColumnElement[bool]) -> int:
        with self.state.session() as s:
            result = s.execute(delete(WebSession).where(condition))
            return int(getattr(result, "rowcount", 0))
