"""Fixtures of the pipeline unit tests: a small phantom and its pipeline run.

Strict pydicom writing is the autouse fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.phantom import PhantomStudy
from dicom_node.phantom_dx import ChestRadiographPhantom
from pipelines.run import run_pipeline
from pipelines.spec import OutputKind, PipelineSpec, load_pipeline_specs
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
def every_kind(
    small_study: PhantomStudy,
    body_lung_spec: PipelineSpec,
    tmp_path_factory: pytest.TempPathFactory,
) -> PipelineResult:
    """``run_pipeline`` asked for every result kind, the lungs marked as findings."""
    labels = [
        label.model_copy(update={"finding": label.name != "body"})
        for label in body_lung_spec.labels
    ]
    spec = body_lung_spec.model_copy(update={"labels": labels})
    output_dir = tmp_path_factory.mktemp("job-every-kind")
    manifest = run_pipeline(spec, small_study.paths, output_dir, job_id=2, outputs=list(OutputKind))
    return PipelineResult(study=small_study, manifest=manifest, output_dir=output_dir)


@pytest.fixture(scope="session")
def classified_every_kind(tmp_path_factory: pytest.TempPathFactory) -> PipelineResult:
    """The shipped DX classifier asked for SR, KOS and PDF on radiographs, some with a nodule."""
    spec = load_pipeline_specs(REPO / "config" / "pipelines")["dx-chest-nodule"]
    folder = tmp_path_factory.mktemp("dx-every-kind")
    study = ChestRadiographPhantom(size=256, seed=11).write(folder / "in", (True, False, True))
    manifest = run_pipeline(spec, study.paths, folder / "out", job_id=3, outputs=list(OutputKind))
    return PipelineResult(study=study, manifest=manifest, output_dir=folder / "out")  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tilted_study(tmp_path_factory: pytest.TempPathFactory) -> TiltedStudy:
    """The small phantom through an 18-degree gantry tilt, in runs of 4 mm then 7 mm."""
    return tilted_uneven_ct(tmp_path_factory.mktemp("tilted-phantom"), SMALL)
