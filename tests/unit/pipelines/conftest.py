"""Fixtures of the pipeline unit tests: a small phantom and its pipeline run.

Strict pydicom writing is the autouse fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.phantom import PhantomStudy
from pipelines.run import run_pipeline
from pipelines.spec import PipelineSpec, load_pipeline_specs
from tests.factories import TiltedStudy, tilted_uneven_ct
from tests.unit.pipelines.phantom_series import SENTINEL_NAME, SMALL, PipelineResult

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """The small phantom on disk, written once; tests must not modify its files."""
    return SMALL.write(tmp_path_factory.mktemp("small-phantom"), patient_name=SENTINEL_NAME)


@pytest.fixture(scope="session")
def body_lung_spec() -> PipelineSpec:
    """The shipped ``ct-body-lung`` definition."""
    return load_pipeline_specs(REPO / "config" / "pipelines")["ct-body-lung"]


@pytest.fixture(scope="session")
def pipeline_result(
    small_study: PhantomStudy,
    body_lung_spec: PipelineSpec,
    tmp_path_factory: pytest.TempPathFactory,
) -> PipelineResult:
    """``run_pipeline`` on the small phantom, once per session."""
    output_dir = tmp_path_factory.mktemp("job-1")
    manifest = run_pipeline(body_lung_spec, small_study.paths, output_dir, job_id=1)
    return PipelineResult(study=small_study, manifest=manifest, output_dir=output_dir)


@pytest.fixture(scope="session")
def tilted_study(tmp_path_factory: pytest.TempPathFactory) -> TiltedStudy:
    """The small phantom through an 18-degree gantry tilt, in runs of 4 mm then 7 mm."""
    return tilted_uneven_ct(tmp_path_factory.mktemp("tilted-phantom"), SMALL)
