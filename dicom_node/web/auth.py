"""Who may look and who may act: argon2 passwords, sessions and CSRF tokens.

Users and their argon2 password hashes live in the configuration
(``web.users``). A login opens a server-side session
(:mod:`dicom_node.web.sessions`) whose random token, with a fresh CSRF token,
goes into a cookie signed with ``web.session_secret`` (itsdangerous, through
Starlette's ``SessionMiddleware``), HttpOnly always and Secure over TLS. The
role is looked up in the configuration on every request, so removing a user
or demoting an admin takes effect at once.

A password check runs argon2 with 64 MiB of memory, so
:class:`Authenticator` runs at most ``web.login.max_concurrent_checks`` at
once; a login that finds none free within ``web.login.check_wait_s`` is turned
away (:class:`LoginBusy`, 503) instead of queueing. A name that is no user
costs no argon2 at all, but takes as long as a real check: the wait is drawn
from the durations of recent real checks, inside a check slot, so neither the
time nor a 503 tells which names exist. Guessing is slowed by
:mod:`dicom_node.web.login_guard`.
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

from dicom_node.settings import LoginSettings, WebRole, WebUser
from dicom_node.web.sessions import SessionStore

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "Authenticator",
    "Forbidden",
    "LoginBusy",
    "NotAuthenticated",
    "csrf_token",
    "hash_password",
    "log_in",
    "log_out",
    "session_token",
]

#: Form field and header that carry the CSRF token of a POST.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

_SESSION_TOKEN = "sid"
_SESSION_CSRF = "csrf"

_hasher = PasswordHasher()


class NotAuthenticated(Exception):
    """The request has no valid session."""


class Forbidden(Exception):
    """The user's role does not allow this."""


class LoginBusy(Exception):
    """Every password check slot stayed taken; try again in a moment."""


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
    """Checks passwords against the configured users, a bounded number at a time.

    Parameters
    ----------
    users : Iterable[WebUser]
        ``web.users``.
    settings : LoginSettings
        ``web.login``: how many checks at once, and how long to wait for one.
    """

    def __init__(self, users: Iterable[WebUser], settings: LoginSettings) -> None:
        self.users = {user.name: user for user in users}
        self.settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_concurrent_checks)
        #: Seconds recent real checks took: a name that is no user waits as long.
        self._durations: deque[float] = deque(maxlen=64)
        self._lock = threading.Lock()

    def user(self, name: str | None) -> WebUser | None:
        """The configured user of that name, or None."""
        return self.users.get(name) if name else None

    def check(self, name: str, password: str) -> WebUser | None:
        """Return the user whose name and password match, or None.

        Parameters
        ----------
        name : str
            The name typed.
        password : str
            The password typed.

        Returns
        -------
        WebUser or None
            The user, or None for a wrong password or a name that is no user.

        Raises
        ------
        LoginBusy
            If no check slot came free within ``check_wait_s``.
        """
        if not self._slots.acquire(timeout=self.settings.check_wait_s):
            raise LoginBusy()
        try:
            user = self.users.get(name)
            if user is None:
                self._decoy()
                return None
            return user if self._verify(user.password_hash, password) else None
        finally:
            self._slots.release()

    def _verify(self, password_hash: str, password: str) -> bool:
        started = time.perf_counter()
        ok: bool
        try:
            ok = _hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        with self._lock:
            self._durations.append(time.perf_counter() - started)
        return ok

    def _decoy(self) -> None:
        """Take as long as a real check: one of the recent ones, or one real check if none yet."""
        with self._lock:
            seconds = secrets.choice(self._durations) if self._durations else None
        if seconds is not None:
            time.sleep(seconds)
            return
        # The first time, a real check (against a real hash, so with its cost
        # parameters) both takes the time and measures it for the next ones.
        reference = next(iter(self.users.values()), None)
        self._verify(
            reference.password_hash if reference else _hasher.hash(secrets.token_urlsafe(16)),
            secrets.token_urlsafe(16),
        )


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


def session_token(conn: HTTPConnection) -> str | None:
    """The token of the server-side session the cookie names, or None."""
    token = conn.session.get(_SESSION_TOKEN)
    return token if isinstance(token, str) and token else None


def log_in(conn: HTTPConnection, user: WebUser, sessions: SessionStore) -> None:
    """Start a new session for ``user``: nothing of the previous one survives.

    Parameters
    ----------
    conn : starlette.requests.HTTPConnection
        The request whose cookie will carry the session.
    user : WebUser
        Who logged in.
    sessions : SessionStore
        Where the session is kept; a previous session of this cookie is ended.
    """
    sessions.end(session_token(conn))
    conn.session.clear()
    address = conn.client.host if conn.client else ""
    conn.session[_SESSION_TOKEN] = sessions.start(user, address)
    conn.session[_SESSION_CSRF] = secrets.token_urlsafe(32)


def log_out(conn: HTTPConnection, sessions: SessionStore) -> None:
    """End the session on the server, so that no copy of the cookie works any more."""
    sessions.end(session_token(conn))
    conn.session.clear()


def is_admin(user: WebUser) -> bool:
    """Whether the user may change things (retry, cancel)."""
    return user.role is WebRole.ADMIN
