"""The shipped DX classification pipeline: each radiograph classified, one TID 1500 SR."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from dicom_node.phantom import PhantomStudy
from dicom_node.phantom_dx import ChestRadiographPhantom, RadiographStudy
from dicom_node.result_summary import sr_measurements
from pipelines.errors import PipelineError, UnsupportedInput
from pipelines.manifest import JobManifest, ManifestStatus
from pipelines.radiograph import load_radiographs
from pipelines.run import run_pipeline
from pipelines.spec import OutputKind, PipelineSpec, load_pipeline_specs
from pipelines.uids import result_uids
from pipelines.writers import write_classification_sr
from pipelines.writers.classification_sr import ABSENT, NO_UNITS, PRESENT, PROBABILITY
from tests.judges import dciodvfy_errors
from tests.unit.pipelines.phantom_series import SENTINEL_NAME

REPO = Path(__file__).resolve().parents[3]
FINDINGS = (True, False, True, False, False, True)


@dataclass(frozen=True)
class Classified:
    study: RadiographStudy
    manifest: JobManifest
    output_dir: Path
    log: str


@pytest.fixture(scope="module")
def dx_spec() -> PipelineSpec:
    return load_pipeline_specs(REPO / "config" / "pipelines")["dx-chest-nodule"]


@pytest.fixture(scope="module")
def classified(tmp_path_factory: pytest.TempPathFactory, dx_spec: PipelineSpec) -> Classified:
    folder = tmp_path_factory.mktemp("dx-job")
    study = ChestRadiographPhantom(size=256, seed=11).write(
        folder / "in", FINDINGS, patient_name=SENTINEL_NAME
    )
    handler = _Capture()
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        manifest = run_pipeline(dx_spec, study.paths, folder / "out", job_id=21)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return Classified(study, manifest, folder / "out", "\n".join(handler.lines))


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_manifest_has_one_sr_and_a_probability_per_image(classified: Classified) -> None:
    manifest = classified.manifest
    assert manifest.status is ManifestStatus.DONE
    assert [(o.kind, o.file) for o in manifest.outputs] == [(OutputKind.SR, "sr.dcm")]
    for number, finding in enumerate(FINDINGS, start=1):
        probability = manifest.measurements[f"nodule.probability.{number}"]
        assert (probability >= 0.5) == finding, (number, probability)
    assert manifest.measurements["nodule.probability"] == max(
        manifest.measurements[f"nodule.probability.{n}"] for n in range(1, len(FINDINGS) + 1)
    )
    assert "job=21" in classified.log
    assert SENTINEL_NAME not in classified.log
    assert "PHANTOM-DX" not in classified.log


def test_sr_passes_dciodvfy(classified: Classified) -> None:
    assert dciodvfy_errors(classified.output_dir / "sr.dcm") == []


def test_sr_holds_the_finding_code_and_probability_per_image(
    classified: Classified, dx_spec: PipelineSpec
) -> None:
    sr = hd.sr.srread(classified.output_dir / "sr.dcm")
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.StudyInstanceUID == classified.study.study_uid
    assert "not for diagnosis" in sr.SeriesDescription
    assert sr.VerificationFlag == "UNVERIFIED"
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    groups = report.get_image_measurement_groups()
    assert len(groups) == len(FINDINGS)
    sop_uids = [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in classified.study.paths
    ]
    label = dx_spec.labels[0]
    for number, (group, finding, uid) in enumerate(
        zip(groups, FINDINGS, sop_uids, strict=True), start=1
    ):
        assert group.finding_type is not None
        assert group.finding_type.value == label.type.value == "27925004"
        assert group.finding_type.scheme_designator == "SCT"
        (source,) = group.source_images
        assert source.referenced_sop_instance_uid == uid
        (probability,) = group.get_measurements(name=PROBABILITY)
        assert probability.unit == NO_UNITS
        assert probability.value == pytest.approx(
            classified.manifest.measurements[f"nodule.probability.{number}"], abs=1e-6
        )
        (presence,) = group.get_qualitative_evaluations(name=group.finding_type)
        assert presence.value == (PRESENT if finding else ABSENT)


def test_sr_evidence_lists_every_radiograph(classified: Classified) -> None:
    sr = pydicom.dcmread(classified.output_dir / "sr.dcm")
    evidence = {
        str(item.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    for path in classified.study.paths:
        assert str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) in evidence
    # The node's own summary reader sees no segment groups in a classification SR.
    assert sr_measurements(sr) == {}


def test_rerun_gives_the_same_uids(
    classified: Classified, dx_spec: PipelineSpec, tmp_path: Path
) -> None:
    again = run_pipeline(dx_spec, list(reversed(classified.study.paths)), tmp_path, job_id=22)
    assert [o.sop_instance_uid for o in again.outputs] == [
        o.sop_instance_uid for o in classified.manifest.outputs
    ]


def test_a_ct_series_is_skipped_by_the_classifier(
    dx_spec: PipelineSpec, small_study: PhantomStudy, tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedInput, match="not a projection radiograph") as raised:
        run_pipeline(dx_spec, small_study.paths[:2], tmp_path, job_id=23)
    assert raised.value.skip


def test_writer_refuses_results_that_do_not_fit(
    classified: Classified, dx_spec: PipelineSpec
) -> None:
    images = load_radiographs(classified.study.paths[:1])
    uids = result_uids(dx_spec.name, dx_spec.version, [str(images[0].header.SOPInstanceUID)])
    with pytest.raises(PipelineError, match="not in"):
        write_classification_sr(images, [{"nodule": 1.5}], dx_spec, uids)
    with pytest.raises(PipelineError, match="no probability"):
        write_classification_sr(images, [{}], dx_spec, uids)
    with pytest.raises(PipelineError, match="1 image"):
        write_classification_sr(images, [], dx_spec, uids)
