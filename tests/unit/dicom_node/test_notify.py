"""Notifications against a real HTTP receiver and a real SMTP server (STARTTLS and login).

The outbox rows are made the way the node makes them: a job state change in
the state DB with the notifier as its listener.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, Notifier, verify_signature
from dicom_node.phi import study_tag
from dicom_node.services import free_port, wait_until
from dicom_node.settings import NotifySettings
from dicom_node.spool import Spool
from dicom_node.state import JobState, NewJob, StateDB
from dicom_node.state.schema import Notification, NotificationState
from pipelines.spec import load_pipeline_specs
from tests.certificates import Certificates, make_certificates
from tests.notify_servers import run_smtp, run_webhook_receiver
from tests.unit.web.conftest import SENTINEL, ingest

REPO = Path(__file__).resolve().parents[3]
SECRET = "webhook-secret-0123456789"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDB]:
    db = StateDB(f"sqlite:///{tmp_path / 'state.db'}")
    yield db
    db.close()


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    folder = tmp_path / "certs"
    folder.mkdir()
    return make_certificates(folder)


def _settings(hook_port: int, smtp_port: int, ca: Path) -> NotifySettings:
    return NotifySettings.model_validate(
        {
            "webhooks": [{"name": "ris", "url": f"http://127.0.0.1:{hook_port}/hook",
                          "secret": SECRET, "events": ["FAILED", "FINDING"], "timeout_s": 2}],
            "emails": [{"name": "pacs-admins", "host": "127.0.0.1", "port": smtp_port,
                        "starttls": True, "ca_certificates": str(ca), "username": "node",
                        "password": "mail-password", "sender": "node@example.org",
                        "recipients": ["pacs-admin@example.org"], "timeout_s": 5,
                        "events": ["FAILED", "DONE"]}],
            "backoff_initial_s": 0.2,
            "backoff_max_s": 0.5,
            "dashboard_url": "https://node.example.org:8080",
        }
    )  # fmt: skip


def _job(state: StateDB, tmp_path: Path, pipeline: str, version: str) -> tuple[int, str]:
    spool = Spool(tmp_path / "spool")
    study = ingest(state, spool, tmp_path / f"study-{pipeline}", accession="ACC-NOTIFY-77")
    count, series = state.series_inputs(study.study_uid)
    (job_id,) = state.complete_study(
        study.study_uid, count, [NewJob(series[0], pipeline, version, "cpu", "test")]
    )
    return job_id, study.study_uid


def _rows(state: StateDB) -> list[tuple[str, str, str, int]]:
    with state.session() as s:
        return [
            (row.event, row.channel, row.state, row.attempts)
            for row in s.query(Notification).order_by(Notification.id)
        ]


def test_a_failure_is_signed_mailed_and_retried_until_the_receiver_is_up(
    state: StateDB, tmp_path: Path, certificates: Certificates
) -> None:
    hook_port, smtp_port = free_port(), free_port()
    settings = _settings(hook_port, smtp_port, certificates.ca)
    pipelines = load_pipeline_specs(REPO / "config" / "pipelines")
    notifier = Notifier(settings, "DICOM_NODE", state, pipelines)
    state.add_job_listener(notifier.on_job_state)
    job_id, study_uid = _job(state, tmp_path, "ct-body-lung", "1.0.0")
    state.set_job_state(job_id, JobState.FAILED, reason="export to archive failed")
    assert _rows(state) == [
        ("FAILED", "webhook:ris", NotificationState.PENDING, 0),
        ("FAILED", "email:pacs-admins", NotificationState.PENDING, 0),
    ]
    with run_smtp(smtp_port, certificates.server, certificates.server_key, "node",
                  "mail-password") as mailbox:  # fmt: skip
        # The webhook receiver is down: the e-mail goes, the webhook waits for a retry.
        assert notifier.send_due() == 1
        assert mailbox.logins == ["LOGIN:node"] or mailbox.logins == ["PLAIN:node"]
        (mail,) = mailbox.messages
        assert f"job {job_id} FAILED" in mail["Subject"]
        assert "export to archive failed" in mail.get_payload()
        event, channel, row_state, attempts = _rows(state)[0]
        assert (row_state, attempts) == (NotificationState.PENDING, 1)
        # A restart in between: a fresh state DB handle and notifier find the row.
        state.close()
        again = StateDB(state.url)
        later = Notifier(settings, "DICOM_NODE", again, pipelines)
        with run_webhook_receiver(hook_port) as hook:
            wait_until(lambda: later.send_due() >= 1 or bool(hook.requests), 10, "the retry")
        assert _rows(again)[0][2:] == (NotificationState.SENT, 2)
        again.close()
    headers, body = hook.requests[0]
    assert verify_signature(
        SECRET, headers[TIMESTAMP_HEADER.lower()], body, headers[SIGNATURE_HEADER.lower()]
    )
    assert not verify_signature("another-secret-000000", headers[TIMESTAMP_HEADER.lower()], body,
                                headers[SIGNATURE_HEADER.lower()])  # fmt: skip
    payload = json.loads(body)
    assert payload["event"] == "job.failed"
    assert payload["job_id"] == job_id
    assert payload["study_tag"] == study_tag(study_uid)
    assert payload["reason"] == "export to archive failed"
    assert payload["url"] == f"https://node.example.org:8080/jobs/{job_id}"
    for text in (body.decode(), mail.as_string()):
        assert SENTINEL not in text
        assert study_uid not in text
        assert "ACC-NOTIFY-77" not in text


def test_a_finding_is_notified_and_identifiers_only_when_asked(
    state: StateDB, tmp_path: Path, certificates: Certificates
) -> None:
    settings = _settings(free_port(), free_port(), certificates.ca).model_copy(
        update={"include_identifiers": True}
    )
    pipelines = load_pipeline_specs(REPO / "config" / "pipelines")
    notifier = Notifier(settings, "DICOM_NODE", state, pipelines)
    state.add_job_listener(notifier.on_job_state)
    job_id, study_uid = _job(state, tmp_path, "dx-chest-nodule", "1.0.0")
    state.set_job_state(job_id, JobState.DONE, measurements={"nodule.probability": 0.81})
    quiet_id, _ = _job(state, tmp_path / "quiet", "dx-chest-nodule", "1.0.0")
    state.set_job_state(quiet_id, JobState.DONE, measurements={"nodule.probability": 0.2})
    rows = _rows(state)
    assert [(event, channel) for event, channel, _, _ in rows] == [
        ("DONE", "email:pacs-admins"),
        ("FINDING", "webhook:ris"),
        ("DONE", "email:pacs-admins"),
    ]
    with state.session() as s:
        finding = s.query(Notification).filter(Notification.event == "FINDING").one().payload
    assert finding["findings"] == [{"label": "Nodule", "probability": 0.81, "threshold": 0.5}]
    assert finding["study_instance_uid"] == study_uid
    assert finding["accession_number"] == "ACC-NOTIFY-77"
