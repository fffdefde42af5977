"""Nothing without a login, nothing changed by a viewer, no POST without its CSRF token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import ValidationError

from dicom_node.cli import main
from dicom_node.settings import load_settings
from dicom_node.spool import Spool
from dicom_node.state import JobState, StateDB
from dicom_node.web import create_app
from dicom_node.web.app import ROUTERS
from tests.unit.web.conftest import PASSWORDS, SeededJob, csrf_from, login, make_settings

#: What answers without a session: the login page and API, liveness and readiness.
PUBLIC = {"/login", "/api/session", "/health", "/ready"}


def _routes(app: FastAPI, method: str) -> list[str]:
    """Every path the application serves for ``method``, with example parameters."""
    routes = [r for router in ROUTERS for r in router.routes] + list(app.routes)
    paths = []
    for route in routes:
        if isinstance(route, APIRoute):
            assert route.methods is not None
            if method in route.methods:
                paths.append(route.path.replace("{job_id}", "1").replace("{study_uid}", "1.2.3"))
    return paths


def test_no_page_or_api_answers_without_a_session(
    app: FastAPI, client: TestClient, failed_job: SeededJob
) -> None:
    gets = [path for path in _routes(app, "GET") if path not in PUBLIC]
    assert {"/", "/api/overview", "/jobs/1", "/api/openapi.json", "/metrics"} <= set(gets)
    for path in gets:
        answer = client.get(path, follow_redirects=False)
        if path.startswith("/api") or path == "/metrics":
            assert answer.status_code == 401, path
            assert answer.json() == {"detail": "not authenticated"}
        else:
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/login?next=")
    # A session without a user (it has a CSRF token from the login page) changes nothing.
    posts = [p for p in _routes(app, "POST") if p not in {"/login", "/api/session"}]
    assert {"/api/jobs/1/retry", "/jobs/1/cancel"} <= set(posts)
    for path in posts:
        token = csrf_from(client.get("/login").text)
        answer = client.post(path, headers={"X-CSRF-Token": token}, follow_redirects=False)
        if path.endswith("logout"):
            assert answer.status_code in (200, 303), path  # logging out is always allowed
        else:
            assert answer.status_code in (401, 303), path
    assert isinstance(client.app, FastAPI)
    assert client.app.state.ctx.state.job(failed_job.job_id).state is JobState.FAILED


def test_login_page_then_pages(client: TestClient) -> None:
    page = client.get("/login")
    assert page.status_code == 200
    wrong = client.post(
        "/login",
        data={"name": "admin", "password": "nope", "csrf_token": csrf_from(page.text)},
        follow_redirects=False,
    )
    assert wrong.status_code == 401
    assert "wrong name or password" in wrong.text
    token = login(client, "admin")
    assert client.get("/").status_code == 200
    assert client.get("/api/overview").status_code == 200
    client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert client.get("/api/overview").status_code == 401


def test_login_rotates_the_csrf_token_and_ignores_foreign_next(client: TestClient) -> None:
    before = csrf_from(client.get("/login").text)
    answer = client.post(
        "/login",
        data={"name": "viewer", "password": PASSWORDS["viewer"], "csrf_token": before,
              "next": "//evil.example/x"},
        follow_redirects=False,
    )  # fmt: skip
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    after = csrf_from(client.get("/").text)
    assert after != before


def test_api_login_for_programs(client: TestClient) -> None:
    session = client.get("/api/session").json()
    assert session["name"] is None
    refused = client.post(
        "/api/session",
        json={"name": "viewer", "password": "bad"},
        headers={"X-CSRF-Token": session["csrf_token"]},
    )
    assert refused.status_code == 401
    answer = client.post(
        "/api/session",
        json={"name": "viewer", "password": PASSWORDS["viewer"]},
        headers={"X-CSRF-Token": session["csrf_token"]},
    )
    assert answer.status_code == 200
    assert answer.json()["role"] == "viewer"
    assert client.get("/api/overview").status_code == 200


def test_viewer_cannot_retry_or_cancel(
    viewer: tuple[TestClient, str], failed_job: SeededJob, state: StateDB
) -> None:
    browser, token = viewer
    job_id = failed_job.job_id
    for path in (f"/api/jobs/{job_id}/retry", f"/api/jobs/{job_id}/cancel"):
        answer = browser.post(path, headers={"X-CSRF-Token": token})
        assert answer.status_code == 403, path
        assert answer.json() == {"detail": "admins only"}
    for path in (f"/jobs/{job_id}/retry", f"/jobs/{job_id}/cancel"):
        answer = browser.post(path, data={"csrf_token": token}, follow_redirects=False)
        assert answer.status_code == 403, path
    view = state.job(job_id)
    assert view is not None
    assert view.state is JobState.FAILED
    # The viewer sees the failure and its reason, but no button.
    page = browser.get("/failures").text
    assert "missing from the spool" in page
    assert f'action="/jobs/{job_id}/retry"' not in page
    assert 'id="retry"' not in browser.get(f"/jobs/{job_id}").text
    assert browser.get(f"/api/jobs/{job_id}").json()["can_retry"] is False


def test_admin_sees_the_buttons(admin: tuple[TestClient, str], failed_job: SeededJob) -> None:
    browser, _ = admin
    assert f'action="/jobs/{failed_job.job_id}/retry"' in browser.get("/failures").text
    assert 'id="retry"' in browser.get(f"/jobs/{failed_job.job_id}").text


def test_every_post_without_a_csrf_token_is_refused(
    app: FastAPI, admin: tuple[TestClient, str], failed_job: SeededJob, state: StateDB
) -> None:
    browser, token = admin
    job_id = failed_job.job_id
    posts = _routes(app, "POST")
    assert len(posts) >= 7
    other = TestClient(app)
    foreign = csrf_from(other.get("/login").text)  # a valid token, of another session
    for path in posts:
        path = path.replace("/1/", f"/{job_id}/")
        attempts = [({}, None), ({"X-CSRF-Token": "forged"}, None),
                    ({"X-CSRF-Token": foreign}, None), ({}, {"csrf_token": foreign})]  # fmt: skip
        for headers, data in attempts:
            answer = browser.post(path, headers=headers, data=data, follow_redirects=False)
            assert answer.status_code == 403, (path, headers, data)
            assert answer.json() == {"detail": "CSRF token missing or invalid"}
    view = state.job(job_id)
    assert view is not None
    assert view.state is JobState.FAILED
    assert browser.get("/api/overview").status_code == 200  # still logged in
    # With its token the same request goes through.
    answer = browser.post(f"/api/jobs/{job_id}/cancel", headers={"X-CSRF-Token": token})
    assert answer.status_code == 200
    view = state.job(job_id)
    assert view is not None
    assert view.state is JobState.SKIPPED


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "web.crt", folder / "web.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_session_cookie_is_secure_and_httponly_over_tls(
    tmp_path: Path, broker_url: str, password_hashes: dict[str, str], state: StateDB, spool: Spool
) -> None:
    cert, key = _certificate(tmp_path)
    settings = make_settings(
        tmp_path, broker_url, password_hashes, tls={"certificate": cert, "private_key": key}
    )
    app = create_app(settings, state=state, spool=spool)
    with TestClient(app, base_url="https://testserver") as browser:
        token = csrf_from(browser.get("/login").text)
        answer = browser.post(
            "/login",
            data={"name": "admin", "password": PASSWORDS["admin"], "csrf_token": token},
            follow_redirects=False,
        )
    cookie = answer.headers["set-cookie"].lower()
    assert "dicom_node_session=" in cookie
    assert "; secure" in cookie
    assert "httponly" in cookie
    assert "samesite=lax" in cookie


def test_cookie_over_plain_http_is_httponly_not_secure(client: TestClient) -> None:
    cookie = client.get("/login").headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "secure" not in cookie


def test_placeholder_secret_refused_outside_demo(password_hashes: dict[str, str]) -> None:
    users = [{"name": "a", "password_hash": password_hashes["admin"], "role": "admin"}]
    with pytest.raises(ValidationError, match="placeholder"):
        load_settings(None, web={"enabled": True, "users": users})
    with pytest.raises(ValidationError, match="at least 16"):
        load_settings(None, web={"enabled": True, "users": users, "session_secret": "short"})
    with pytest.raises(ValidationError, match="nobody could log in"):
        load_settings(None, web={"enabled": True, "session_secret": "x" * 32})
    with pytest.raises(ValidationError, match="argon2"):
        load_settings(None, web={"users": [{"name": "a", "password_hash": "plain"}]})
    demo = load_settings(None, web={"enabled": True, "demo": True, "users": users})
    assert demo.web.session_secret.get_secret_value() == "changethis"
    assert load_settings(None).web.enabled is False  # the default needs no secret


def test_hash_password_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("s3cret-pass\n"))
    assert main(["web", "hash-password", "--stdin"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, "s3cret-pass")
    load_settings(None, web={"users": [{"name": "a", "password_hash": hashed}]})
