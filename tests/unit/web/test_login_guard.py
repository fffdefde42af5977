"""Guessing is slowed by growing waits, never by locking the real user out; every attempt is
logged for the audit trail, without passwords and without names that are no user's.

The guard's clock is a parameter, so these tests move time on instead of sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.web import create_app
from dicom_node.web.context import WebContext
from dicom_node.web.login_guard import DEVICE_COOKIE, LoginGuard
from tests.unit.web.conftest import PASSWORDS, make_settings

ATTACKER = ("10.0.0.66", 40000)
WARD = ("10.20.0.1", 40001)


class Clock:
    """Monotonic seconds that only move when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app: FastAPI) -> Clock:
    """The application's login guard, on a clock the test moves."""
    ctx: WebContext = app.state.ctx
    tick = Clock()
    secret = ctx.settings.web.session_secret.get_secret_value()
    ctx.logins = LoginGuard(ctx.auth, ctx.settings.web.login, secret, clock=tick)
    return tick


@pytest.fixture
def attacker(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, client=ATTACKER) as client:
        yield client


def _login(client: TestClient, name: str, password: str) -> Response:
    token = client.get("/api/session").json()["csrf_token"]
    answer: Response = client.post(
        "/api/session", json={"name": name, "password": password}, headers={"X-CSRF-Token": token}
    )
    return answer


def _guess(client: TestClient, name: str = "admin") -> Response:
    return _login(client, name, "Summer2026!")


def test_failures_make_each_further_attempt_wait_longer(attacker: TestClient, clock: Clock) -> None:
    assert [_guess(attacker).status_code for _ in range(3)] == [401, 401, 401]
    waits = []
    for _ in range(5):
        early = _guess(attacker)
        assert early.status_code == 429
        waits.append(int(early.headers["Retry-After"]))
        clock.now += waits[-1]
        assert _guess(attacker).status_code == 401  # allowed again, and wrong again
    assert waits == [1, 2, 4, 8, 16]


def test_the_wait_is_capped(attacker: TestClient, clock: Clock) -> None:
    for _ in range(20):
        clock.now += 1000
        assert _guess(attacker).status_code == 401
    assert _guess(attacker).headers["Retry-After"] == "300"


def test_the_real_user_at_their_browser_is_not_locked_out(
    app: FastAPI, attacker: TestClient, clock: Clock
) -> None:
    with TestClient(app, client=WARD) as radiologist:
        assert _login(radiologist, "admin", PASSWORDS["admin"]).status_code == 200
        assert radiologist.cookies.get(DEVICE_COOKIE)
        radiologist.post(
            "/api/session/logout",
            headers={"X-CSRF-Token": radiologist.get("/api/session").json()["csrf_token"]},
        )
        # Someone hammers the admin's name for a long time, from elsewhere...
        for _ in range(13):
            clock.now += 400
            assert _guess(attacker).status_code == 401
        assert _guess(attacker).status_code == 429
        # ...and from the radiologist's own address, behind the same NAT.
        with TestClient(app, client=WARD) as neighbour:
            for _ in range(12):
                assert _guess(neighbour).status_code in (401, 429)
            assert _guess(neighbour).status_code == 429
        # The radiologist's browser logs in at once, attack or not.
        answer = _login(radiologist, "admin", PASSWORDS["admin"])
        assert answer.status_code == 200, answer.text
        assert answer.json()["name"] == "admin"


def test_a_new_browser_waits_at_most_the_cap_then_gets_in(
    app: FastAPI, attacker: TestClient, clock: Clock
) -> None:
    for _ in range(13):
        clock.now += 400
        _guess(attacker)
    with TestClient(app, client=WARD) as laptop:
        refused = _login(laptop, "admin", PASSWORDS["admin"])
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) <= 300
        clock.now += int(refused.headers["Retry-After"])
        assert _login(laptop, "admin", PASSWORDS["admin"]).status_code == 200


@pytest.mark.usefixtures("clock")  # a still clock: nothing is forgotten, no wait passes
def test_a_name_is_braked_across_addresses(app: FastAPI) -> None:
    for index in range(3):
        with TestClient(app, client=(f"10.9.0.{index}", 1)) as client:
            assert _guess(client).status_code == 401
    with TestClient(app, client=("10.9.0.99", 1)) as fresh:
        assert _guess(fresh).status_code == 429


@pytest.mark.usefixtures("clock")
def test_an_address_is_braked_across_names(attacker: TestClient) -> None:
    for index in range(10):
        assert _guess(attacker, f"user{index}").status_code == 401
    assert _guess(attacker, "someone-else").status_code == 429


@pytest.mark.usefixtures("clock")
def test_a_name_that_is_no_user_is_braked_like_a_real_one(
    app: FastAPI, attacker: TestClient
) -> None:
    real = [_guess(attacker, "viewer").status_code for _ in range(4)]
    with TestClient(app, client=("10.7.7.7", 1)) as other:
        made_up = [_guess(other, "nobody-here").status_code for _ in range(4)]
    assert real == made_up == [401, 401, 401, 429]


@pytest.mark.usefixtures("clock")
def test_a_device_cookie_of_another_node_counts_for_nothing(
    app: FastAPI,
    tmp_path: Path,
    broker_url: str,
    password_hashes: dict[str, str],
    state: StateDB,
    spool: Spool,
) -> None:
    other = make_settings(
        tmp_path, broker_url, password_hashes, session_secret="another-node-secret-0123456789"
    )
    with TestClient(create_app(other, state=state, spool=spool)) as elsewhere:
        assert _login(elsewhere, "admin", PASSWORDS["admin"]).status_code == 200
        cookie = elsewhere.cookies.get(DEVICE_COOKIE)
    assert cookie
    with TestClient(app, client=ATTACKER, cookies={DEVICE_COOKIE: cookie}) as client:
        assert [_guess(client).status_code for _ in range(4)] == [401, 401, 401, 429]


@pytest.mark.usefixtures("clock")
def test_every_attempt_is_in_the_audit_log_without_secrets(
    app: FastAPI, attacker: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    mistyped = "Tr0ub4dor&3-in-the-name-field"
    with caplog.at_level(logging.INFO, logger="dicom_node.web.login"):
        _login(attacker, "admin", "wrong-password-xyz")
        _login(attacker, mistyped, "anything")
        _login(attacker, mistyped, "anything")
        with TestClient(app, client=WARD) as ward:
            _login(ward, "viewer", PASSWORDS["viewer"])
    lines = [r.getMessage() for r in caplog.records if r.name == "dicom_node.web.login"]
    assert lines[0] == "login failed: user=admin source=10.0.0.66"
    assert lines[1].startswith("login failed: name#")
    assert lines[1] == lines[2], "the same unknown name is logged the same way each time"
    assert lines[3] == "login ok: user=viewer source=10.20.0.1 remembered_browser=no"
    text = "\n".join(lines)
    for secret in (mistyped, "wrong-password-xyz", "anything", PASSWORDS["viewer"]):
        assert secret not in text


def test_a_flood_of_refusals_does_not_flood_the_log(
    attacker: TestClient, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    for wait in (0, 0, 0, 1, 2):  # five failures: the next attempt must wait 4 s
        clock.now += wait
        assert _guess(attacker).status_code == 401
    with caplog.at_level(logging.INFO, logger="dicom_node.web.login"):
        statuses = {_guess(attacker).status_code for _ in range(40)}
        clock.now += 1.1  # still inside the wait, past a second after the first line
        last = _guess(attacker)
    assert statuses == {429}
    assert last.status_code == 429
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2, refusals
    assert refusals[1].endswith("(39 refusals not logged before this one)")
