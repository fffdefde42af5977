"""Cancelling a running job ends the pool process that runs it; the worker goes on.

The running job is a real MONAI bundle whose network never finishes loading
(``time.sleep``), as a model stuck on a device would. An admin cancels it
through the dashboard's API, served here in the test process on the node's
own state DB and broker.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dicom_node.phantom import ChestPhantom
from dicom_node.services import OrthancHandle, wait_until
from dicom_node.settings import load_settings
from dicom_node.state import JobState, StateDB
from dicom_node.web import create_app
from dicom_node.web.auth import hash_password
from tests.node_process import REPO, child_pids, run_node, run_worker, storescu, write_config
from tests.unit.pipelines.bundles import relabel, write_bundle_with_network, write_pipeline_yaml
from tests.unit.web.conftest import PASSWORDS, login

pytestmark = [pytest.mark.slow, pytest.mark.serial]


def _stuck_bundle(root: Path) -> Path:
    return write_bundle_with_network(root, ["$import time", "$import torch"], "$time.sleep(3600)")


def test_cancel_terminates_the_running_job_and_the_worker_goes_on(
    tmp_path: Path, broker_url: str, orthanc: OrthancHandle
) -> None:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    shutil.copy(REPO / "config" / "pipelines" / "ct-body-lung.yaml", pipelines)
    write_pipeline_yaml(
        pipelines,
        _stuck_bundle(tmp_path / "bundle"),
        selection={"rules": [{"name": "stuck", "conditions": {"SeriesDescription": "^STUCK"}}]},
    )
    small: dict[str, Any] = {
        "slices": 20,
        "size": 128,
        "pixel_spacing_mm": 2.8,
        "slice_thickness_mm": 5.0,
    }
    stuck = ChestPhantom(seed=900, **small).write(tmp_path / "stuck")
    healthy = ChestPhantom(seed=901, **small).write(tmp_path / "healthy")
    relabel(list(stuck.paths), "STUCK TEST")
    admin = {"name": "admin", "password_hash": hash_password(PASSWORDS["admin"]), "role": "admin"}
    config = write_config(
        tmp_path, broker_url, orthanc.dicom_port, pipelines_dir=str(pipelines),
        web={"session_secret": "cancel-test-secret-0123456789", "users": [admin]},
    )  # fmt: skip
    with run_node(config) as node, run_worker(config) as worker:
        db = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")
        try:
            assert storescu(node.port, list(stuck.paths)).returncode == 0

            def stuck_job_running() -> int:
                for job in db.jobs([JobState.RUNNING]):
                    if job.pipeline == "ct-test-bundle":
                        started = node.spool_dir / "jobs" / str(job.id) / "deliveries" / "1"
                        return job.id if started.exists() else 0
                return 0

            wait_until(stuck_job_running, 180, "the stuck job running on the worker")
            job_id = stuck_job_running()
            pool = set(child_pids(worker.pid))
            assert pool, "the Celery worker has no pool process"

            with TestClient(create_app(load_settings(config))) as browser:
                token = login(browser, "admin")
                answer = browser.post(f"/api/jobs/{job_id}/cancel", headers={"X-CSRF-Token": token})
            assert answer.status_code == 200, answer.text

            # The pool process that ran it is gone and a fresh one has taken its place.
            def replaced() -> bool:
                now = set(child_pids(worker.pid))
                return bool(now) and not now & pool

            wait_until(replaced, 60, "the pool process of the cancelled job replaced")

            # The worker still works: the other study goes all the way.
            assert storescu(node.port, list(healthy.paths)).returncode == 0

            def healthy_done() -> bool:
                jobs = [j for j in db.jobs(list(JobState)) if j.study_uid == healthy.study_uid]
                return bool(jobs) and all(j.state is JobState.DONE for j in jobs)

            wait_until(healthy_done, 240, "the healthy study's job DONE", interval_s=0.5)
            cancelled = db.job(job_id)
        finally:
            db.close()
    assert cancelled is not None
    assert cancelled.state is JobState.SKIPPED
    assert cancelled.reason == "cancelled by admin"
    deliveries = list((node.spool_dir / "jobs" / str(job_id) / "deliveries").iterdir())
    assert len(deliveries) == 1, "a cancelled job must not be delivered again"
