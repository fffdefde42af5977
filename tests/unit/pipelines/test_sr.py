"""The TID 1500 SR written by ``run_pipeline`` on the small phantom."""

from __future__ import annotations

import highdicom as hd
import pydicom
import pytest

from pipelines.writers.sr import HOUNSFIELD_UNIT, MEAN_ATTENUATION, MILLILITER, VOLUME
from tests.judges import dciodvfy_errors
from tests.unit.pipelines.phantom_series import PipelineResult


@pytest.fixture(scope="module")
def sr(pipeline_result: PipelineResult) -> hd.sr.Comprehensive3DSR:
    document = hd.sr.srread(pipeline_result.output_dir / "sr.dcm")
    assert isinstance(document, hd.sr.Comprehensive3DSR)
    return document


def _groups(
    sr: hd.sr.Comprehensive3DSR,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report.get_volumetric_roi_measurement_groups()


def test_dciodvfy_finds_no_error(pipeline_result: PipelineResult) -> None:
    assert dciodvfy_errors(pipeline_result.output_dir / "sr.dcm") == []


def test_identity_matches_the_manifest(
    sr: hd.sr.Comprehensive3DSR, pipeline_result: PipelineResult
) -> None:
    (entry,) = [o for o in pipeline_result.manifest.outputs if o.kind == "sr"]
    assert sr.SOPInstanceUID == entry.sop_instance_uid
    assert sr.SeriesInstanceUID == entry.series_instance_uid
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == pipeline_result.study.study_uid
    assert sr.VerificationFlag == "UNVERIFIED"
    seg_entry = next(o for o in pipeline_result.manifest.outputs if o.kind == "seg")
    assert sr.SeriesInstanceUID != seg_entry.series_instance_uid


def test_groups_reference_the_seg_and_hold_the_volumes(
    sr: hd.sr.Comprehensive3DSR, pipeline_result: PipelineResult
) -> None:
    seg_uid = next(o for o in pipeline_result.manifest.outputs if o.kind == "seg").sop_instance_uid
    groups = _groups(sr)
    assert len(groups) == 3
    measured = pipeline_result.manifest.measurements
    truth = pipeline_result.study.true_volumes_ml
    by_finding = {"38266002": "body", "3341006": "right_lung", "44029006": "left_lung"}
    seen = []
    for group in groups:
        finding, segment = group.finding_type, group.referenced_segment
        assert finding is not None
        assert segment is not None
        name = by_finding[finding.value]
        seen.append(name)
        assert segment.referenced_sop_instance_uid == seg_uid
        assert segment.referenced_segment_numbers == [seen.index(name) + 1]
        (volume,) = group.get_measurements(name=VOLUME)
        assert volume.unit == MILLILITER
        assert volume.value == pytest.approx(measured[f"{name}.volume_ml"], rel=1e-6)
        assert volume.value == pytest.approx(truth[name], rel=0.02)
        (attenuation,) = group.get_measurements(name=MEAN_ATTENUATION)
        assert attenuation.unit == HOUNSFIELD_UNIT
        assert attenuation.value == pytest.approx(measured[f"{name}.mean_hu"], abs=1e-6)
    assert seen == ["body", "right_lung", "left_lung"]


def test_tracking_uids_match_the_seg_segments(
    sr: hd.sr.Comprehensive3DSR, pipeline_result: PipelineResult
) -> None:
    seg = pydicom.dcmread(pipeline_result.output_dir / "seg.dcm", stop_before_pixels=True)
    in_seg = [str(item.TrackingUID) for item in seg.SegmentSequence]
    in_sr = [str(g.tracking_uid) for g in _groups(sr)]
    assert in_sr == in_seg


def test_evidence_lists_the_seg_and_the_source_series(
    sr: hd.sr.Comprehensive3DSR, pipeline_result: PipelineResult
) -> None:
    seg_uid = next(o for o in pipeline_result.manifest.outputs if o.kind == "seg").sop_instance_uid
    evidence = {
        str(instance.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert seg_uid in evidence
    sources = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in pipeline_result.study.paths
    }
    assert sources <= evidence


def test_each_group_names_the_source_series(
    sr: hd.sr.Comprehensive3DSR, pipeline_result: PipelineResult
) -> None:
    # Single-frame sources: one "Source Series for Segmentation" item per group (as dcmqi
    # writes it), not one image reference per slice.
    for group in _groups(sr):
        segment = group.referenced_segment
        assert segment is not None
        assert segment.source_images_for_segmentation == []
        series = segment.source_series_for_segmentation
        assert series is not None
        assert series.value == pipeline_result.study.series_uid
