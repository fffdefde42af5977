"""The dashboard's audit trail: what each action leaves, and who may read it."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.fernet import Fernet
from fastapi.testclient import TestClient

from dicom_node.audit import verify_chain
from dicom_node.deidentify import UidMap
from dicom_node.phi import study_tag
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.web import create_app
from tests.unit.web.conftest import PASSWORDS, SENTINEL, SeededJob, login, make_settings


def _records(settings: Settings) -> list[dict[str, object]]:
    return [json.loads(line) for line in settings.audit_path.read_text().splitlines()]


def _event(record: dict[str, object]) -> str:
    return str(record["event"])


def test_every_access_and_action_leaves_a_record(
    admin: tuple[TestClient, str],
    settings: Settings,
    done_job: SeededJob,
    failed_job: SeededJob,
) -> None:
    browser, token = admin
    uid = done_job.study.study_uid
    assert browser.get(f"/studies/{uid}").status_code == 200
    assert browser.get(f"/api/studies/{uid}").status_code == 200
    assert browser.get(f"/api/jobs/{done_job.job_id}").status_code == 200
    assert browser.get(f"/jobs/{done_job.job_id}").status_code == 200
    assert browser.get(f"/api/jobs/{done_job.job_id}/overlay.png").status_code == 200
    assert browser.get("/api/studies?q=ACC").status_code == 200
    retried = browser.post(f"/api/jobs/{failed_job.job_id}/retry", headers={"X-CSRF-Token": token})
    assert retried.status_code == 200
    cancelled = browser.post(
        f"/api/jobs/{failed_job.job_id}/cancel", headers={"X-CSRF-Token": token}
    )
    assert cancelled.status_code == 200
    refused = browser.post(f"/api/jobs/{done_job.job_id}/cancel", headers={"X-CSRF-Token": token})
    assert refused.status_code == 409

    records = _records(settings)
    tag = study_tag(uid)
    reads = [r for r in records if _event(r) == "Patient Record" and tag in r["study_tags"]]  # type: ignore[operator]
    assert len(reads) == 4  # two pages, two API reads
    assert all(r["user"] == "admin" for r in reads)
    assert all(r["ActiveParticipant"][0]["NetworkAccessPointID"] for r in reads)  # type: ignore[index]
    pictures = [r for r in records if _event(r) == "DICOM Instances Accessed"]
    assert [r["study_tags"] for r in pictures] == [[tag]]
    assert [_event(r) for r in records].count("Query") == 1
    actions = [
        (_event(r), r["EventIdentification"]["EventOutcomeIndicator"])  # type: ignore[index]
        for r in records
        if _event(r) in ("Job retried", "Job cancelled")
    ]
    assert actions == [("Job retried", "0"), ("Job cancelled", "0"), ("Job cancelled", "4")]
    assert [r for r in records if _event(r) == "Login"][0]["user"] == "admin"
    text = settings.audit_path.read_text()
    assert SENTINEL not in text
    assert uid not in text  # studies by tag only
    assert verify_chain(settings.audit_path) == len(records)


def test_only_admins_read_the_audit_trail(
    admin: tuple[TestClient, str],
    viewer: tuple[TestClient, str],
    settings: Settings,
    done_job: SeededJob,
) -> None:
    viewer_browser, _ = viewer
    assert viewer_browser.get("/api/audit").status_code == 403
    assert viewer_browser.get("/audit").status_code == 403
    assert "/audit" not in viewer_browser.get("/").text
    viewer_browser.get(f"/studies/{done_job.study.study_uid}")
    admin_browser, _ = admin
    page = admin_browser.get("/api/audit", params={"who": "viewer"}).json()
    assert [item["event"] for item in page["items"]] == ["Patient Record", "Login"]
    html = admin_browser.get("/audit").text
    assert study_tag(done_job.study.study_uid) in html
    assert "Audit Log Used" in [r["event"] for r in _records(settings)]


def test_failed_logins_and_logouts_are_recorded(client: TestClient, settings: Settings) -> None:
    from tests.unit.web.conftest import csrf_from

    token = csrf_from(client.get("/login").text)
    wrong = client.post(
        "/login",
        data={"name": "admin", "password": "nope", "csrf_token": token, "next": "/"},
    )
    assert wrong.status_code == 401
    login(client, "viewer")
    token = csrf_from(client.get("/").text)
    client.post("/logout", data={"csrf_token": token})
    events = [(r["event"], r["user"], r["EventIdentification"]["EventOutcomeIndicator"])  # type: ignore[index]
              for r in _records(settings)]  # fmt: skip
    assert events == [("Login", "admin", "4"), ("Login", "viewer", "0"), ("Logout", "viewer", "0")]
    assert PASSWORDS["viewer"] not in settings.audit_path.read_text()


def test_the_deidentification_map_is_for_admins_and_audited(
    tmp_path: Path, broker_url: str, password_hashes: dict[str, str]
) -> None:
    key = Fernet.generate_key()
    key_file = tmp_path / "deid.key"
    key_file.write_bytes(key)
    settings = make_settings(tmp_path, broker_url, password_hashes)
    settings.export.destinations.append(
        settings.export.destinations[0].model_copy(
            update={
                "name": "research",
                "deidentify": settings.export.destinations[0].deidentify.model_copy(
                    update={"enabled": True, "key_file": key_file}
                ),
            }
        )
    )
    spool = Spool(settings.spool_dir)
    state = StateDB(settings.state_db_url)
    try:
        UidMap(state, "research", key).remember({"1.2.840.99.1": "2.25.42"}, "1.2.840.99")
        app = create_app(settings, state=state, spool=spool)
        with TestClient(app) as viewer_browser, TestClient(app) as admin_browser:
            login(viewer_browser, "viewer")
            login(admin_browser, "admin")
            url = "/api/deid/research/uids/2.25.42"
            assert viewer_browser.get(url).status_code == 403
            found = admin_browser.get(url).json()
            assert found["original"] == "1.2.840.99.1"
            assert found["study_tag"] == study_tag("1.2.840.99")
            assert admin_browser.get("/api/deid/research/uids/2.25.43").status_code == 404
            page = admin_browser.get("/deid", params={"destination": "research", "uid": "2.25.42"})
            assert "1.2.840.99.1" in page.text
            assert viewer_browser.get("/deid").status_code == 403
        reads = [r for r in _records(settings) if r["event"] == "De-identification map read"]
        assert [r["user"] for r in reads] == ["admin", "admin"]
        assert reads[0]["study_tags"] == [study_tag("1.2.840.99")]
    finally:
        state.close()
