"""Which jobs a newer one supersedes, what stops at once, and what is withdrawn where."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.retry import RetryRefused, retry_job
from dicom_node.spool import Spool
from dicom_node.state import ExportState, InstanceRecord, JobState, NewJob, StateDB
from dicom_node.state.supersession import (
    jobs_with_superseded_elders,
    notes_of,
    record_note,
    superseded_by,
    withdrawals_for,
)

STUDY, SERIES = "1.2.3", "1.2.3.1"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDB]:
    db = StateDB(f"sqlite:///{tmp_path / 'state.db'}")
    yield db
    db.close()


def _receive(state: StateDB, *numbers: int, series: str = SERIES) -> None:
    for n in numbers:
        state.record_instance(
            InstanceRecord(
                study_uid=STUDY,
                series_uid=series,
                sop_instance_uid=f"{series}.{n}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=f"instances/{n}.dcm",
                size=10,
                calling_ae="CT1",
                association_id=None,
                modality="CT",
                accession_number="A1",
                study_date="20260101",
                series_attributes={"Modality": "CT"},
            )
        )


def _complete(state: StateDB, pipeline: str = "ct-body-lung", version: str = "1.0.0") -> int:
    """Route the study as it now is; return the new job's ID."""
    count, series = state.series_inputs(STUDY)
    (job_id,) = state.complete_study(
        STUDY, count, [NewJob(series[0], pipeline, version, "cpu", "rule")]
    )
    return job_id


def _deliver(state: StateDB, job_id: int, destinations: list[str], objects: int = 2) -> None:
    """The job's results exported and accepted everywhere."""
    results = [(f"jobs/{job_id}/r{i}.dcm", f"9.{job_id}.{i}") for i in range(objects)]
    state.create_exports(
        job_id, [(dest, path, uid) for dest in destinations for path, uid in results], {}
    )
    for row in state.exports_of(job_id):
        state.mark_export_sent(row.id)
    state.set_job_state(job_id, JobState.DONE)


def test_a_grown_study_stops_the_older_jobs_work_at_once(state: StateDB) -> None:
    _receive(state, 1, 2, 3)
    first = _complete(state)
    state.create_exports(first, [("archive", "jobs/1/seg.dcm", "9.1")], {})
    _receive(state, 4, 5)
    second = _complete(state)
    job = state.job(first)
    assert job is not None
    assert job.state is JobState.SKIPPED
    assert job.reason == f"superseded by job {second}: the series' input set changed"
    (row,) = state.exports_of(first)
    assert row.state is ExportState.SUPERSEDED
    assert superseded_by(state, [first, second]) == {first: second}
    assert state.due_exports(datetime.datetime(2100, 1, 1)) == [], "nothing of it goes out"


def test_a_delivered_result_stays_until_the_new_one_is_delivered(state: StateDB) -> None:
    _receive(state, 1, 2, 3)
    first = _complete(state)
    _deliver(state, first, ["archive", "backup"])
    _receive(state, 4)
    second = _complete(state)
    job = state.job(first)
    assert job is not None
    assert job.state is JobState.DONE, "a delivered result is not touched by supersession"
    assert withdrawals_for(state, second) == []  # nothing of the new one delivered yet
    state.create_exports(
        second, [(dest, "jobs/2/seg.dcm", "9.2.0") for dest in ("archive", "backup")], {}
    )
    rows = {row.destination: row for row in state.exports_of(second)}
    state.mark_export_sent(rows["archive"].id)
    (due,) = withdrawals_for(state, second)
    assert (due.job_id, due.superseded_by, due.destination) == (first, second, "archive")
    assert due.sop_instance_uids == (f"9.{first}.0", f"9.{first}.1")
    assert due.study_uid == STUDY
    record_note(state, due, "jobs/1/rejections/n.dcm", "8.1")
    assert withdrawals_for(state, second) == [], "an object is withdrawn once"
    state.mark_export_sent(rows["backup"].id)
    (later,) = withdrawals_for(state, second)
    assert later.destination == "backup"
    assert [(n.destination, n.rejected, n.state) for n in notes_of(state, first)] == [
        ("archive", 2, ExportState.PENDING)
    ]


def test_a_third_job_withdraws_both_and_keeps_pending_notes(state: StateDB) -> None:
    _receive(state, 1)
    first = _complete(state)
    _deliver(state, first, ["archive"])
    _receive(state, 2)
    second = _complete(state)
    _deliver(state, second, ["archive"])
    (note,) = withdrawals_for(state, second)
    note_row = record_note(state, note, "jobs/1/rejections/n.dcm", "8.1")
    _receive(state, 3)
    third = _complete(state)
    pending = [row for row in state.exports_of(first) if row.id == note_row]
    assert [row.state for row in pending] == [ExportState.PENDING], "a note still goes out"
    _deliver(state, third, ["archive"])
    assert {(w.job_id, w.superseded_by) for w in withdrawals_for(state, third)} == {(second, third)}
    assert superseded_by(state, [first, second, third]) == {first: third, second: third}
    assert jobs_with_superseded_elders(state) == [second, third]


def test_the_same_inputs_under_a_new_pipeline_version_supersede_nothing(state: StateDB) -> None:
    _receive(state, 1, 2)
    first = _complete(state, version="1.0.0")
    _deliver(state, first, ["archive"])
    # Another series arrives; routing runs again, meanwhile the pipeline was upgraded.
    _receive(state, 1, series="1.2.3.2")
    count, series = state.series_inputs(STUDY)
    assert series[0].series_uid == SERIES
    (second,) = state.complete_study(
        STUDY, count, [NewJob(series[0], "ct-body-lung", "1.1.0", "cpu", "rule")]
    )
    assert second != first
    assert superseded_by(state, [first, second]) == {}
    assert jobs_with_superseded_elders(state) == []


def test_retry_of_a_superseded_job_sends_only_its_failed_notes(
    state: StateDB, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    _receive(state, 1)
    first = _complete(state)
    _deliver(state, first, ["archive"])
    _receive(state, 2)
    second = _complete(state)
    with pytest.raises(RetryRefused, match=f"superseded by job {second}"):
        retry_job(state, spool, first)
    _deliver(state, second, ["archive"])
    (due,) = withdrawals_for(state, second)
    note_row = record_note(state, due, "jobs/1/rejections/n.dcm", "8.1")
    state.mark_export_failed(note_row, "archive answered status 0xA700", None)
    assert (
        retry_job(state, spool, first)
        == f"job {first}: 1 failed rejection notes will be sent again"
    )
    states = {row.id: row.state for row in state.exports_of(first)}
    assert states[note_row] is ExportState.PENDING
    assert [s for i, s in states.items() if i != note_row] == [ExportState.SENT] * 2
