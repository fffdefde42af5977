"""Notifications, research export, retention and the audit trail on a real node.

Real parts: ``dicom-node serve`` (with its dashboard) and ``dicom-node worker``
as processes, redis-server, Orthanc as the archive and as the research archive,
storescu as the modality, an HTTP server as the webhook receiver and aiosmtpd
as the mail server. The run:

1. a study goes through; results go to the archive, and de-identified copies of
   the source series and the results to the research destination (same Orthanc,
   other UIDs); an e-mail reports DONE;
2. the webhook receiver is down: its notification waits, the node is stopped
   and started again with a changed setting, the receiver comes up, and the
   notification arrives, signed;
3. retention removes the study's instances and results a few seconds after it
   settled; the dashboard still shows the study;
4. the audit trail holds the exports (what went where), the starts, the
   configuration change and the dashboard reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import redis
import yaml
from cryptography.fernet import Fernet

from dicom_node.audit import verify_chain
from dicom_node.deidentify import Deidentifier
from dicom_node.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.phi import study_tag
from dicom_node.services import (
    OrthancHandle,
    RedisHandle,
    free_port,
    orthanc_study_objects,
    wait_until,
)
from dicom_node.settings import DeidentifySettings
from dicom_node.state import ExportState, JobState, StateDB
from dicom_node.state.schema import Instance, Study
from dicom_node.web.auth import hash_password
from tests.judges import dciodvfy_errors
from tests.node_process import run_node, run_worker, storescu, write_config
from tests.notify_servers import Hook, Mailbox, run_plain_smtp, run_webhook_receiver

pytestmark = pytest.mark.slow

SENTINEL = "SENTINEL^RESEARCH^4K"
PATIENT_ID = "SENTINEL-ID-4K-883"
ACCESSION = "ACC-SENTINEL-4K"
SECRET = "webhook-secret-integration-0001"
PASSWORD = "admin-password-integration"


@dataclass(frozen=True)
class Run:
    """What the module's one run left behind."""

    study: PhantomStudy
    folder: Path
    spool: Path
    key: bytes
    mailbox: Mailbox
    hook: Hook
    research: dict[str, list[pydicom.Dataset]]
    job_id: int
    dashboard: dict[str, Any]


def _state(spool: Path) -> StateDB:
    return StateDB(f"sqlite:///{spool / 'state.db'}")


