"""SEG geometry as dcmqi reads it, LABELMAP SEG, burned-in Secondary Capture, multi-frame sources.

dcmqi's ``segimage2itkimage`` is the reference reader of DICOM SEG (it is what
3D Slicer uses); a SEG whose image it rebuilds with the source series' origin,
spacing and direction is placed right in any viewer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_node.phantom import PhantomStudy
from dicom_node.result_summary import segment_labels, sr_measurements
from pipelines.load import load_series
from pipelines.run import run_pipeline
from pipelines.spec import PipelineSpec
from pipelines.uids import result_uids
from pipelines.volume import Volume, to_volume
from pipelines.writers import write_seg, write_sr
from tests.judges import dciodvfy_errors
from tests.unit.pipelines.phantom_series import PipelineResult, rewrite_series
from tests.unit.pipelines.test_load_hardening import _oblique

SEGIMAGE2ITKIMAGE = Path(sys.executable).parent / "segimage2itkimage"


# dciodvfy predates Labelmap Segmentation Storage (Sup 243, 2024): a Referenced Segment
# Number in a reference to a labelmap SEG looks to it like one to a non-segmentation.
_LABELMAP_UNKNOWN = (
    "Error - Shall not be present for Referenced SOP Class that is not segmentation - "
    "attribute <ReferencedSegmentNumber>"
)


def _dciodvfy_errors_knowing_labelmap(path: Path) -> list[str]:
    """dciodvfy's errors, less the one it makes because it does not know LABELMAP SEG."""
    return [line for line in dciodvfy_errors(path) if line != _LABELMAP_UNKNOWN]


