"""Enhanced multi-frame sources: SEG frames, source frame references, SR and overlay.

The Enhanced CT is the small phantom converted by highdicom's legacy converter
(``tests/factories.py``), split over two multi-frame files of one series with
their frames shuffled, so a SEG frame is right only if it names the right file
and frame. The Enhanced MR files are real (``/work/shared/corpus``): a Siemens
XA10 series in four files and a Philips magnitude/field-map object.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from dicom_node.phantom import PhantomStudy
from dicom_node.web.overlay import render_overlay
from pipelines import algorithms
from pipelines.manifest import JobManifest
from pipelines.run import run_pipeline
from pipelines.spec import PipelineSpec
from pipelines.volume import Volume
from tests.factories import enhanced_ct, frame_positions
from tests.judges import dciodvfy_errors
from tests.unit.pipelines.phantom_series import PipelineResult

CORPUS = Path("/work/shared/corpus")


def _frame_references(seg: pydicom.Dataset) -> list[tuple[str, int, np.ndarray]]:
    """(source SOP Instance UID, source frame, SEG frame position) of every SEG frame."""
    out = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (derivation,) = frame.DerivationImageSequence
        (source,) = derivation.SourceImageSequence
        position = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        out.append(
            (str(source.ReferencedSOPInstanceUID), int(source.ReferencedFrameNumber), position)
        )
    return out


def _positions_by_frame(paths: list[Path]) -> dict[tuple[str, int], np.ndarray]:
    found = {}
    for path in paths:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        for number, position in frame_positions(path).items():
            found[(uid, number)] = position
    return found


@pytest.fixture(scope="module")
def enhanced_run(
    small_study: PhantomStudy,
    body_lung_spec: PipelineSpec,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[Path], Path, JobManifest]:
    folder = tmp_path_factory.mktemp("enhanced")
    files = enhanced_ct(small_study.paths, folder / "in", files=2)
    manifest = run_pipeline(body_lung_spec, files, folder / "out", job_id=51)
    return files, folder / "out", manifest


def test_seg_of_an_enhanced_ct_in_two_files_names_each_frames_source(
    enhanced_run: tuple[list[Path], Path, JobManifest],
) -> None:
    files, out, _ = enhanced_run
    assert dciodvfy_errors(out / "seg.dcm") == []
    seg = hd.seg.segread(out / "seg.dcm")
    positions = _positions_by_frame(files)
    references = _frame_references(seg)
    for uid, number, position in references:
        np.testing.assert_allclose(position, positions[(uid, number)], atol=1e-4)
    # Both files hold frames of the segments, and each source frame is used.
    assert {(uid, number) for uid, number, _ in references} == set(positions)
    (series,) = seg.ReferencedSeriesSequence
    assert {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence} == {
        uid for uid, _ in positions
    }
    # highdicom's own reader finds the frames by source frame.
    uid, number, _ = references[0]
    pixels = seg.get_pixels_by_source_frame(uid, [number], ignore_spatial_locations=True)
    assert pixels.shape[0] == 1


def test_enhanced_ct_gives_the_same_masks_and_measurements_as_its_slices(
    enhanced_run: tuple[list[Path], Path, JobManifest], pipeline_result: PipelineResult
) -> None:
    _, out, manifest = enhanced_run
    for name, value in pipeline_result.manifest.measurements.items():
        assert manifest.measurements[name] == pytest.approx(value, rel=1e-6), name
    by_position = {}
    seg = pydicom.dcmread(out / "seg.dcm")
    for index, (_, _, position) in enumerate(_frame_references(seg)):
        number = int(
            seg.PerFrameFunctionalGroupsSequence[index]
            .SegmentIdentificationSequence[0]
            .ReferencedSegmentNumber
        )
        by_position[(number, *np.round(position, 2))] = seg.pixel_array[index]
    plain = pydicom.dcmread(pipeline_result.output_dir / "seg.dcm")
    for index, frame in enumerate(plain.PerFrameFunctionalGroupsSequence):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        values = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        key = (number, *np.round(values, 2))
        np.testing.assert_array_equal(by_position[key], plain.pixel_array[index])


def test_sr_of_an_enhanced_ct_names_the_frames_per_file(
    enhanced_run: tuple[list[Path], Path, JobManifest],
) -> None:
    files, out, _ = enhanced_run
    assert dciodvfy_errors(out / "sr.dcm") == []
    report = hd.sr.srread(out / "sr.dcm").content
    assert isinstance(report, hd.sr.MeasurementReport)
    positions = _positions_by_frame(files)
    for group in report.get_volumetric_roi_measurement_groups():
        segment = group.referenced_segment
        assert segment is not None
        sources = segment.source_images_for_segmentation
        assert len(sources) == 2  # one item per multi-frame file
        for source in sources:
            assert source.referenced_frame_numbers
            for number in source.referenced_frame_numbers:
                assert (source.referenced_sop_instance_uid, number) in positions


def test_overlay_of_an_enhanced_ct_draws_on_the_right_frames(
    enhanced_run: tuple[list[Path], Path, JobManifest],
    small_study: PhantomStudy,
    pipeline_result: PipelineResult,
) -> None:
    """The same picture as for the single-frame slices: same frames, same places."""
    files, out, _ = enhanced_run
    picture = render_overlay(out / "seg.dcm", files, slices=3, tile_px=64)
    reference = render_overlay(
        pipeline_result.output_dir / "seg.dcm", list(small_study.paths), slices=3, tile_px=64
    )
    assert picture == reference


def _brightest(
    fraction: float,
) -> Callable[[], Callable[[Volume], dict[str, npt.NDArray[np.bool_]]]]:
    """A test-only built-in for MR: the brightest ``fraction`` of the voxels is ``body``."""

    def segment(volume: Volume) -> dict[str, npt.NDArray[np.bool_]]:
        return {"body": volume.array > np.quantile(volume.array, 1.0 - fraction)}

    return lambda: segment


@pytest.fixture
def mr_spec(body_lung_spec: PipelineSpec, monkeypatch: pytest.MonkeyPatch) -> PipelineSpec:
    monkeypatch.setitem(algorithms._BUILTINS, "test_brightest", _brightest(0.3))
    data = body_lung_spec.model_dump(mode="json")
    data.update(
        name="mr-test-brightest",
        model={"kind": "builtin", "name": "test_brightest"},
        labels=[data["labels"][0]],
    )
    return PipelineSpec.model_validate(data)


@pytest.mark.parametrize(
    ("folder", "frames"),
    [("enhanced-mr-siemens-xa10", 6), ("enhanced-mr-philips-fmap", 32)],
)
def test_real_enhanced_mr_seg_lies_on_its_source_frames(
    folder: str, frames: int, mr_spec: PipelineSpec, tmp_path: Path
) -> None:
    paths = sorted((CORPUS / folder).iterdir())
    manifest = run_pipeline(mr_spec, paths, tmp_path, job_id=52)
    assert manifest.measurements["body.volume_ml"] > 0
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    positions = _positions_by_frame(paths)
    references = _frame_references(seg)
    assert len({(uid, number) for uid, number, _ in references}) == frames
    for uid, number, position in references:
        np.testing.assert_allclose(position, positions[(uid, number)], atol=1e-4)
    # One stack: every frame comes from one pass (XA: the first time point, Philips:
    # the magnitude frames), never from the field map or a later repetition.
    used = {uid for uid, _, _ in references}
    assert len(used) == 1
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert used == {str(first.SOPInstanceUID)}
    if folder == "enhanced-mr-philips-fmap":
        for _, number, _ in references:
            frame = first.PerFrameFunctionalGroupsSequence[number - 1]
            assert frame.MRImageFrameTypeSequence[0].FrameType[3] == "M"
