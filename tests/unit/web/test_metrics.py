"""``/metrics`` parsed by prometheus_client, moving as a real storescu sends to a real receiver."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file
from sqlalchemy import update

from dicom_node.phantom import ChestPhantom
from dicom_node.scp import Receiver, ReceiverHandle
from dicom_node.settings import ScpSettings, StabilitySettings
from dicom_node.spool import Spool
from dicom_node.state import JobState, StateDB
from dicom_node.state.schema import JobEvent
from dicom_node.web import create_app
from tests.node_process import storescu
from tests.unit.web.conftest import SeededJob, login, make_settings

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def scrape(
    browser: TestClient, **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` by (name, sorted labels)."""
    answer = browser.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def receiver(state: StateDB, spool: Spool) -> Iterator[ReceiverHandle]:
    """The node's receiver, in-process, accepting CT only (anything else gets 0x0122)."""
    scp = ScpSettings(
        host="127.0.0.1", port=0, min_free_bytes=0, acse_timeout_s=5,
        accepted_sop_classes=[CT_IMAGE_STORAGE],
    )  # fmt: skip
    handle = Receiver(scp, StabilitySettings(), spool, state).start()
    yield handle
    handle.stop()


def test_counters_move_when_a_study_is_received(
    admin: tuple[TestClient, str], receiver: ReceiverHandle, tmp_path: Path
) -> None:
    browser, _ = admin
    before = scrape(browser)
    assert before[("dicom_node_instances_received_total", ())] == 0
    study = ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6).write(tmp_path / "ct")
    sent = storescu(receiver.port, list(study.paths))
    assert sent.returncode == 0, sent.stderr
    mr_small = get_testdata_file("MR_small.dcm")
    assert isinstance(mr_small, str), "pydicom's MR_small.dcm is missing"
    refused = storescu(receiver.port, [Path(mr_small)])
    assert "0x0122" in refused.stderr.lower() or refused.returncode != 0

    after = scrape(browser)
    size = sum(p.stat().st_size for p in study.paths)
    assert after[("dicom_node_instances_received_total", ())] == 8
    # The spool holds the bytes as received plus the node's file meta, never fewer.
    assert after[("dicom_node_received_bytes_total", ())] >= size - 8 * 200
    assert after[("dicom_node_studies_received_total", ())] == 1
    assert after[("dicom_node_associations_total", (("outcome", "released"),))] == 2
    assert after[("dicom_node_store_failures_total", ())] == 1
    assert after[("dicom_node_store_refusals_total", (("status", "0x0122"),))] == 1
    assert after[("dicom_node_spool_min_free_bytes", ())] == 0
    assert after[("dicom_node_spool_free_bytes", ())] > 0
    assert after[("dicom_node_broker_up", ())] == 1
    assert after[("dicom_node_queue_depth", (("queue", "cpu"),))] == 0
    assert after[("dicom_node_workers_online", ())] == 0
    assert after[("dicom_node_queue_workers", (("queue", "cpu"),))] == 0
    # The overview counts the same arrivals.
    assert browser.get("/api/overview").json()["last_hour"]["instances"] == 8


def test_job_stage_histograms_and_failures_from_job_events(
    admin: tuple[TestClient, str], done_job: SeededJob, failed_job: SeededJob, state: StateDB
) -> None:
    browser, _ = admin
    base = datetime.datetime(2026, 1, 1, 8, 0, 0)
    offsets = {"QUEUED": 0, "RUNNING": 3, "EXPORTING": 45, "DONE": 46.5}
    with state.session() as s:
        for name, seconds in offsets.items():
            s.execute(
                update(JobEvent)
                .where(JobEvent.job_id == done_job.job_id, JobEvent.state == name)
                .values(at=base + datetime.timedelta(seconds=seconds))
            )
    samples = scrape(browser)

    def bucket(stage: str, le: str) -> float:
        labels = (("le", le), ("pipeline", "ct-body-lung"), ("stage", stage))
        return samples[("dicom_node_job_stage_duration_seconds_bucket", labels)]

    def total(stage: str, what: str) -> float:
        labels = (("pipeline", "ct-body-lung"), ("stage", stage))
        return samples[(f"dicom_node_job_stage_duration_seconds_{what}", labels)]

    # The DONE job ran 42 s (the 60 s bucket, not the 30 s one); the FAILED one a moment.
    assert total("running", "count") == 2
    assert bucket("running", "30") == 1
    assert bucket("running", "60") == 2
    assert 42 <= total("running", "sum") < 43
    assert total("exporting", "sum") == 1.5
    assert total("total", "count") == 1
    assert total("total", "sum") == 46.5
    # The FAILED job queued once and ran once; the DONE job queued once too.
    assert total("queued", "count") == 2
    assert total("waiting", "count") == 2
    assert samples[("dicom_node_jobs", (("state", "FAILED"),))] == 1
    assert samples[("dicom_node_jobs", (("state", "DONE"),))] == 1
    pipeline_failures = (("cause", "pipeline"), ("pipeline", "ct-body-lung"))
    assert samples[("dicom_node_job_failures_total", pipeline_failures)] == 1

    # An export that fails to the end counts per destination, and keeps counting after a retry.
    state.create_exports(failed_job.job_id, [("backup", "x.dcm", "1.2.3")], {})
    assert scrape(browser)[("dicom_node_exports_pending", (("destination", "backup"),))] == 1
    (row,) = state.exports_of(failed_job.job_id)
    state.mark_export_failed(row.id, "refused", None)
    with state.session() as s:
        s.add(JobEvent(job_id=failed_job.job_id, state=JobState.FAILED,
                       detail="export to backup failed after 12 attempts: refused"))  # fmt: skip
    samples = scrape(browser)
    assert samples[("dicom_node_export_job_failures_total", (("destination", "backup"),))] == 1
    assert samples[("dicom_node_exports_given_up", (("destination", "backup"),))] == 1
    assert ("dicom_node_exports_pending", (("destination", "backup"),)) not in samples
    export_failures = (("cause", "export"), ("pipeline", "ct-body-lung"))
    assert samples[("dicom_node_job_failures_total", export_failures)] == 1


def test_metrics_token_for_a_scraper(
    tmp_path: Path, broker_url: str, password_hashes: dict[str, str], state: StateDB, spool: Spool
) -> None:
    settings = make_settings(tmp_path, broker_url, password_hashes, metrics_token="scrape-me-42")
    with TestClient(create_app(settings, state=state, spool=spool)) as scraper:
        assert scraper.get("/metrics").status_code == 401
        wrong = scraper.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        samples = scrape(scraper, Authorization="Bearer scrape-me-42")
        assert ("dicom_node_instances_received_total", ()) in samples
        # The token opens /metrics only.
        headers = {"Authorization": "Bearer scrape-me-42"}
        assert scraper.get("/api/overview", headers=headers).status_code == 401
        login(scraper, "viewer")
        assert scraper.get("/metrics").status_code == 200