def _dcmqi_geometry(seg_path: Path, folder: Path) -> dict[str, np.ndarray]:
    """Run segimage2itkimage and read the first NRRD's sizes, origin and axis vectors."""
    tool = (
        str(SEGIMAGE2ITKIMAGE) if SEGIMAGE2ITKIMAGE.exists() else shutil.which("segimage2itkimage")
    )
    assert tool, "dcmqi is not installed (pip install dcmqi: it is in the dev extra)"
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [tool, "--inputDICOM", str(seg_path), "--outputDirectory", str(folder),
         "--outputType", "nrrd"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    header = (folder / "1.nrrd").read_bytes().split(b"\n\n", 1)[0].decode("ascii")
    fields = dict(line.split(": ", 1) for line in header.splitlines() if ": " in line)
    assert fields["space"] == "left-posterior-superior"
    vectors = [
        [float(v) for v in group.split(",")]
        for group in re.findall(r"\(([^)]*)\)", fields["space directions"])
    ]
    return {
        "sizes": np.array([int(v) for v in fields["sizes"].split()]),
        "origin": np.array([float(v) for v in re.findall(r"[-0-9.e+]+", fields["space origin"])]),
        "directions": np.array(vectors),
    }


def _assert_geometry_matches(geometry: dict[str, np.ndarray], volume: Volume) -> None:
    slices, rows, columns = volume.shape
    np.testing.assert_array_equal(geometry["sizes"], [columns, rows, slices])
    np.testing.assert_allclose(geometry["origin"], volume.affine[:3, 3], atol=1e-3)
    # NRRD axes are (column, row, slice); our affine's columns are (slice, row, column).
    expected = np.stack([volume.affine[:3, 2], volume.affine[:3, 1], volume.affine[:3, 0]])
    np.testing.assert_allclose(geometry["directions"], expected, atol=1e-3)


def test_dcmqi_rebuilds_the_source_geometry(
    pipeline_result: PipelineResult, tmp_path: Path
) -> None:
    volume = to_volume(load_series(pipeline_result.study.paths))
    geometry = _dcmqi_geometry(pipeline_result.output_dir / "seg.dcm", tmp_path)
    _assert_geometry_matches(geometry, volume)


def test_dcmqi_rebuilds_an_oblique_geometry(
    small_study: PhantomStudy, body_lung_spec: PipelineSpec, tmp_path: Path
) -> None:
    paths = rewrite_series(small_study.paths, tmp_path / "oblique", _oblique)
    run_pipeline(body_lung_spec, paths, tmp_path / "out", job_id=31)
    assert dciodvfy_errors(tmp_path / "out" / "seg.dcm") == []
    geometry = _dcmqi_geometry(tmp_path / "out" / "seg.dcm", tmp_path / "nrrd")
    _assert_geometry_matches(geometry, to_volume(load_series(paths)))


@pytest.fixture(scope="module")
def labelmap_run(
    small_study: PhantomStudy,
    body_lung_spec: PipelineSpec,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[PipelineSpec, Path, dict[str, float]]:
    data = body_lung_spec.model_dump(mode="json")
    data.update(segmentation_type="labelmap", outputs=["seg", "sr", "sc"])
    spec = PipelineSpec.model_validate(data)
    folder = tmp_path_factory.mktemp("labelmap")
    manifest = run_pipeline(spec, small_study.paths, folder, job_id=32)
    return spec, folder, manifest.measurements


def test_labelmap_seg_holds_one_label_per_pixel_and_agrees_with_the_sr(
    labelmap_run: tuple[PipelineSpec, Path, dict[str, float]], pipeline_result: PipelineResult
) -> None:
    _, folder, measurements = labelmap_run
    seg = hd.seg.segread(folder / "seg.dcm")
    assert seg.SegmentationType == "LABELMAP"
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"  # Labelmap Segmentation Storage
    volume = seg.get_volume(combine_segments=True, relabel=False)
    labels = volume.array
    counts = {n: int(np.count_nonzero(labels == n)) for n in (1, 2, 3)}
    voxel_ml = pipeline_result.manifest.measurements["body.volume_ml"] / np.count_nonzero(
        hd.seg.segread(pipeline_result.output_dir / "seg.dcm")
        .get_volume(segment_numbers=[1], combine_segments=True, relabel=False)
        .array
    )
    # Lungs win over the body where they overlap: the body segment is the body less the lungs.
    assert counts[1] * voxel_ml == pytest.approx(measurements["body.volume_ml"], rel=1e-6)
    assert measurements["body.volume_ml"] == pytest.approx(
        pipeline_result.manifest.measurements["body.volume_ml"]
        - pipeline_result.manifest.measurements["right_lung.volume_ml"]
        - pipeline_result.manifest.measurements["left_lung.volume_ml"],
        rel=1e-6,
    )
    sr = pydicom.dcmread(folder / "sr.dcm")
    assert _dciodvfy_errors_knowing_labelmap(folder / "sr.dcm") == []
    by_segment = sr_measurements(sr)
    names = {v: k for k, v in segment_labels(pydicom.dcmread(folder / "seg.dcm")).items()}
    assert by_segment[names["Body"]]["Volume"] == pytest.approx(measurements["body.volume_ml"])


def test_labelmap_seg_is_read_by_dcmqi_on_the_source_grid(
    labelmap_run: tuple[PipelineSpec, Path, dict[str, float]],
    small_study: PhantomStudy,
    tmp_path: Path,
) -> None:
    _, folder, _ = labelmap_run
    geometry = _dcmqi_geometry(folder / "seg.dcm", tmp_path)
    _assert_geometry_matches(geometry, to_volume(load_series(small_study.paths)))


def test_burned_in_secondary_capture_series(
    labelmap_run: tuple[PipelineSpec, Path, dict[str, float]], small_study: PhantomStudy
) -> None:
    spec, folder, _ = labelmap_run
    files = sorted(folder.glob("sc-*.dcm"))
    assert files
    volume = to_volume(load_series(small_study.paths))
    # One image per slice that holds a segment; the body is in every slice of the phantom.
    assert len(files) == volume.shape[0]
    first = pydicom.dcmread(files[0])
    assert dciodvfy_errors(files[0]) == []
    assert first.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert first.PhotometricInterpretation == "RGB"
    assert first.StudyInstanceUID == small_study.study_uid
    assert "burned-in overlay" in first.SeriesDescription
    assert "not for diagnosis" in first.SeriesDescription
    source_uid = first.SourceImageSequence[0].ReferencedSOPInstanceUID
    source = next(
        p for p in small_study.paths
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == source_uid
    )  # fmt: skip
    assert pydicom.dcmread(source).pixel_array.shape == first.pixel_array.shape[:2]
    # The overlay is in colour: some pixels are not grey.
    rgb = first.pixel_array.astype(int)
    assert np.any(rgb[..., 0] != rgb[..., 2])
    series = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in files}
    assert len(series) == 1


def test_seg_and_sr_of_an_enhanced_multiframe_ct(
    body_lung_spec: PipelineSpec, tmp_path: Path
) -> None:
    source = Path(str(get_testdata_file("eCT_Supplemental.dcm")))
    volume = to_volume(load_series([source]))
    mask = np.zeros(volume.shape, dtype=bool)
    mask[:, 100:200, 150:300] = True
    masks = {"body": mask, "right_lung": np.zeros_like(mask), "left_lung": mask & False}
    masks["right_lung"][1, 120:140, 160:180] = True
    uids = result_uids(
        body_lung_spec.name, body_lung_spec.version, [str(volume.datasets[0].SOPInstanceUID)]
    )
    seg = write_seg(volume, masks, body_lung_spec, uids)
    seg_path = tmp_path / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    assert dciodvfy_errors(seg_path) == []
    stats = {name: volume.measure(m) for name, m in masks.items()}
    sr = write_sr(volume, masks, seg, body_lung_spec, uids, stats)
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    assert dciodvfy_errors(sr_path) == []
    read = hd.seg.segread(seg_path)
    (series,) = read.ReferencedSeriesSequence
    assert (
        series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        == volume.datasets[0].SOPInstanceUID
    )
    for frame in read.PerFrameFunctionalGroupsSequence:
        derivation = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert int(derivation.ReferencedFrameNumber) in (1, 2)
    document = hd.sr.srread(sr_path)
    report = document.content
    assert isinstance(report, hd.sr.MeasurementReport)  # TID 1500: highdicom reads it as one
    groups = report.get_volumetric_roi_measurement_groups()
    lung = groups[1].referenced_segment
    assert lung is not None
    assert [s.referenced_frame_numbers for s in lung.source_images_for_segmentation] == [
        [volume.frame_numbers[1]]
    ]