def _dashboard_reads(url: str, study_uid: str, job_id: int) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=10) as web:

        def up() -> bool:
            try:
                return web.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 30, "the dashboard")  # it starts after the receiver answers
        token = web.get("/api/session").json()["csrf_token"]
        login = web.post(
            "/api/session",
            json={"name": "admin", "password": PASSWORD},
            headers={"X-CSRF-Token": token},
        )
        assert login.status_code == 200, login.text
        return {
            "study": web.get(f"/api/studies/{study_uid}").status_code,
            "study_page": web.get(f"/studies/{study_uid}").status_code,
            "job": web.get(f"/api/jobs/{job_id}").status_code,
            "overlay": web.get(f"/api/jobs/{job_id}/overlay.png").status_code,
            "retention": web.get("/api/retention").json(),
            "audit": web.get("/api/audit", params={"limit": 1000}).json(),
        }


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisHandle, orthanc: OrthancHandle
) -> Run:
    folder = tmp_path_factory.mktemp("workflow-ops")
    study = ChestPhantom(slices=12, size=96).write(
        folder / "phantom",
        patient_name=SENTINEL,
        patient_id=PATIENT_ID,
        accession_number=ACCESSION,
    )
    key = Fernet.generate_key()
    (folder / "deid.key").write_bytes(key)
    client = redis.Redis(port=redis_server.port, db=14)
    client.flushdb()
    client.close()
    hook_port, smtp_port, web_port = free_port(), free_port(), free_port()
    archive = {"name": "archive", "ae_title": "ORTHANC", "host": "127.0.0.1",
               "port": orthanc.dicom_port, "timeout_s": 5}  # fmt: skip
    research_dest = {**archive, "name": "research",
                "deidentify": {"enabled": True, "key_file": str(folder / "deid.key")}}  # fmt: skip
    notify = {
        "webhooks": [{"name": "ris", "url": f"http://127.0.0.1:{hook_port}/", "secret": SECRET,
                      "events": ["DONE"], "timeout_s": 2}],
        "emails": [{"name": "admins", "host": "127.0.0.1", "port": smtp_port, "starttls": False,
                    "sender": "node@example.org", "recipients": ["pacs@example.org"],
                    "events": ["DONE", "FAILED"]}],
        "backoff_initial_s": 0.5,
        "backoff_max_s": 1,
    }  # fmt: skip
    web = {"enabled": True, "port": web_port, "session_secret": "integration-secret-0123456789",
           "users": [{"name": "admin", "password_hash": hash_password(PASSWORD),
                      "role": "admin"}]}  # fmt: skip
    config = write_config(
        folder,
        redis_server.db_url(14),
        orthanc.dicom_port,
        export={"destinations": [archive, research_dest]},
        notify=notify,
        retention={"enabled": False},
        web=web,
    )
    with run_plain_smtp(smtp_port) as mailbox:
        with run_node(config) as node, run_worker(config):
            sent = storescu(node.port, folder / "phantom")
            assert sent.returncode == 0, sent.stderr
            state = _state(node.spool_dir)

            def delivered() -> bool:
                failed = state.jobs([JobState.FAILED, JobState.SKIPPED])
                assert not failed, f"job ended {failed[0].state}: {failed[0].reason}"
                return bool(state.jobs([JobState.DONE])) and bool(mailbox.messages)

            wait_until(delivered, 300, "the job DONE and its e-mail", interval_s=1)
            (job,) = state.jobs([JobState.DONE])
            exports = state.exports_of(job.id)
            state.close()
        assert {(e.destination, e.state) for e in exports} == {
            ("archive", ExportState.SENT), ("research", ExportState.SENT),
        }  # fmt: skip
        assert sum(e.destination == "research" for e in exports) == len(study.paths) + len(
            [e for e in exports if e.destination == "archive"]
        )  # the sources and the results
        # Restart with a changed setting, retention on; the receiver comes up.
        changed = yaml.safe_load(config.read_text())
        changed["notify"]["backoff_max_s"] = 2
        changed["retention"] = {
            "enabled": True, "interval_s": 1,
            "defaults": {"done_after_s": 3, "failed_after_s": 3, "unrouted_after_s": 3,
                         "results_after_s": 3},
        }  # fmt: skip
        config.write_text(yaml.safe_dump(changed))
        with run_webhook_receiver(hook_port) as hook, run_node(config) as node:
            wait_until(lambda: bool(hook.requests), 60, "the webhook after the restart")
            state = _state(node.spool_dir)

            def purged() -> bool:
                with state.session() as s:
                    row = s.get(Study, study.study_uid)
                    return row is not None and row.purged_at is not None

            wait_until(purged, 60, "retention to remove the study", interval_s=0.5)
            wait_until(
                lambda: not any((node.spool_dir / "jobs" / str(job.id)).glob("*.dcm")),
                60,
                "retention to remove the results",
                interval_s=0.5,
            )
            state.close()
            dashboard = _dashboard_reads(f"http://127.0.0.1:{web_port}", study.study_uid, job.id)
    deid = Deidentifier(
        DeidentifySettings(enabled=True, key_file=folder / "deid.key"), "research", key
    )
    pseudonym = deid.uid(study.study_uid)
    research: dict[str, list[pydicom.Dataset]] = {}
    for raw in orthanc_study_objects(orthanc.http_url, pseudonym, {"CT", "SEG", "SR"}):
        ds = pydicom.dcmread(BytesIO(raw))
        research.setdefault(ds.Modality, []).append(ds)
    return Run(study, folder, Path(yaml.safe_load(config.read_text())["spool_dir"]), key,
               mailbox, hook, research, job.id, dashboard)  # fmt: skip


