"""The REST API and the pages over a real state DB, spool and Redis."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import update

from dicom_node.broker import make_producer
from dicom_node.services import RedisHandle
from dicom_node.settings import Settings
from dicom_node.spool import Spool
from dicom_node.state import ExportState, JobState, StateDB
from dicom_node.state.schema import JobEvent, Study
from dicom_node.web.models import JobDetailPublic, OverviewPublic, StudyPagePublic
from pipelines.manifest import read_manifest
from tests.unit.web.conftest import SENTINEL, SeededJob, ingest, make_job


def _api_texts(browser: TestClient, job_ids: list[int], study_uids: list[str]) -> list[str]:
    paths = ["/api/overview", "/api/studies", "/api/failures", "/api/jobs", "/api/config",
             "/api/associations", "/api/session", "/api/openapi.json"]  # fmt: skip
    paths += [f"/api/jobs/{i}" for i in job_ids] + [f"/api/studies/{u}" for u in study_uids]
    texts = []
    for path in paths:
        answer = browser.get(path)
        assert answer.status_code == 200, path
        texts.append(answer.text)
    return texts


@pytest.mark.usefixtures("done_job", "failed_job")
def test_overview_counts(
    admin: tuple[TestClient, str], settings: Settings, broker_url: str
) -> None:
    browser, _ = admin
    # A real message waiting in the cpu queue, as the supervisor sends it.
    producer = make_producer(settings.broker)
    producer.send_task("worker.run_job", args=[{}], queue="cpu", task_id="waiting-1")
    producer.close()
    overview = OverviewPublic.model_validate(browser.get("/api/overview").json())
    assert overview.last_hour.instances == 16  # two studies of 8 slices
    assert overview.last_hour.studies == 2
    assert overview.last_day.bytes == overview.last_hour.bytes > 16 * 64 * 64 * 2
    assert overview.jobs_by_state[JobState.DONE] == 1
    assert overview.jobs_by_state[JobState.FAILED] == 1
    assert overview.failures_24h == 1
    assert overview.broker_ok is True
    assert {q.name: q.depth for q in overview.queues} == {"cpu": 1}
    assert redis.Redis.from_url(broker_url).llen("cpu") == 1
    assert overview.workers_ok is True
    assert overview.workers == []  # no worker runs in a unit test
    assert overview.disk.min_free_bytes == 0
    assert overview.disk.below_watermark is False
    page = browser.get("/").text
    assert 'id="card-failures"' in page
    assert "no worker answered" in page


def test_overview_says_when_the_broker_is_away(
    tmp_path: Path, password_hashes: dict[str, str], state: StateDB, spool: Spool
) -> None:
    from fastapi.testclient import TestClient

    from dicom_node.services import free_port
    from dicom_node.web import create_app
    from tests.unit.web.conftest import login, make_settings

    settings = make_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0", password_hashes)
    with TestClient(create_app(settings, state=state, spool=spool)) as browser:
        login(browser, "viewer")
        overview = OverviewPublic.model_validate(browser.get("/api/overview").json())
        assert overview.broker_ok is False
        assert overview.workers_ok is False
        assert overview.queues[0].depth is None
        assert "does not answer" in browser.get("/").text
        ready = browser.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"] is False
        assert ready.json()["checks"]["database"] is True


def test_study_search(
    admin: tuple[TestClient, str], done_job: SeededJob, failed_job: SeededJob, state: StateDB
) -> None:
    browser, _ = admin

    def search(**params: str) -> StudyPagePublic:
        return StudyPagePublic.model_validate(browser.get("/api/studies", params=params).json())

    assert search().total == 2
    found = search(q="acc-2002")
    assert [s.study_uid for s in found.items] == [failed_job.study.study_uid]
    assert found.items[0].accession_number == "ACC-2002"
    assert [j.state for j in found.items[0].jobs] == [JobState.FAILED]
    assert search(q="CT_SCANNER").items[0].study_uid == done_job.study.study_uid
    assert search(calling_ae="MR_SCANNER_2").total == 1
    assert search(modality="CT").total == 2
    assert search(modality="MR").total == 0
    with state.session() as s:
        s.execute(
            update(Study)
            .where(Study.study_uid == done_job.study.study_uid)
            .values(study_date="20240115")
        )
    assert [s.study_uid for s in search(date_from="20240101", date_to="20240131").items] == [
        done_job.study.study_uid
    ]
    assert search(q="100%").total == 0  # LIKE wildcards are literal
    assert browser.get("/api/studies", params={"date_from": "2024-01-01"}).status_code == 422
    page = browser.get("/studies", params={"q": "ACC-1001"}).text
    assert "ACC-1001" in page
    assert "ACC-2002" not in page


def test_viewer_sees_identifiers_masked_and_no_api_names_anyone(
    admin: tuple[TestClient, str],
    viewer: tuple[TestClient, str],
    done_job: SeededJob,
    failed_job: SeededJob,
) -> None:
    admin_browser, _ = admin
    viewer_browser, _ = viewer
    jobs = [done_job.job_id, failed_job.job_id]
    studies = [done_job.study.study_uid, failed_job.study.study_uid]
    for browser in (admin_browser, viewer_browser):
        for text in _api_texts(browser, jobs, studies):
            assert "SENTINEL" not in text
    listed = viewer_browser.get("/api/studies").json()["items"]
    assert {s["accession_number"] for s in listed} == {"A**-****"}
    page = viewer_browser.get(f"/jobs/{done_job.job_id}").text
    assert "SENTINEL" not in page
    assert "ACC-1001" not in page
    assert "S*******^W**^Q**" in page
    # The admin's page names the patient (read from the stored header).
    assert SENTINEL in admin_browser.get(f"/jobs/{done_job.job_id}").text
    assert SENTINEL in admin_browser.get(f"/studies/{done_job.study.study_uid}").text


def test_show_patient_names_lets_viewers_see_them(
    tmp_path: Path,
    broker_url: str,
    password_hashes: dict[str, str],
    state: StateDB,
    spool: Spool,
    done_job: SeededJob,
) -> None:
    from fastapi.testclient import TestClient

    from dicom_node.web import create_app
    from tests.unit.web.conftest import login, make_settings

    settings = make_settings(tmp_path, broker_url, password_hashes, show_patient_names=True)
    with TestClient(create_app(settings, state=state, spool=spool)) as browser:
        login(browser, "viewer")
        assert SENTINEL in browser.get(f"/jobs/{done_job.job_id}").text
        assert browser.get("/api/studies").json()["items"][0]["accession_number"] == "ACC-1001"


def test_job_timeline_log_and_outputs(admin: tuple[TestClient, str], done_job: SeededJob) -> None:
    browser, _ = admin
    job = JobDetailPublic.model_validate(browser.get(f"/api/jobs/{done_job.job_id}").json())
    assert job.state is JobState.DONE
    states = [stage.state for stage in job.timeline]
    assert states == ["WAITING", "QUEUED", "RUNNING", "EXPORTING", "DONE"]
    assert job.timeline[0].detail.startswith("study arriving")
    assert job.timeline[1].detail == "rule 'axial CT' of ct-body-lung"
    assert job.timeline[0].ended_at is not None
    assert job.timeline[0].ended_at <= job.timeline[1].started_at  # job created, then event
    for before, after in zip(job.timeline[1:], job.timeline[2:], strict=False):
        assert before.ended_at == after.started_at
    assert job.total_seconds == sum(stage.seconds for stage in job.timeline)
    assert [o.kind for o in job.outputs] == ["seg"]
    assert job.has_seg is True
    assert job.measurements == {"right_lung.volume_ml": 812.5}
    assert [(e.destination, e.state) for e in job.exports] == [("archive", ExportState.SENT)]
    log = [line.text for line in job.log]
    assert "manifest: done" in log
    assert "manifest timings: load 0.12 s, infer 1.50 s, write 0.30 s" in log
    assert any(text.startswith("sent to queue cpu as task job-") for text in log)
    assert any("to archive: SENT after 1 attempt(s)" in text for text in log)
    assert job.can_retry is False
    assert job.can_cancel is False
    page = browser.get(f"/jobs/{done_job.job_id}").text
    for text in ("WAITING", "EXPORTING", "cpu@test-host", "812.5", "seg.dcm"):
        assert text in page


def test_time_in_each_state_from_the_events(
    admin: tuple[TestClient, str], done_job: SeededJob, state: StateDB
) -> None:
    browser, _ = admin
    base = datetime.datetime(2026, 1, 1, 8, 0, 0)
    offsets = {"QUEUED": 0, "RUNNING": 5, "EXPORTING": 65, "DONE": 67}
    with state.session() as s:
        for name, offset in offsets.items():
            s.execute(
                update(JobEvent)
                .where(JobEvent.job_id == done_job.job_id, JobEvent.state == name)
                .values(at=base + datetime.timedelta(seconds=offset))
            )
    job = JobDetailPublic.model_validate(browser.get(f"/api/jobs/{done_job.job_id}").json())
    seconds = {stage.state: stage.seconds for stage in job.timeline if stage.state != "WAITING"}
    assert seconds == {"QUEUED": 5.0, "RUNNING": 60.0, "EXPORTING": 2.0, "DONE": 0.0}
    assert "1 min 00 s" in browser.get(f"/jobs/{done_job.job_id}").text


def test_retry_a_worker_failure_requeues_it(
    admin: tuple[TestClient, str], failed_job: SeededJob, state: StateDB, spool: Spool
) -> None:
    browser, token = admin
    job_id = failed_job.job_id
    before = browser.get(f"/api/jobs/{job_id}").json()
    assert before["can_retry"] is True
    assert before["reason"] == "instance 3 of 8 is missing from the spool"
    answer = browser.post(f"/api/jobs/{job_id}/retry", headers={"X-CSRF-Token": token})
    assert answer.status_code == 200
    view = state.job(job_id)
    assert view is not None
    assert view.state is JobState.QUEUED
    assert view.dispatched_at is None  # the outbox sends it again
    assert read_manifest(spool.job_dir(job_id)) is None  # the old outcome is set aside
    job = JobDetailPublic.model_validate(answer.json())
    assert job.timeline[-1].state == "QUEUED"
    assert job.timeline[-1].detail == "retried by admin"
    assert [(a.attempt, a.status) for a in job.previous_attempts] == [("1", "failed")]
    assert "attempt 1: failed: instance 3 of 8 is missing from the spool" in [
        line.text for line in job.log
    ]
    again = browser.post(f"/api/jobs/{job_id}/retry", headers={"X-CSRF-Token": token})
    assert again.status_code == 409  # a QUEUED job is not retried
    assert failed_job.job_id not in [j["id"] for j in browser.get("/api/failures").json()["items"]]


def test_retry_an_export_failure_resends_only_what_failed(
    admin: tuple[TestClient, str], done_job: SeededJob, state: StateDB
) -> None:
    browser, token = admin
    job_id = done_job.job_id
    # Run it again from EXPORTING with a second destination that refuses everything.
    state.create_exports(job_id, [("backup", "jobs/x/seg.dcm", "1.2.3.4")], {})
    with state.session() as s:
        from dicom_node.state.schema import Job

        s.execute(update(Job).where(Job.id == job_id).values(state=JobState.EXPORTING))
    backup = next(r for r in state.exports_of(job_id) if r.destination == "backup")
    state.mark_export_failed(backup.id, "association with backup not established", None)
    state.set_job_state(job_id, JobState.FAILED, reason="export to backup failed after 1 attempts")
    page = browser.get("/failures").text
    assert "export to backup failed" in page
    answer = browser.post(
        f"/jobs/{job_id}/retry", data={"csrf_token": token}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert "failed exports will be sent again" in browser.get(answer.headers["location"]).text
    rows = {r.destination: r.state for r in state.exports_of(job_id)}
    assert rows == {"archive": ExportState.SENT, "backup": ExportState.PENDING}
    view = state.job(job_id)
    assert view is not None
    assert view.state is JobState.EXPORTING


def test_cancel(
    admin: tuple[TestClient, str], done_job: SeededJob, state: StateDB, tmp_path: Path, spool: Spool
) -> None:
    browser, token = admin
    study = ingest(state, spool, tmp_path / "queued", accession="ACC-3003")
    job_id = make_job(state, study)
    answer = browser.post(f"/api/jobs/{job_id}/cancel", headers={"X-CSRF-Token": token})
    assert answer.status_code == 200
    job = JobDetailPublic.model_validate(answer.json())
    assert job.state is JobState.SKIPPED
    assert job.reason == "cancelled by admin"
    assert job.cancelled is True
    assert job.can_cancel is False
    assert job.can_retry is True
    assert "CANCELLED" in browser.get(f"/jobs/{job_id}").text
    done = browser.post(f"/api/jobs/{done_job.job_id}/cancel", headers={"X-CSRF-Token": token})
    assert done.status_code == 409
    assert "DONE" in done.json()["detail"]
    assert browser.post("/api/jobs/999/cancel", headers={"X-CSRF-Token": token}).status_code == 409


def test_configuration_hides_secrets(
    admin: tuple[TestClient, str], settings: Settings, password_hashes: dict[str, str]
) -> None:
    browser, _ = admin
    text = browser.get("/api/config").text + browser.get("/config").text
    assert "test-secret-0123456789abcdef" not in text
    for hashed in password_hashes.values():
        assert hashed not in text
    config = browser.get("/api/config").json()
    assert config["web"]["session_secret"] == "********"
    assert config["web"]["users"][0]["name"] == "admin"
    assert config["scp"]["ae_title"] == settings.scp.ae_title


def test_password_in_a_url_is_hidden(
    tmp_path: Path,
    password_hashes: dict[str, str],
    state: StateDB,
    spool: Spool,
    redis_server: RedisHandle,
) -> None:
    from fastapi.testclient import TestClient

    from dicom_node.web import create_app
    from tests.unit.web.conftest import login, make_settings

    url = f"redis://:hunter2secret@127.0.0.1:{redis_server.port}/3"
    settings = make_settings(tmp_path, url, password_hashes)
    with TestClient(create_app(settings, state=state, spool=spool)) as browser:
        login(browser, "admin")
        config = browser.get("/api/config").json()
    assert "hunter2secret" not in str(config)
    assert config["broker"]["url"] == f"redis://:********@127.0.0.1:{redis_server.port}/3"


def test_associations_and_openapi(admin: tuple[TestClient, str], state: StateDB) -> None:
    browser, _ = admin
    row = state.open_association("CT_SCANNER_1", "DICOM_NODE", "10.0.0.7")
    state.close_association(row, instances=12, size=4096, failures=1, outcome="released")
    page = browser.get("/api/associations").json()
    assert page["total"] == 1
    item = page["items"][0]
    assert (item["calling_ae"], item["instances"], item["failures"], item["outcome"]) == (
        "CT_SCANNER_1", 12, 1, "released",
    )  # fmt: skip
    assert "10.0.0.7" in browser.get("/associations").text
    schema = browser.get("/api/openapi.json").json()
    assert "/api/jobs/{job_id}/retry" in schema["paths"]
    assert "/api/overview" in schema["paths"]
    assert "/login" not in schema["paths"]
