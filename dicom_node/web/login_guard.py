"""Slowing password guessing without locking the real user out, and the login audit trail.

Locking an account after a few failures lets anyone lock any user out. Here
failures only make the next attempt wait, and the wait grows: after
``web.login.free_failures`` failures for one name (``free_failures_per_source``
from one address, which a whole ward may share behind one NAT), each further
attempt must wait ``first_delay_s``, doubled with every failure, up to
``max_delay_s``. An attempt that comes too early is answered 429 with
``Retry-After`` at once, without a password check. Failures older than
``forget_after_s`` stop counting.

A browser that has logged in as a user gets a *device cookie* (signed with
``web.session_secret``, naming the users it logged in as; OWASP's "device
cookies"). Its logins as those users skip the name's and the address's waits
and have a brake of their own, so an attacker hammering a name from elsewhere
does not keep the real user, at their usual browser, out. Without the cookie
(a new browser), the real user waits like anyone else, at most
``max_delay_s``.

Every attempt is logged on ``dicom_node.web.login`` for the audit trail: the
outcome, the address and the user's name, never a password. A name that is no
user is logged as a keyed hash (``name#...``), because what people type into
the name field is sometimes their password; the hash still lets an auditor see
that the same unknown name was tried again and again. Refusals (429, 503) cost
the sender nothing, so they are logged at most once a second, each line saying
how many were left out before it: a flood cannot fill the disk with log lines.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from itsdangerous import BadSignature, URLSafeTimedSerializer

from dicom_node.settings import LoginSettings, WebUser
from dicom_node.web.auth import Authenticator, LoginBusy

__all__ = [
    "DEVICE_COOKIE",
    "LoginAttempt",
    "LoginGuard",
    "LoginOutcome",
    "TooManyAttempts",
]

audit = logging.getLogger("dicom_node.web.login")

#: Name of the device cookie.
DEVICE_COOKIE = "dicom_node_device"
#: Users one device cookie remembers (a shared reading-room workstation).
_DEVICE_USERS = 8
#: Keys each brake remembers; the least recently failed are forgotten first.
_CAPACITY = 50_000


class TooManyAttempts(Exception):
    """Too many failed logins; the next attempt must wait.

    Parameters
    ----------
    retry_after_s : float
        Seconds until an attempt is allowed again.
    """

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"try again in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """What a login form or ``POST /api/session`` sent, and from where."""

    source: str
    name: str
    password: str = field(repr=False)
    device_cookie: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """A successful login: the user, and the device cookie to set (or renew)."""

    user: WebUser
    device_cookie: str


class _Brake:
    """Failures per key, and how long the next attempt must wait."""

    def __init__(self, free: int, settings: LoginSettings, clock: Callable[[], float]) -> None:
        self.free = free
        self.settings = settings
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # Past this many counted failures the wait is at its longest anyway.
        self._keep = free + 32

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and now - times[0] > self.settings.forget_after_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        now = self.clock()
        times = self._recent(key, now)
        if times is None or len(times) < self.free:
            return 0.0
        exponent = min(len(times) - self.free, 64)
        delay = min(self.settings.first_delay_s * 2.0**exponent, self.settings.max_delay_s)
        return max(0.0, times[-1] + delay - now)

    def failed(self, key: str) -> None:
        """Count a failure."""
        now = self.clock()
        times = self._recent(key, now) or deque(maxlen=self._keep)
        times.append(now)
        self._failures[key] = times
        self._failures.move_to_end(key)
        while len(self._failures) > _CAPACITY:
            self._failures.popitem(last=False)

    def clear(self, key: str) -> None:
        """Forget a key's failures (its owner proved who they are)."""
        self._failures.pop(key, None)


class _RefusalLog:
    """Log refused attempts at most once per ``every_s``, counting the lines left out."""

    def __init__(self, clock: Callable[[], float], every_s: float = 1.0) -> None:
        self.clock = clock
        self.every_s = every_s
        self._next = float("-inf")
        self._left_out = 0

    def warning(self, message: str, *args: object) -> None:
        now = self.clock()
        if now < self._next:
            self._left_out += 1
            return
        if self._left_out:
            message += " (%d refusals not logged before this one)"
            args = (*args, self._left_out)
        audit.warning(message, *args)
        self._next = now + self.every_s
        self._left_out = 0


