"""Retention against a real state DB and spool: what goes, what stays, and the races."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_node.retention import Retention
from dicom_node.retry import RetryRefused, retry_job
from dicom_node.settings import RetentionSettings
from dicom_node.spool import Spool
from dicom_node.state import InstanceRecord, JobState, StateDB
from dicom_node.state.schema import Instance, Study, utcnow
from tests.unit.web.conftest import SMALL, ingest, make_job

LATER = datetime.timedelta(days=400)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def state(spool: Spool) -> Iterator[StateDB]:
    db = StateDB(f"sqlite:///{spool.root / 'state.db'}")
    yield db
    db.close()


def _rules(**sources: dict[str, float]) -> RetentionSettings:
    return RetentionSettings.model_validate(
        {
            "enabled": True,
            "defaults": {"done_after_s": 3600, "failed_after_s": 7200, "unrouted_after_s": 60,
                         "results_after_s": 86400},
            "sources": [{"ae_title": ae, **rule} for ae, rule in sources.items()],
        }
    )  # fmt: skip


def _files(state: StateDB, spool: Spool, study_uid: str) -> list[Path]:
    _, series = state.series_inputs(study_uid)
    return [spool.resolve(p) for s in series for p in s.paths]


def _done(
    state: StateDB, spool: Spool, folder: Path, calling_ae: str = "CT_SCANNER_1"
) -> tuple[int, str]:
    study = ingest(state, spool, folder, calling_ae=calling_ae)
    job_id = make_job(state, study)
    (spool.job_dir(job_id) / "seg.dcm").write_bytes(b"result" * 100)
    (spool.job_dir(job_id) / "manifest.json").write_bytes(b"{}")
    state.create_exports(job_id, [("archive", f"jobs/{job_id}/seg.dcm", "1.2.3.4")], {})
    for row in state.exports_of(job_id):
        state.mark_export_sent(row.id)
    state.set_job_state(job_id, JobState.DONE)
    return job_id, study.study_uid


def test_rules_by_outcome_and_sender(state: StateDB, spool: Spool, tmp_path: Path) -> None:
    done_job, done = _done(state, spool, tmp_path / "a", calling_ae="CT_1")
    fast_job, fast = _done(state, spool, tmp_path / "b", calling_ae="ER_CT")
    failed_study = ingest(state, spool, tmp_path / "c", calling_ae="CT_1")
    failed_job = make_job(state, failed_study)
    state.set_job_state(failed_job, JobState.FAILED, reason="worker failed")
    waiting_study = ingest(state, spool, tmp_path / "d", calling_ae="CT_1")
    make_job(state, waiting_study)  # QUEUED: never a candidate
    retention = Retention(_rules(ER_CT={"done_after_s": 10}), spool, state)
    now = utcnow()
    soon = {(c.kind, c.study_uid) for c in retention.candidates(now, 60)}
    assert soon == {("instances", fast)}  # the ER's rule is 10 s, the default an hour
    later = {(c.kind, c.study_uid, c.outcome) for c in retention.candidates(now, 3 * 3600)}
    assert later == {
        ("instances", fast, "done"), ("instances", done, "done"),
        ("instances", failed_study.study_uid, "failed"),
    }  # fmt: skip
    report = retention.run(now + datetime.timedelta(seconds=30))
    assert (report.studies, report.files) == (1, SMALL.slices)
    assert not any(p.exists() for p in _files(state, spool, fast))
    assert all(p.exists() for p in _files(state, spool, done))
    assert all(p.exists() for p in _files(state, spool, waiting_study.study_uid))
    with state.session() as s:
        purged = s.get(Study, fast)
        assert purged is not None
        assert purged.purged_at is not None
        assert purged.purged_bytes > 0
        marked = s.query(Instance).filter(Instance.study_uid == fast).all()
    assert len(marked) == SMALL.slices  # rows stay, marked
    assert all(row.purged_at is not None for row in marked)
    # Results go on their own clock; the manifest stays.
    assert (spool.job_dir(fast_job) / "seg.dcm").exists()
    retention.run(now + datetime.timedelta(days=2))
    assert not (spool.job_dir(fast_job) / "seg.dcm").exists()
    assert not (spool.job_dir(done_job) / "seg.dcm").exists()
    assert (spool.job_dir(done_job) / "manifest.json").read_bytes() == b"{}"
    # The failed study expires; a retry of it is refused with the reason.
    retention.run(now + LATER)
    assert not any(p.exists() for p in _files(state, spool, failed_study.study_uid))
    with pytest.raises(RetryRefused, match="removed by retention"):
        retry_job(state, spool, failed_job)
    assert all(p.exists() for p in _files(state, spool, waiting_study.study_uid))


def test_a_retried_or_reopened_study_is_kept(state: StateDB, spool: Spool, tmp_path: Path) -> None:
    study = ingest(state, spool, tmp_path / "s")
    job_id = make_job(state, study)
    state.set_job_state(job_id, JobState.FAILED, reason="worker failed")
    retention = Retention(_rules(), spool, state)
    planned = retention.candidates(utcnow(), 86400)
    assert [c.study_uid for c in planned] == [study.study_uid]
    # A retry between the plan and the clean-up: the study is no longer settled.
    retry_job(state, spool, job_id)
    assert retention.run(utcnow() + LATER).skipped == 0  # no longer even a candidate
    assert all(p.exists() for p in _files(state, spool, study.study_uid))
    # Its re-run fails again, then a late instance re-opens the study.
    state.set_job_state(job_id, JobState.FAILED, reason="worker failed again")
    late = SMALL.write(tmp_path / "late", accession_number="ACC-1001")
    ds = pydicom.dcmread(late.paths[0])
    target = spool.instance_path(study.study_uid, ds.SeriesInstanceUID, "1.2.826.0.1.5.1")
    state.record_instance(
        InstanceRecord(
            study_uid=study.study_uid, series_uid=ds.SeriesInstanceUID,
            sop_instance_uid="1.2.826.0.1.5.1", sop_class_uid=ds.SOPClassUID,
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=spool.relative(target),
            size=spool.write_atomic(target, late.paths[0].read_bytes()), calling_ae="CT",
            association_id=None, modality="CT", accession_number="", study_date="",
            series_attributes={},
        )
    )  # fmt: skip
    assert retention.candidates(utcnow() + LATER) == []
    assert target.exists()


def test_a_copy_stored_again_during_the_clean_up_survives(
    state: StateDB, spool: Spool, tmp_path: Path
) -> None:
    _, uid = _done(state, spool, tmp_path / "a")
    retention = Retention(_rules(), spool, state)
    (candidate,) = [c for c in retention.candidates(utcnow() + LATER) if c.kind == "instances"]
    victim = _files(state, spool, uid)[0]
    original = victim.read_bytes()
    real_remove = os.rename
    replaced: list[bool] = []

    def rename(src: object, dst: object) -> None:
        # The receiver stores a re-sent copy right after the decision was committed.
        if Path(str(src)) == victim and not replaced:
            spool.write_atomic(victim, original)
            replaced.append(True)
        real_remove(src, dst)  # type: ignore[arg-type]

    os.rename = rename  # type: ignore[assignment]
    try:
        removed = retention._purge_study(candidate, utcnow() + LATER)
    finally:
        os.rename = real_remove
    assert replaced
    assert removed is not None
    assert victim.exists(), "the copy written after the decision was removed"
    assert victim.read_bytes() == original
    # Stored again, its row is live again: the receiver's insert revives a purged row.
    ds = pydicom.dcmread(victim, stop_before_pixels=True)
    assert not state.has_instance(ds.SOPInstanceUID)
    assert state.record_instance(
        InstanceRecord(
            study_uid=uid, series_uid=ds.SeriesInstanceUID, sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID, transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
            path=spool.relative(victim), size=len(original), calling_ae="CT", association_id=None,
            modality="CT", accession_number="", study_date="", series_attributes={},
        )
    )  # fmt: skip
    assert state.has_instance(ds.SOPInstanceUID)
