"""Sessions end on the server: a copied cookie stops working on every revocation path.

Each test copies a logged-in browser's cookie first, as a thief would, then
takes the path that must end the session (logout, a new password, the user
removed from the configuration, an admin logging users out everywhere, the
CLI, idling, expiry), and shows the copy is refused.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from dicom_node.cli import main
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.state.schema import WebSession, utcnow
from dicom_node.web import create_app
from dicom_node.web.app import SESSION_COOKIE
from dicom_node.web.auth import hash_password
from tests.unit.web.conftest import PASSWORDS, login, make_settings


def _stolen(browser: TestClient) -> str:
    cookie: str | None = browser.cookies.get(SESSION_COOKIE)
    assert cookie, "the browser has no session cookie"
    return cookie


def _works(app: FastAPI, cookie: str) -> bool:
    """Whether a copy of ``cookie``, used from another client, is let in."""
    with TestClient(app, cookies={SESSION_COOKIE: cookie}) as thief:
        status: int = thief.get("/api/overview").status_code
    assert status in (200, 401), status
    return status == 200


@pytest.fixture
def viewer_cookie(app: FastAPI) -> Iterator[tuple[TestClient, str, str]]:
    """A browser logged in as the viewer, its CSRF token and a copy of its cookie."""
    with TestClient(app) as browser:
        token = login(browser, "viewer")
        yield browser, token, _stolen(browser)


def test_a_cookie_copied_before_logout_no_longer_works(
    app: FastAPI, viewer_cookie: tuple[TestClient, str, str]
) -> None:
    browser, token, copy = viewer_cookie
    assert _works(app, copy)
    assert browser.post("/logout", data={"csrf_token": token}).status_code == 200
    assert not _works(app, copy)


def test_api_logout_ends_the_session_on_the_server(app: FastAPI) -> None:
    with TestClient(app) as program:
        csrf = program.get("/api/session").json()["csrf_token"]
        answer = program.post(
            "/api/session",
            json={"name": "admin", "password": PASSWORDS["admin"]},
            headers={"X-CSRF-Token": csrf},
        )
        assert answer.status_code == 200
        copy = _stolen(program)
        csrf = answer.json()["csrf_token"]
        assert (
            program.post("/api/session/logout", headers={"X-CSRF-Token": csrf}).json()["name"]
            is None
        )
    assert not _works(app, copy)


def test_the_database_holds_a_hash_of_the_token_never_the_token(
    state: StateDB, viewer_cookie: tuple[TestClient, str, str]
) -> None:
    _, _, copy = viewer_cookie
    # Starlette's cookie: base64 JSON, then the itsdangerous timestamp and signature.
    payload = copy.split(".")[0]
    token = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))["sid"]
    with state.session() as s:
        rows = s.execute(select(WebSession.token_hash, WebSession.user_name)).all()
    assert [(digest, name) for digest, name in rows] == [
        (hashlib.sha256(token.encode()).hexdigest(), "viewer")
    ]
    assert all(token not in str(value) for row in rows for value in row)


def test_a_new_password_ends_the_users_sessions_and_only_theirs(
    tmp_path: Path,
    broker_url: str,
    password_hashes: dict[str, str],
    state: StateDB,
    spool: Spool,
    app: FastAPI,
) -> None:
    with TestClient(app) as viewer, TestClient(app) as admin:
        login(viewer, "viewer")
        login(admin, "admin")
        viewer_copy, admin_copy = _stolen(viewer), _stolen(admin)
    changed = dict(password_hashes, viewer=hash_password("a-brand-new-password"))
    # The configuration changed and the dashboard started again, on the same state DB.
    restarted = create_app(make_settings(tmp_path, broker_url, changed), state=state, spool=spool)
    assert not _works(restarted, viewer_copy)
    assert _works(restarted, admin_copy)


def test_a_removed_user_stays_logged_out_when_added_back(
    tmp_path: Path,
    broker_url: str,
    password_hashes: dict[str, str],
    state: StateDB,
    spool: Spool,
    settings: Settings,
    viewer_cookie: tuple[TestClient, str, str],
) -> None:
    _, _, copy = viewer_cookie
    without = make_settings(tmp_path, broker_url, password_hashes)
    users = [user for user in without.web.users if user.name != "viewer"]
    without = without.model_copy(update={"web": without.web.model_copy(update={"users": users})})
    assert not _works(create_app(without, state=state, spool=spool), copy)
    # Added back with the very same password: the old cookie must not come back to life.
    assert not _works(create_app(settings, state=state, spool=spool), copy)


def test_an_admin_logs_a_user_out_everywhere(
    app: FastAPI, admin: tuple[TestClient, str], viewer_cookie: tuple[TestClient, str, str]
) -> None:
    browser, token = admin
    _, viewer_token, copy = viewer_cookie
    with TestClient(app) as second_browser:
        login(second_browser, "viewer")
        second = _stolen(second_browser)
    listed = browser.get("/api/session/all").json()
    assert sorted(item["user"] for item in listed) == ["admin", "viewer", "viewer"]
    assert all(item["address"] == "testclient" for item in listed)
    answer = browser.post(
        "/api/session/revoke", json={"user": "viewer"}, headers={"X-CSRF-Token": token}
    )
    assert answer.json() == {"revoked": 2}
    assert not _works(app, copy)
    assert not _works(app, second)
    assert browser.get("/api/overview").status_code == 200  # the admin's own session lives


def test_log_out_everyone_ends_the_admins_session_too(
    app: FastAPI, admin: tuple[TestClient, str], viewer_cookie: tuple[TestClient, str, str]
) -> None:
    browser, token = admin
    _, _, copy = viewer_cookie
    answer = browser.post("/api/session/revoke", json={}, headers={"X-CSRF-Token": token})
    assert answer.json() == {"revoked": 2}
    assert not _works(app, copy)
    assert browser.get("/api/overview").status_code == 401


def test_the_sessions_page_logs_a_user_out(
    app: FastAPI, admin: tuple[TestClient, str], viewer_cookie: tuple[TestClient, str, str]
) -> None:
    browser, token = admin
    _, _, copy = viewer_cookie
    page = browser.get("/sessions")
    assert page.status_code == 200
    assert page.text.count("<td>viewer</td>") == 1
    answer = browser.post(
        "/sessions/revoke", data={"csrf_token": token, "user": "viewer"}, follow_redirects=False
    )
    assert answer.headers["location"] == "/sessions"
    assert not _works(app, copy)
    assert "<td>viewer</td>" not in browser.get("/sessions").text


def test_a_viewer_can_neither_list_nor_end_sessions(
    viewer_cookie: tuple[TestClient, str, str],
) -> None:
    browser, token, _ = viewer_cookie
    assert browser.get("/api/session/all").status_code == 403
    refused = browser.post("/api/session/revoke", json={}, headers={"X-CSRF-Token": token})
    assert refused.status_code == 403
    assert browser.get("/sessions").status_code == 403
    assert browser.get("/api/overview").status_code == 200


def test_the_cli_logs_a_user_out_everywhere(
    app: FastAPI,
    settings: Settings,
    tmp_path: Path,
    viewer_cookie: tuple[TestClient, str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, _, copy = viewer_cookie
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"web"})))
    assert main(["web", "logout", "--config", str(config)]) == 2  # whom?
    assert main(["web", "logout", "--user", "viewer", "--config", str(config)]) == 0
    assert "1 sessions ended" in capsys.readouterr().out
    assert not _works(app, copy)


@pytest.mark.parametrize(
    ("column", "age"),
    [
        ("last_seen_at", datetime.timedelta(hours=2)),  # idle past 1 h
        ("expires_at", datetime.timedelta(seconds=1)),  # past its lifetime
    ],
)
def test_an_idle_or_expired_session_ends(
    app: FastAPI,
    state: StateDB,
    viewer_cookie: tuple[TestClient, str, str],
    column: str,
    age: datetime.timedelta,
) -> None:
    _, _, copy = viewer_cookie
    with state.session() as s:
        s.execute(update(WebSession).values({column: utcnow() - age}))
    assert not _works(app, copy)
    with state.session() as s:
        assert s.execute(select(WebSession)).first() is None, "the dead session was left behind"
