"""The dashboard and the API show a superseded result as such, with its rejection notes."""

from __future__ import annotations

import logging

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from dicom_node.settings import Settings
from dicom_node.spool import Spool
from dicom_node.state import InstanceRecord, JobState, NewJob, StateDB
from dicom_node.state.supersession import notes_of
from dicom_node.supervisor import Supervisor
from dicom_node.withdrawal import withdraw_superseded
from tests.unit.web.conftest import SeededJob


def _late_slice(state: StateDB, spool: Spool, job: SeededJob) -> None:
    """One more slice of the same series arrives after the study was routed."""
    source = pydicom.dcmread(job.study.paths[0])
    source.SOPInstanceUID = generate_uid()
    source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
    target = spool.instance_path(
        source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    source.save_as(target)
    state.record_instance(
        InstanceRecord(
            study_uid=source.StudyInstanceUID,
            series_uid=source.SeriesInstanceUID,
            sop_instance_uid=source.SOPInstanceUID,
            sop_class_uid=source.SOPClassUID,
            transfer_syntax_uid=source.file_meta.TransferSyntaxUID,
            path=spool.relative(target),
            size=target.stat().st_size,
            calling_ae="CT_SCANNER_1",
            association_id=None,
            modality="CT",
            accession_number="ACC-1001",
            study_date=source.StudyDate,
            series_attributes={"Modality": "CT"},
        )
    )


def _supersede(state: StateDB, spool: Spool, job: SeededJob, *, withdraw: bool = True) -> int:
    """The grown study's new job, delivered; the old job's rejection note queued."""
    _late_slice(state, spool, job)
    count, series = state.series_inputs(job.study.study_uid)
    (newer,) = state.complete_study(
        job.study.study_uid, count, [NewJob(series[0], "ct-body-lung", "1.0.0", "cpu", "rule")]
    )
    state.create_exports(newer, [("archive", f"jobs/{newer}/seg.dcm", "9.8.7")], {})
    for row in state.exports_of(newer):
        state.mark_export_sent(row.id)
    state.set_job_state(newer, JobState.DONE)
    if withdraw:
        assert withdraw_superseded(state, spool, [newer]) == 1
    return newer


def test_api_and_pages_show_the_superseded_job(
    admin: tuple[TestClient, str], done_job: SeededJob, state: StateDB, spool: Spool
) -> None:
    browser, token = admin
    old = done_job.job_id
    newer = _supersede(state, spool, done_job)
    detail = browser.get(f"/api/jobs/{old}").json()
    assert detail["state"] == "DONE"
    assert detail["superseded_by"] == newer
    (note,) = detail["rejection_notes"]
    assert (note["destination"], note["rejected"], note["state"]) == ("archive", 1, "PENDING")
    assert note["superseded_by"] == newer
    assert detail["can_retry"] is False
    assert detail["can_cancel"] is False
    assert browser.get(f"/api/jobs/{newer}").json()["superseded_by"] is None
    listed = {item["id"]: item for item in browser.get("/api/jobs").json()["items"]}
    assert (listed[old]["superseded_by"], listed[newer]["superseded_by"]) == (newer, None)
    study = browser.get(f"/api/studies/{done_job.study.study_uid}").json()
    assert [j["superseded_by"] for j in study["jobs"]] == [newer, None]
    page = browser.get(f"/jobs/{old}").text
    assert 'id="superseded"' in page
    assert f'href="/jobs/{newer}">job #{newer}' in page
    assert 'id="rejection-notes"' in page
    assert f"superseded by #{newer}" in browser.get(f"/studies/{done_job.study.study_uid}").text
    refused = browser.post(f"/api/jobs/{old}/retry", headers={"X-CSRF-Token": token})
    assert refused.status_code == 409
    assert refused.json()["detail"] == f"job {old} is superseded by job {newer}; retry that one"


def test_the_note_on_the_spool_rejects_the_old_seg(
    done_job: SeededJob, state: StateDB, spool: Spool
) -> None:
    _supersede(state, spool, done_job)
    note_rows = [r for r in state.exports_of(done_job.job_id) if "rejections/" in r.path]
    (row,) = note_rows
    note = pydicom.dcmread(spool.resolve(row.path))
    (old_seg,) = [r for r in state.exports_of(done_job.job_id) if r.path.endswith("seg.dcm")]
    referenced = [
        sop.ReferencedSOPInstanceUID
        for item in note.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]
    assert referenced == [old_seg.sop_instance_uid]
    assert note.SOPInstanceUID == row.sop_instance_uid
    assert note.InstanceNumber == done_job.job_id


def test_a_note_that_cannot_be_written_is_tried_again_later_not_in_a_loop(
    done_job: SeededJob,
    state: StateDB,
    spool: Spool,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool.resolve(f"jobs/{done_job.job_id}/seg.dcm").unlink()  # the old result is gone
    _supersede(state, spool, done_job, withdraw=False)
    supervisor = Supervisor(settings, spool, state, {}, producer=None)
    with caplog.at_level(logging.WARNING, logger="dicom_node.supervisor"):
        supervisor.withdraw()  # the first pass looks at every job
        supervisor.withdraw()  # too soon to try again
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        f"job {done_job.job_id + 1}: rejection note for job {done_job.job_id} to archive "
        "not written (FileNotFoundError)"
    )
    assert notes_of(state, done_job.job_id) == []
