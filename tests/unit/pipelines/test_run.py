"""``run_pipeline``: manifest, files, determinism, refusals, no PHI in logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dicom_node.phantom import PhantomStudy
from pipelines.errors import InconsistentGeometry, PipelineConfigError
from pipelines.manifest import ManifestStatus
from pipelines.run import run_pipeline
from pipelines.spec import (
    CodeSpec,
    LabelSpec,
    ModelKind,
    ModelSpec,
    OutputKind,
    PipelineSpec,
    PreprocessingSpec,
)
from tests.unit.pipelines.phantom_series import SENTINEL_NAME, PipelineResult


def test_manifest_reports_outputs_measurements_and_timings(
    pipeline_result: PipelineResult,
) -> None:
    manifest = pipeline_result.manifest
    assert manifest.status is ManifestStatus.DONE
    assert manifest.job_id == 1
    assert [(o.kind, o.file) for o in manifest.outputs] == [
        (OutputKind.SEG, "seg.dcm"),
        (OutputKind.SR, "sr.dcm"),
    ]
    # Only the results: no temporary file is left behind, and no manifest (the task writes it).
    assert sorted(p.name for p in pipeline_result.output_dir.iterdir()) == ["seg.dcm", "sr.dcm"]
    assert set(manifest.timings_s) == {"load", "infer", "write"}
    assert all(t >= 0 for t in manifest.timings_s.values())
    truth = pipeline_result.study.true_volumes_ml
    for name in ("body", "right_lung", "left_lung"):
        assert manifest.measurements[f"{name}.volume_ml"] == pytest.approx(truth[name], rel=0.02)
    assert manifest.measurements["right_lung.mean_hu"] == pytest.approx(-850, abs=50)
    assert -300 < manifest.measurements["body.mean_hu"] < 0


def test_rerun_gives_the_same_uids_and_logs_no_phi(
    pipeline_result: PipelineResult,
    body_lung_spec: PipelineSpec,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        again = run_pipeline(body_lung_spec, pipeline_result.study.paths, tmp_path, job_id=2)
    first = [(o.sop_instance_uid, o.series_instance_uid) for o in pipeline_result.manifest.outputs]
    assert [(o.sop_instance_uid, o.series_instance_uid) for o in again.outputs] == first
    assert "job=2" in caplog.text
    for secret in (SENTINEL_NAME, "SENTINEL", "PHANTOM-0001", "ACC0001"):
        assert secret not in caplog.text


def test_changed_input_set_gives_new_uids(
    pipeline_result: PipelineResult, body_lung_spec: PipelineSpec, tmp_path: Path
) -> None:
    fewer = pipeline_result.study.paths[:-1]
    other = run_pipeline(body_lung_spec, fewer, tmp_path, job_id=3)
    before = {o.sop_instance_uid for o in pipeline_result.manifest.outputs}
    before |= {o.series_instance_uid for o in pipeline_result.manifest.outputs}
    after = {o.sop_instance_uid for o in other.outputs} | {
        o.series_instance_uid for o in other.outputs
    }
    assert before.isdisjoint(after)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (ModelSpec(kind=ModelKind.BUNDLE, path=Path("/models/spleen")), "does not exist"),
        (
            ModelSpec(
                kind=ModelKind.TORCHSCRIPT,
                path=Path("/models/model.ts"),
                preprocessing=PreprocessingSpec(spatial_size=[64, 64, 64]),
            ),
            "does not exist",
        ),
    ],
)
def test_missing_model_files_are_a_config_error_before_any_output(
    small_study: PhantomStudy,
    body_lung_spec: PipelineSpec,
    tmp_path: Path,
    model: ModelSpec,
    message: str,
) -> None:
    spec = body_lung_spec.model_copy(update={"model": model})
    with pytest.raises(PipelineConfigError, match=message):
        run_pipeline(spec, small_study.paths, tmp_path, job_id=4)
    assert not any(tmp_path.iterdir())


def test_an_sr_alone_writes_the_seg_it_refers_to(
    small_study: PhantomStudy, body_lung_spec: PipelineSpec, tmp_path: Path
) -> None:
    spec = body_lung_spec.model_copy(update={"outputs": [OutputKind.SR]})
    manifest = run_pipeline(spec, small_study.paths, tmp_path, job_id=5)
    assert [o.kind for o in manifest.outputs] == [OutputKind.SEG, OutputKind.SR]


def test_label_the_model_does_not_produce_is_a_config_error(
    small_study: PhantomStudy, body_lung_spec: PipelineSpec, tmp_path: Path
) -> None:
    liver = LabelSpec(
        value=4,
        name="liver",
        label="Liver",
        category=CodeSpec(value="123037004", meaning="Anatomical Structure"),
        type=CodeSpec(value="10200004", meaning="Liver"),
    )
    spec = body_lung_spec.model_copy(update={"labels": [*body_lung_spec.labels, liver]})
    with pytest.raises(PipelineConfigError, match="does not produce label"):
        run_pipeline(spec, small_study.paths, tmp_path, job_id=6)


def test_seg_only_pipeline_writes_only_the_seg(
    small_study: PhantomStudy, body_lung_spec: PipelineSpec, tmp_path: Path
) -> None:
    spec = body_lung_spec.model_copy(update={"outputs": [OutputKind.SEG]})
    manifest = run_pipeline(spec, small_study.paths, tmp_path, job_id=7)
    assert [o.kind for o in manifest.outputs] == [OutputKind.SEG]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]


def test_geometry_refusal_propagates_with_its_reason(
    small_study: PhantomStudy, body_lung_spec: PipelineSpec, tmp_path: Path
) -> None:
    gap = [p for k, p in enumerate(small_study.paths) if k != 12]
    with pytest.raises(InconsistentGeometry, match="spacing is not uniform"):
        run_pipeline(body_lung_spec, gap, tmp_path, job_id=8)
    assert not any(tmp_path.iterdir())
