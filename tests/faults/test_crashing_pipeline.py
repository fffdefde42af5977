"""A pipeline that kills its worker process every time: FAILED after the attempt limit,
while other studies go through untouched.

The pipeline is a real MONAI bundle whose ``network_def`` kills the process that
instantiates it, as a model that segfaults or exhausts memory on load would.
Celery requeues a task whose worker process died without any limit; the node's
delivery count must end it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from dicom_node.phantom import ChestPhantom
from dicom_node.services import OrthancHandle, orthanc_rest, wait_until
from dicom_node.state import JobState, StateDB
from tests.node_process import REPO, run_node, run_worker, storescu, write_config
from tests.unit.pipelines.bundles import relabel, write_bundle_with_network, write_pipeline_yaml

pytestmark = [pytest.mark.slow, pytest.mark.serial]


def _crashing_bundle(root: Path) -> Path:
    imports = ["$import os", "$import signal", "$import torch"]
    return write_bundle_with_network(root, imports, "$os.kill(os.getpid(), signal.SIGKILL)")


@pytest.mark.parametrize("round_", [1, 2])
def test_pipeline_that_kills_its_worker_fails_after_the_limit(
    tmp_path: Path, broker_url: str, orthanc: OrthancHandle, round_: int
) -> None:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    shutil.copy(REPO / "config" / "pipelines" / "ct-body-lung.yaml", pipelines)
    bundle = _crashing_bundle(tmp_path / "bundle")
    write_pipeline_yaml(
        pipelines,
        bundle,
        selection={"rules": [{"name": "crash", "conditions": {"SeriesDescription": "^CRASH"}}]},
    )
    small: dict[str, Any] = {
        "slices": 20,
        "size": 128,
        "pixel_spacing_mm": 2.8,
        "slice_thickness_mm": 5.0,
    }
    crashing = ChestPhantom(seed=600 + round_, **small).write(tmp_path / "crash")
    healthy = ChestPhantom(seed=700 + round_, **small).write(tmp_path / "healthy")
    relabel(list(crashing.paths), "CRASH TEST")
    config = write_config(
        tmp_path, broker_url, orthanc.dicom_port,
        pipelines_dir=str(pipelines), jobs={"max_attempts": 2},
    )  # fmt: skip
    with run_node(config) as node, run_worker(config):
        db = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")
        try:
            assert storescu(node.port, list(crashing.paths)).returncode == 0
            assert storescu(node.port, list(healthy.paths)).returncode == 0

            def settled() -> bool:
                jobs = db.jobs(list(JobState))
                return len(jobs) == 3 and all(
                    j.state in (JobState.DONE, JobState.FAILED) for j in jobs
                )

            wait_until(settled, 240, "every job DONE or FAILED", interval_s=0.5)
            by_pipeline = {(j.study_uid, j.pipeline): j for j in db.jobs(list(JobState))}
        finally:
            db.close()
    crash_job = by_pipeline[(crashing.study_uid, "ct-test-bundle")]
    assert crash_job.state is JobState.FAILED
    assert "gave up after 2 attempts" in crash_job.reason
    deliveries = list((node.spool_dir / "jobs" / str(crash_job.id) / "deliveries").iterdir())
    assert len(deliveries) == 3, "two deliveries died, the third one ended it"
    # The other pipeline on the same study, and the other study, are unaffected.
    assert by_pipeline[(crashing.study_uid, "ct-body-lung")].state is JobState.DONE
    assert by_pipeline[(healthy.study_uid, "ct-body-lung")].state is JobState.DONE
    found = orthanc_rest(
        orthanc.http_url,
        "/tools/find",
        {"Level": "Series", "Query": {"StudyInstanceUID": healthy.study_uid}, "Expand": True},
    )
    assert {s["MainDicomTags"]["Modality"] for s in found} >= {"SEG", "SR"}