def test_research_copy_is_complete_linked_and_without_identifiers(run: Run, tmp_path: Path) -> None:
    assert set(run.research) == {"CT", "SEG", "SR"}
    images = run.research["CT"]
    assert len(images) == len(run.study.paths)
    image_uids = {ds.SOPInstanceUID for ds in images}
    originals = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in run.study.paths
    }
    assert not image_uids & originals
    (seg,) = run.research["SEG"]
    (sr,) = run.research["SR"]
    refs = {
        i.ReferencedSOPInstanceUID
        for s in seg.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    assert refs
    assert refs <= image_uids
    evidence = {
        item.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence
    assert evidence - {seg.SOPInstanceUID} <= image_uids
    assert {ds.StudyInstanceUID for ds in [*images, seg, sr]} == {images[0].StudyInstanceUID}
    for ds in [*images, seg, sr]:
        assert ds.PatientIdentityRemoved == "YES"
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        raw = path.read_bytes()
        # The phantom's birth date is 19700101; dates elsewhere are shifted.
        for secret in (SENTINEL, PATIENT_ID, ACCESSION, "19700101", run.study.study_uid):
            assert secret.encode() not in raw, f"{secret} in a research {ds.Modality}"
    for ds in (seg, sr):
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], ds.Modality


def test_done_is_mailed_and_the_webhook_survives_a_restart(run: Run) -> None:
    (mail,) = run.mailbox.messages
    assert f"job {run.job_id} DONE" in mail["Subject"]
    assert SENTINEL not in mail.as_string()
    headers, body = run.hook.requests[0]
    stamp, signature = headers[TIMESTAMP_HEADER.lower()], headers[SIGNATURE_HEADER.lower()]
    assert verify_signature(SECRET, stamp, body, signature)
    payload = json.loads(body)
    assert (payload["event"], payload["job_id"]) == ("job.done", run.job_id)
    assert payload["study_tag"] == study_tag(run.study.study_uid)
    assert run.study.study_uid not in body.decode()


def test_retention_removed_the_files_and_kept_the_history(run: Run) -> None:
    instances = run.spool / "instances" / run.study.study_uid
    assert not instances.exists() or not any(instances.rglob("*.dcm"))
    assert (run.spool / "jobs" / str(run.job_id) / "manifest.json").is_file()
    state = _state(run.spool)
    try:
        with state.session() as s:
            rows = s.query(Instance).filter(Instance.study_uid == run.study.study_uid).all()
        assert len(rows) == len(run.study.paths)
        assert all(row.purged_at is not None for row in rows)
        assert state.job(run.job_id) is not None
    finally:
        state.close()
    board = run.dashboard
    assert (board["study"], board["study_page"], board["job"]) == (200, 200, 200)
    assert board["overlay"] == 404  # no picture without the files, and no error
    assert [b["label"] for b in board["retention"]["usage"]][0] == "< 1 h"
    assert sum(b["instance_bytes"] for b in board["retention"]["usage"]) == 0


def test_the_audit_trail_holds_exports_starts_and_reads(run: Run) -> None:
    audit = run.spool / "audit" / "audit.jsonl"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert verify_chain(audit) == len(records)
    transfers = [r for r in records if r["event"] == "DICOM Instances Transferred"]
    where = {
        detail["value"]
        for r in transfers
        for detail in r["ParticipantObjectIdentification"][0]["ParticipantObjectDetail"]
        if detail["type"] == "Destination"
    }
    assert where == {"archive", "research"}
    deidentified = {
        (d["value"])
        for r in transfers
        for d in r["ParticipantObjectIdentification"][0]["ParticipantObjectDetail"]
        if d["type"] == "Deidentified"
    }
    assert deidentified == {"YES", "NO"}
    assert all(r["study_tags"] == [study_tag(run.study.study_uid)] for r in transfers)
    starts = [r for r in records if r["event"] == "Application Start"]
    assert len(starts) == 2
    (change,) = [r for r in records if r["event"] == "Software Configuration"]
    summary = change["EventIdentification"]["EventOutcomeDescription"]
    assert "notify.backoff_max_s" in summary
    assert "retention.enabled" in summary
    reads = [r for r in records if r["event"] == "Patient Record" and r["user"] == "admin"]
    assert len(reads) == 3  # the study (API and page) and the job
    text = audit.read_text()
    for secret in (SENTINEL, PATIENT_ID, ACCESSION, run.study.study_uid):
        assert secret not in text
    api_events = {item["event"] for item in run.dashboard["audit"]["items"]}
    assert {"DICOM Instances Transferred", "Login", "Patient Record"} <= api_events
