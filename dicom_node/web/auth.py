"""Who may look and who may act: argon2 passwords, sessions and CSRF tokens.

Users and their argon2 password hashes live in the configuration
(``web.users``). A login stores the user's name and a fresh CSRF token in the
session, a cookie signed with ``web.session_secret`` (itsdangerous, through
Starlette's ``SessionMiddleware``), HttpOnly always and Secure over TLS. The
role is looked up in the configuration on every request, so removing a user
or demoting an admin takes effect at once.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from starlette.requests import HTTPConnection

from dicom_node.settings import WebRole, WebUser

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "Authenticator",
    "Forbidden",
    "NotAuthenticated",
    "TooManyAttempts",
    "csrf_token",
    "hash_password",
    "log_in",
    "log_out",
    "session_user_name",
]

#: Form field and header that carry the CSRF token of a POST.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

_SESSION_USER = "user"
_SESSION_CSRF = "csrf"
_SESSION_SINCE = "since"

_hasher = PasswordHasher()


class NotAuthenticated(Exception):
    """The request has no valid session."""


class Forbidden(Exception):
    """The user's role does not allow this."""


class TooManyAttempts(Exception):
    """Too many failed logins for one name; try again later."""


def hash_password(password: str) -> str:
    """Return the argon2id hash of a password, for ``web.users[].password_hash``.

    Parameters
    ----------
    password : str
        The password.

    Returns
    -------
    str
        A PHC string, ``$argon2id$v=19$...``.

    Raises
    ------
    ValueError
        If the password is empty.
    """
    if not password:
        raise ValueError("the password is empty")
    return _hasher.hash(password)


class Authenticator:
    """Checks passwords against the configured users, with a brake on guessing.

    Parameters
    ----------
    users : Iterable[WebUser]
        ``web.users``.
    max_failures : int
        Failed logins per name allowed within ``window_s``.
    window_s : float
        The window of the brake.
    """

    def __init__(
        self, users: Iterable[WebUser], max_failures: int = 5, window_s: float = 300
    ) -> None:
        self.users = {user.name: user for user in users}
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        # Unknown names cost one verification too, so timing does not tell which names exist.
        self._dummy_hash = _hasher.hash(secrets.token_urlsafe(16))

    def user(self, name: str | None) -> WebUser | None:
        """The configured user of that name, or None."""
        return self.users.get(name) if name else None

    def authenticate(self, name: str, password: str) -> WebUser | None:
        """Return the user whose name and password match, or None.

        Raises
        ------
        TooManyAttempts
            If the name failed ``max_failures`` times within ``window_s``.
        """
        now = time.monotonic()
        with self._lock:
            recent = self._failures.setdefault(name, deque())
            while recent and now - recent[0] > self.window_s:
                recent.popleft()
            if len(recent) >= self.max_failures:
                raise TooManyAttempts(name)
        user = self.users.get(name)
        ok: bool
        try:
            ok = _hasher.verify(user.password_hash if user else self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if ok and user is not None:
            with self._lock:
                self._failures.pop(name, None)
            return user
        with self._lock:
            self._failures.setdefault(name, deque()).append(now)
        return None


def csrf_token(conn: HTTPConnection) -> str:
    """The session's CSRF token, created on first use."""
    token = conn.session.get(_SESSION_CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        conn.session[_SESSION_CSRF] = token
    return token


def session_csrf(session: dict[str, object]) -> str | None:
    """The CSRF token a session holds, without creating one."""
    token = session.get(_SESSION_CSRF)
    return token if isinstance(token, str) and token else None


def session_user_name(conn: HTTPConnection) -> str | None:
    """The name of the logged-in user, or None."""
    name = conn.session.get(_SESSION_USER)
    return name if isinstance(name, str) else None


def log_in(conn: HTTPConnection, user: WebUser) -> None:
    """Start a new session for ``user``: nothing of the previous one survives."""
    conn.session.clear()
    conn.session[_SESSION_USER] = user.name
    conn.session[_SESSION_CSRF] = secrets.token_urlsafe(32)
    conn.session[_SESSION_SINCE] = int(time.time())


def log_out(conn: HTTPConnection) -> None:
    """End the session."""
    conn.session.clear()


def is_admin(user: WebUser) -> bool:
    """Whether the user may change things (retry, cancel)."""
    return user.role is WebRole.ADMIN
