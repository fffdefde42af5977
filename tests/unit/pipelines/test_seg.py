"""The SEG written by ``run_pipeline`` on the small phantom."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from pipelines.spec import PipelineSpec
from pipelines.writers.seg import _Segmentation
from tests.judges import dciodvfy_errors
from tests.unit.pipelines.phantom_series import SMALL, PipelineResult


@pytest.fixture(scope="module")
def seg(pipeline_result: PipelineResult) -> hd.seg.Segmentation:
    return hd.seg.segread(pipeline_result.output_dir / "seg.dcm")


@pytest.fixture(scope="module")
def sources(pipeline_result: PipelineResult) -> dict[str, pydicom.Dataset]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in pipeline_result.study.paths]
    return {str(ds.SOPInstanceUID): ds for ds in headers}


def test_dciodvfy_finds_no_error(pipeline_result: PipelineResult) -> None:
    assert dciodvfy_errors(pipeline_result.output_dir / "seg.dcm") == []


def test_identity_matches_the_manifest_and_the_source(
    seg: hd.seg.Segmentation, pipeline_result: PipelineResult
) -> None:
    (entry,) = [o for o in pipeline_result.manifest.outputs if o.kind == "seg"]
    assert seg.SOPInstanceUID == entry.sop_instance_uid
    assert seg.SeriesInstanceUID == entry.series_instance_uid
    assert seg.SOPClassUID == entry.sop_class_uid == pydicom.uid.SegmentationStorage
    assert seg.StudyInstanceUID == pipeline_result.study.study_uid
    assert seg.FrameOfReferenceUID == pipeline_result.study.frame_of_reference_uid
    assert seg.SegmentationType == "BINARY"
    assert seg.Manufacturer == "dicom-node"
    assert "not for diagnosis" in seg.SeriesDescription
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == pipeline_result.study.series_uid


def test_segments_carry_the_definitions_codes(
    seg: hd.seg.Segmentation, body_lung_spec: PipelineSpec
) -> None:
    items = list(seg.SegmentSequence)
    assert [int(item.SegmentNumber) for item in items] == [1, 2, 3]
    for item, label in zip(items, body_lung_spec.labels, strict=True):
        assert item.SegmentLabel == label.label
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == label.category.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == label.type.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == body_lung_spec.algorithm_name
        assert algorithm.AlgorithmVersion == body_lung_spec.version


def test_contributing_equipment_names_the_algorithm(
    seg: hd.seg.Segmentation, body_lung_spec: PipelineSpec
) -> None:
    # IHE AIR: one item per algorithm, purpose (Newcode1, 99IHE, "Processing Algorithm").
    algorithms = [
        item
        for item in seg.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    ]
    assert len(algorithms) == 1
    assert algorithms[0].PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    assert algorithms[0].Manufacturer == "dicom-node"
    assert algorithms[0].ManufacturerModelName == body_lung_spec.algorithm_name
    assert algorithms[0].SoftwareVersions == body_lung_spec.version
    assert str(algorithms[0].DeviceUID).startswith("2.25.")


def test_frames_reference_source_slices_at_their_positions(
    seg: hd.seg.Segmentation, sources: dict[str, pydicom.Dataset]
) -> None:
    frames = list(seg.PerFrameFunctionalGroupsSequence)
    assert len(frames) == int(seg.NumberOfFrames) > 0
    for frame in frames:
        derivation = frame.DerivationImageSequence[0].SourceImageSequence[0]
        source = sources[derivation.ReferencedSOPInstanceUID]
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in source.ImagePositionPatient])


def test_pixels_hold_the_measured_volumes(
    pipeline_result: PipelineResult, seg: hd.seg.Segmentation
) -> None:
    """Voxels per segment, read back from the file, give the manifest's volumes."""
    pixels = seg.pixel_array
    numbers = [
        int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for f in seg.PerFrameFunctionalGroupsSequence
    ]
    counts = dict.fromkeys((1, 2, 3), 0)
    for frame, number in zip(pixels, numbers, strict=True):
        counts[number] += int(np.count_nonzero(frame))
    measured = pipeline_result.manifest.measurements
    for number, name in ((1, "body"), (2, "right_lung"), (3, "left_lung")):
        assert counts[number] * SMALL.voxel_volume_ml == pytest.approx(
            measured[f"{name}.volume_ml"]
        )
    # The segments overlap: the body contains both lungs.
    assert counts[1] > counts[2] + counts[3]


def test_segments_overlap_is_recorded(seg: hd.seg.Segmentation) -> None:
    # The body segment holds both lungs.
    assert seg.SegmentsOverlap == "YES"


@pytest.mark.parametrize(
    ("overlap_frame", "segments"), [(None, 3), (None, 2), (0, 3), (37, 3), (49, 2)]
)
def test_fast_overlap_check_agrees_with_highdicoms(
    overlap_frame: int | None, segments: int
) -> None:
    # Disjoint random masks, then (optionally) one shared pixel on one frame, also the
    # last frame of a partial chunk: the node's one-byte count must give highdicom's answer.
    rng = np.random.default_rng(segments)
    owner = rng.integers(0, segments + 1, size=(50, 16, 16))
    stack = np.stack([owner == s + 1 for s in range(segments)], axis=-1)
    if overlap_frame is not None:
        stack[overlap_frame, 3, 4, :2] = True
    numbers = np.arange(1, segments + 1)
    binary = hd.seg.SegmentationTypeValues.BINARY
    _, ours = _Segmentation._check_and_cast_pixel_array(stack, numbers, binary, np.uint8)
    _, theirs = hd.seg.Segmentation._check_and_cast_pixel_array(stack, numbers, binary, np.uint8)
    assert ours == theirs
    overlaps = hd.seg.SegmentsOverlapValues
    expected = overlaps.NO if overlap_frame is None else overlaps.YES
    assert ours == expected
