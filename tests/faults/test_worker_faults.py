"""Exactly once through crashes: killed workers, a restarted or flushed Redis, a dead archive.

Every part is real and every fault is real: processes get SIGKILL, redis-server
and Orthanc are stopped and started again. "Exactly once" is checked in Orthanc:
one SEG series and one SR per input series, whatever was redelivered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.services import (
    OrthancHandle,
    free_port,
    orthanc_rest,
    run_orthanc,
    run_redis,
    wait_until,
)
from dicom_node.state import JobState, StateDB
from tests.node_process import REPO, child_pids, run_node, run_worker, storescu, write_config

pytestmark = [pytest.mark.slow, pytest.mark.serial]


def _study(folder: Path, seed: int, slices: int = 40, size: int = 256) -> PhantomStudy:
    return ChestPhantom(
        slices=slices, size=size, pixel_spacing_mm=358.4 / size, slice_thickness_mm=5.0, seed=seed
    ).write(folder)


def _result_counts(orthanc: OrthancHandle, study_uid: str) -> dict[str, int]:
    """Instances per result modality that the archive holds for a study."""
    found = orthanc_rest(
        orthanc.http_url,
        "/tools/find",
        {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
    )
    counts: dict[str, int] = {}
    for series in found:
        modality = series["MainDicomTags"].get("Modality", "")
        if modality in ("SEG", "SR"):
            counts[modality] = counts.get(modality, 0) + len(series["Instances"])
            counts[f"{modality} series"] = counts.get(f"{modality} series", 0) + 1
    return counts


def _wait_done(db: StateDB, timeout: float = 240) -> None:
    def done() -> bool:
        jobs = db.jobs(list(JobState))
        failed = [j for j in jobs if j.state in (JobState.FAILED, JobState.SKIPPED)]
        assert not failed, f"job ended {failed[0].state}: {failed[0].reason}"
        return bool(jobs) and all(j.state is JobState.DONE for j in jobs)

    wait_until(done, timeout, "every job DONE", interval_s=0.25)


def _exactly_once(orthanc: OrthancHandle, study_uid: str) -> None:
    assert _result_counts(orthanc, study_uid) == {
        "SEG": 1,
        "SEG series": 1,
        "SR": 1,
        "SR series": 1,
    }


@pytest.fixture
def db_of() -> Iterator[list[StateDB]]:
    opened: list[StateDB] = []
    yield opened
    for db in opened:
        db.close()


@pytest.mark.parametrize("round_", [1, 2])
def test_worker_killed_mid_inference_still_exactly_once(
    tmp_path: Path, broker_url: str, orthanc: OrthancHandle, db_of: list[StateDB], round_: int
) -> None:
    study = _study(tmp_path / "ct", seed=100 + round_, slices=100, size=512)
    config = write_config(tmp_path, broker_url, orthanc.dicom_port)
    with run_node(config) as node, run_worker(config) as worker:
        db = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")
        db_of.append(db)
        assert storescu(node.port, list(study.paths)).returncode == 0
        first_delivery = node.spool_dir / "jobs" / "1" / "deliveries" / "1"
        wait_until(first_delivery.exists, 120, "the job to start on the worker", interval_s=0.02)
        # The job is running in a pool process: kill that process, as the OOM killer would.
        pool = child_pids(worker.pid)
        assert pool, "the Celery worker has no pool process"
        for pid in pool:
            os.kill(pid, signal.SIGKILL)
        _wait_done(db)
        deliveries = list((node.spool_dir / "jobs" / "1" / "deliveries").iterdir())
        assert len(deliveries) == 2, "the kill must land mid-job and the job run again"
    _exactly_once(orthanc, study.study_uid)


@pytest.mark.parametrize("fault", ["restart", "flush"])
def test_redis_restart_or_flush_with_jobs_queued_loses_nothing(
    tmp_path: Path, orthanc: OrthancHandle, db_of: list[StateDB], fault: str
) -> None:
    studies = [_study(tmp_path / f"ct{i}", seed=200 + i) for i in range(2)]
    redis_dir, redis_port = tmp_path / "redis", free_port()
    broker = f"redis://127.0.0.1:{redis_port}/0"
    config = write_config(
        tmp_path,
        broker,
        orthanc.dicom_port,
        jobs={"lost_check_seconds": 1, "lost_grace_seconds": 2},
    )
    with run_node(config) as node:
        db = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")
        db_of.append(db)
        with run_redis(redis_dir, redis_port):
            for study in studies:
                assert storescu(node.port, list(study.paths)).returncode == 0

            def all_sent() -> bool:
                jobs = db.jobs([JobState.QUEUED])
                return len(jobs) == 2 and all(j.dispatched_at is not None for j in jobs)

            wait_until(all_sent, 60, "both jobs in the broker")
            client = redis.Redis(port=redis_port)
            assert client.llen("cpu") == 2
            if fault == "flush":
                client.flushall()
            client.close()
        # redis-server is stopped (SIGTERM: its AOF is written); the node keeps running.
        with run_redis(redis_dir, redis_port), run_worker(config):
            _wait_done(db)
    for study in studies:
        _exactly_once(orthanc, study.study_uid)


def _archive(folder: Path, dicom_port: int, http_port: int) -> ExitStack:
    stack = ExitStack()
    stack.enter_context(run_orthanc(folder, dicom_port, http_port))
    return stack


def test_archive_down_then_back_delivers_without_help(
    tmp_path: Path, broker_url: str, db_of: list[StateDB]
) -> None:
    study = _study(tmp_path / "ct", seed=300)
    archive_dir, dicom_port, http_port = tmp_path / "orthanc", free_port(), free_port()
    config = write_config(
        tmp_path, broker_url, dicom_port,
        export={"max_attempts": 40, "backoff_initial_s": 0.5, "backoff_max_s": 1},
    )  # fmt: skip
    with run_node(config) as node, run_worker(config):
        db = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")
        db_of.append(db)
        assert storescu(node.port, list(study.paths)).returncode == 0

        def export_failed_twice() -> bool:
            rows = [r for j in db.jobs(list(JobState)) for r in db.exports_of(j.id)]
            return bool(rows) and all(r.attempts >= 2 and r.last_error for r in rows)

        wait_until(export_failed_twice, 120, "exports failing while the archive is down")
        with _archive(archive_dir, dicom_port, http_port):
            _wait_done(db, timeout=120)
            handle = OrthancHandle(dicom_port, http_port, "ORTHANC", 0, archive_dir)
            _exactly_once(handle, study.study_uid)


def test_archive_down_past_the_budget_fails_visibly_and_retry_delivers(
    tmp_path: Path, broker_url: str, db_of: list[StateDB]
) -> None:
    study = _study(tmp_path / "ct", seed=400)
    archive_dir, dicom_port, http_port = tmp_path / "orthanc", free_port(), free_port()
    config = write_config(
        tmp_path, broker_url, dicom_port,
        export={"max_attempts": 2, "backoff_initial_s": 0.5, "backoff_max_s": 0.5},
    )  # fmt: skip
    with run_node(config) as node, run_worker(config):
        db = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")
        db_of.append(db)
        assert storescu(node.port, list(study.paths)).returncode == 0

        def failed() -> bool:
            return bool(db.jobs([JobState.FAILED]))

        wait_until(failed, 180, "the job FAILED after the export budget")
        (job,) = db.jobs([JobState.FAILED])
        assert "export: delivery to archive failed after 2 attempts" in job.reason
        assert "not established" in job.reason
        with _archive(archive_dir, dicom_port, http_port):
            result = subprocess.run(
                [sys.executable, "-m", "dicom_node", "retry", str(job.id), "--config", str(config)],
                capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert "will be sent again" in result.stdout
            _wait_done(db, timeout=120)
            handle = OrthancHandle(dicom_port, http_port, "ORTHANC", 0, archive_dir)
            _exactly_once(handle, study.study_uid)


def test_whole_worker_killed_then_replaced_still_exactly_once(
    tmp_path: Path, broker_url: str, orthanc: OrthancHandle, db_of: list[StateDB]
) -> None:
    """The worker's main process dies too: its reserved message would wait an hour in
    Redis (the visibility timeout); the node notices no live worker runs it."""
    study = _study(tmp_path / "ct", seed=500, slices=100, size=512)
    config = write_config(
        tmp_path, broker_url, orthanc.dicom_port,
        jobs={"lost_check_seconds": 1, "lost_grace_seconds": 2},
    )  # fmt: skip
    with run_node(config) as node:
        db = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")
        db_of.append(db)
        with run_worker(config) as worker:
            assert storescu(node.port, list(study.paths)).returncode == 0
            first_delivery = node.spool_dir / "jobs" / "1" / "deliveries" / "1"
            wait_until(first_delivery.exists, 120, "the job to start", interval_s=0.02)
            for pid in [*child_pids(worker.pid), worker.pid]:
                os.kill(pid, signal.SIGKILL)
            worker.wait(timeout=10)
        assert db.jobs([JobState.DONE]) == []
        with run_worker(config):
            _wait_done(db)
        job = db.job(1)
        assert job is not None
        assert job.attempts == 2, "the node must have sent the orphaned job again"
    _exactly_once(orthanc, study.study_uid)
