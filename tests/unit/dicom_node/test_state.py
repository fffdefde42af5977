from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest

from dicom_node.state import InstanceRecord, JobState, NewJob, StateDB, StudyState
from dicom_node.state.schema import Study, utcnow


@pytest.fixture
def state(state_db_url: str) -> Iterator[StateDB]:
    """A state DB on SQLite, then on PostgreSQL."""
    db = StateDB(state_db_url)
    yield db
    db.close()


def _record(sop: str, study: str = "1.2.3", series: str = "1.2.3.1") -> InstanceRecord:
    return InstanceRecord(
        study_uid=study,
        series_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"instances/{study}/{series}/{sop}.dcm",
        size=10,
        calling_ae="CT1",
        association_id=None,
        modality="CT",
        accession_number="A1",
        study_date="20260101",
        series_attributes={"Modality": "CT"},
    )


def _jobs_for(state: StateDB, study: str) -> list[NewJob]:
    _, series = state.series_inputs(study)
    return [NewJob(s, "p", "1", "cpu", "rule") for s in series]


def test_duplicate_record_is_ignored(state: StateDB) -> None:
    assert state.record_instance(_record("1.2.3.1.1")) is True
    assert state.record_instance(_record("1.2.3.1.1")) is False
    count, series = state.series_inputs("1.2.3")
    assert count == 1
    assert series[0].instance_uids == ("1.2.3.1.1",)


def test_quiet_period_per_calling_ae(state: StateDB) -> None:
    state.record_instance(_record("1.2.3.1.1"))
    now = utcnow()
    assert state.studies_due(now, lambda _ae: 30) == []
    later = now + datetime.timedelta(seconds=31)
    assert state.studies_due(later, lambda _ae: 30) == ["1.2.3"]
    assert state.studies_due(
        now + datetime.timedelta(seconds=6), lambda ae: 5 if ae == "CT1" else 60
    ) == ["1.2.3"]


def test_complete_study_refuses_when_an_instance_arrived_meanwhile(state: StateDB) -> None:
    state.record_instance(_record("1.2.3.1.1"))
    count, _ = state.series_inputs("1.2.3")
    jobs = _jobs_for(state, "1.2.3")
    state.record_instance(_record("1.2.3.1.2"))  # arrives between read and complete
    assert state.complete_study("1.2.3", count, jobs) == []
    with state.session() as s:
        study = s.get(Study, "1.2.3")
        assert study is not None
        assert study.state == StudyState.ARRIVING
    assert state.jobs(list(JobState)) == []


def test_same_inputs_make_one_job_and_late_instance_makes_a_new_one(state: StateDB) -> None:
    state.record_instance(_record("1.2.3.1.1"))
    count, _ = state.series_inputs("1.2.3")
    first = state.complete_study("1.2.3", count, _jobs_for(state, "1.2.3"))
    assert len(first) == 1
    # A re-sent instance re-opens nothing; a late new one re-opens the study.
    state.record_instance(_record("1.2.3.1.1"))
    state.record_instance(_record("1.2.3.1.2"))
    count, _ = state.series_inputs("1.2.3")
    second = state.complete_study("1.2.3", count, _jobs_for(state, "1.2.3"))
    assert len(second) == 1
    assert second != first
    jobs = state.jobs(list(JobState))
    assert [len(j.inputs) for j in jobs] == [1, 2]
    # The job over the partial input set is superseded before it ran.
    assert [j.state for j in jobs] == [JobState.SKIPPED, JobState.QUEUED]


def test_terminal_job_state_is_not_overwritten(state: StateDB) -> None:
    state.record_instance(_record("1.2.3.1.1"))
    count, _ = state.series_inputs("1.2.3")
    (job_id,) = state.complete_study("1.2.3", count, _jobs_for(state, "1.2.3"))
    state.set_job_state(job_id, JobState.FAILED, reason="boom")
    state.set_job_state(job_id, JobState.RUNNING)
    job = state.job(job_id)
    assert job is not None
    assert job.state is JobState.FAILED
    assert job.reason == "boom"