class LoginGuard:
    """Login attempts: brakes first, then the password check, then the audit line.

    Parameters
    ----------
    auth : Authenticator
        Checks passwords.
    settings : LoginSettings
        ``web.login``.
    secret : str
        ``web.session_secret``: signs device cookies and keys the hash of unknown names.
    clock : Callable[[], float]
        Monotonic seconds (a parameter so tests can move time on).
    """

    def __init__(
        self,
        auth: Authenticator,
        settings: LoginSettings,
        secret: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.auth = auth
        self.settings = settings
        self._secret = secret.encode("utf-8")
        self._devices = URLSafeTimedSerializer(secret, salt="dicom-node-device")
        self._by_name = _Brake(settings.free_failures, settings, clock)
        self._by_source = _Brake(settings.free_failures_per_source, settings, clock)
        self._by_device = _Brake(settings.free_failures, settings, clock)
        self._lock = threading.Lock()
        self._refusals = _RefusalLog(clock)

    def attempt(self, attempt: LoginAttempt) -> LoginOutcome | None:
        """Try a login.

        Parameters
        ----------
        attempt : LoginAttempt
            The name, password, address and device cookie.

        Returns
        -------
        LoginOutcome or None
            The user and their device cookie, or None for a wrong name or password.

        Raises
        ------
        TooManyAttempts
            If the name, the address or the device must wait (no password check ran).
        LoginBusy
            If every password check slot stayed taken.
        """
        who = self.display_name(attempt.name)
        who = f"user={who}" if self.auth.user(attempt.name) is not None else who
        device, remembered = self._device(attempt.device_cookie)
        brakes = (
            [(self._by_device, f"{device}\n{attempt.name}")]
            if attempt.name in remembered
            else [(self._by_name, self._name_key(attempt.name)), (self._by_source, attempt.source)]
        )
        with self._lock:
            wait = max(brake.wait(key) for brake, key in brakes)
        if wait > 0:
            with self._lock:
                self._refusals.warning(
                    "login refused, too many failures: %s source=%s wait=%.0fs",
                    who,
                    attempt.source,
                    wait,
                )
            raise TooManyAttempts(wait)
        try:
            user = self.auth.check(attempt.name, attempt.password)
        except LoginBusy:
            with self._lock:
                self._refusals.warning(
                    "login refused, password checks busy: %s source=%s", who, attempt.source
                )
            raise
        with self._lock:
            for brake, key in brakes:
                if user is None:
                    brake.failed(key)
                elif brake is not self._by_source:
                    # An address is not cleared by a success: one valid account
                    # must not buy more guesses at another from the same address.
                    brake.clear(key)
        if user is None:
            audit.warning("login failed: %s source=%s", who, attempt.source)
            return None
        audit.info(
            "login ok: user=%s source=%s remembered_browser=%s",
            user.name,
            attempt.source,
            "yes" if attempt.name in remembered else "no",
        )
        names = [user.name, *(n for n in remembered if n != user.name)][:_DEVICE_USERS]
        cookie = self._devices.dumps({"d": device or secrets.token_urlsafe(16), "u": names})
        return LoginOutcome(user, cookie)

    @property
    def device_max_age_s(self) -> int:
        """Lifetime of a device cookie."""
        return self.settings.device_cookie_days * 24 * 3600

    def _device(self, cookie: str | None) -> tuple[str | None, list[str]]:
        """The device's ID and the users it logged in as, from a valid cookie."""
        if not cookie:
            return None, []
        try:
            payload = self._devices.loads(cookie, max_age=self.device_max_age_s)
        except BadSignature:
            return None, []
        if not isinstance(payload, dict):
            return None, []
        device, names = payload.get("d"), payload.get("u")
        if not isinstance(device, str) or not isinstance(names, list):
            return None, []
        return device, [n for n in names if isinstance(n, str)]

    def _name_key(self, name: str) -> str:
        return hmac.new(self._secret, name.encode("utf-8"), hashlib.sha256).hexdigest()

    def display_name(self, name: str) -> str:
        """How logs and the audit trail name a typed login name: as typed for a user, else hashed.

        What people type into the name field is sometimes their password, so a
        name that is no user is never written down as typed.
        """
        if self.auth.user(name) is not None:
            return name
        return f"name#{self._name_key(name)[:12]} (no such user)"
