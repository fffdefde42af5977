"""Volumes of series as scanners send them: repeated passes, runs of spacing, gantry tilt.

A sheared or unevenly spaced stack becomes a regular grid for the model, and
masks on that grid go back onto the source slices; these tests check both
directions against the phantom's known anatomy and the source pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.phantom import PhantomLabel, PhantomStudy
from pipelines.errors import InconsistentGeometry, UnsupportedInput
from pipelines.load import load_series
from pipelines.volume import MAX_TILT_DEG, to_volume
from tests.factories import TiltedStudy
from tests.unit.pipelines.phantom_series import SMALL, rewrite_series

CORPUS = Path("/work/shared/corpus")


def test_tilted_uneven_stack_becomes_a_regular_unsheared_grid(tilted_study: TiltedStudy) -> None:
    volume = to_volume(load_series(tilted_study.study.paths))
    plan = volume.resampling
    assert plan is not None
    assert plan.tilt_deg == pytest.approx(tilted_study.tilt_deg, abs=0.05)
    cos = math.cos(math.radians(tilted_study.tilt_deg))
    assert [(run.slices, round(run.spacing_mm, 3)) for run in plan.runs] == [
        (11, round(4.0 * cos, 3)),
        (13, round(7.0 * cos, 3)),
    ]
    # The grid steps along the true normal, at the finest spacing, with orthogonal axes.
    normal = volume.slice_normal
    np.testing.assert_allclose(volume.affine[:3, 0] / volume.spacing[0], normal, atol=1e-9)
    assert volume.affine[:3, 0] @ volume.affine[:3, 1] == pytest.approx(0.0, abs=1e-9)
    extent = sum(tilted_study.steps_mm) * cos
    assert volume.spacing[0] == pytest.approx(extent / round(extent / (4.0 * cos)))
    # Every source slice keeps its header, frame and own position, feet to head.
    assert volume.source_shape == (len(tilted_study.planes), SMALL.size, SMALL.size)
    np.testing.assert_allclose(
        volume.source_positions, [plane.position for plane in tilted_study.planes], atol=1e-4
    )
    # Wider than a slice: the grid holds every sheared slice whole.
    assert volume.shape[1] > SMALL.size
    assert volume.voxel_volume_ml == pytest.approx(
        volume.spacing[0] * SMALL.pixel_spacing_mm**2 / 1000
    )


def test_grid_samples_the_source_where_source_slices_lie(tilted_study: TiltedStudy) -> None:
    """Grid pixel (R, C) on source slice k's plane is source pixel (R - off_r, C - off_c)."""
    volume = to_volume(load_series(tilted_study.study.paths))
    plan = volume.resampling
    assert plan is not None
    on_grid = [k for k, j in enumerate(plan.grid_index) if abs(j - round(j)) < 1e-6]
    assert len(on_grid) >= 3  # the first, the 4 mm run, the last
    rows, columns = np.meshgrid(np.arange(30, 90), np.arange(30, 90), indexing="ij")
    for k in on_grid:
        row_offset, column_offset = plan.offsets[k]
        expected = _bilinear(volume.source_array[k], rows - row_offset, columns - column_offset)
        grid = volume.array[round(plan.grid_index[k])][rows, columns]
        np.testing.assert_allclose(grid, expected, atol=1e-2)


def _bilinear(plane: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    r0, c0 = np.floor(rows).astype(int), np.floor(columns).astype(int)
    fr, fc = rows - r0, columns - c0
    return np.asarray(
        plane[r0, c0] * (1 - fr) * (1 - fc)
        + plane[r0 + 1, c0] * fr * (1 - fc)
        + plane[r0, c0 + 1] * (1 - fr) * fc
        + plane[r0 + 1, c0 + 1] * fr * fc
    )


def test_masks_on_the_grid_come_back_onto_the_source_planes(tilted_study: TiltedStudy) -> None:
    """Thresholding the grid then mapping back equals thresholding each source slice."""
    volume = to_volume(load_series(tilted_study.study.paths))
    back = volume.on_source_planes(volume.array > -400.0)
    direct = volume.source_array > -400.0
    assert back.shape == direct.shape
    # Only partial-volume pixels on edges may differ (interpolation between slices).
    assert np.mean(back != direct) < 0.01
    air = [PhantomLabel.AIR, PhantomLabel.RIGHT_LUNG, PhantomLabel.LEFT_LUNG, PhantomLabel.AIRWAY]
    truth = np.stack(
        [~np.isin(tilted_study.phantom.plane_labels(p), air) for p in tilted_study.planes]
    )
    assert np.mean(back[:, 10:-10, 10:-10] == truth[:, 10:-10, 10:-10]) > 0.98
    with pytest.raises(ValueError, match="expected"):
        volume.on_source_planes(direct)


def test_a_plain_series_is_not_resampled(small_study: PhantomStudy) -> None:
    volume = to_volume(load_series(small_study.paths))
    assert volume.resampling is None
    mask = volume.array > 0
    assert volume.on_source_planes(mask) is mask
    assert volume.source_array is volume.array
    np.testing.assert_allclose(volume.slice_normal, [0, 0, 1])


def test_gantry_tilt_is_resampled_and_its_angle_kept(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    """Axial slices whose positions step 15 degrees off the normal: a tilted gantry."""

    def tilt(dataset: Dataset, index: int) -> None:
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        shift = index * SMALL.slice_thickness_mm * np.tan(np.radians(15.0))
        dataset.ImagePositionPatient = [x, round(y + shift, 4), z]

    volume = to_volume(load_series(rewrite_series(small_study.paths, tmp_path, tilt)))
    assert volume.resampling is not None
    assert volume.resampling.tilt_deg == pytest.approx(15.0, abs=0.01)
    assert volume.spacing[0] == pytest.approx(SMALL.slice_thickness_mm)
    # Each slice moved down the rows by its shift: 0, 0.67, 1.34 ... pixels.
    steps = np.diff(volume.resampling.offsets[:, 0])
    expected = 5.0 * np.tan(np.radians(15.0)) / SMALL.pixel_spacing_mm
    np.testing.assert_allclose(steps, expected, atol=1e-4)  # positions have 4 decimals


def test_a_shear_beyond_any_gantry_is_refused_as_gantry_tilt(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    def shear(dataset: Dataset, index: int) -> None:
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, round(y + index * 7.0, 4), z]

    paths = rewrite_series(small_study.paths[:6], tmp_path, shear)
    with pytest.raises(UnsupportedInput, match=r"gantry tilt of 54\.5 degrees") as raised:
        to_volume(load_series(paths))
    assert f"{MAX_TILT_DEG:.0f} degrees" in raised.value.reason


def test_runs_of_two_spacings_are_kept_and_gaps_refused(small_study: PhantomStudy) -> None:
    """Slices 0-19 every 5 mm, then every second slice (10 mm): one series, two runs."""
    uneven = [p for k, p in enumerate(small_study.paths) if k < 20 or k % 2 == 0]
    volume = to_volume(load_series(uneven))
    assert volume.resampling is not None
    assert [(r.slices, r.spacing_mm) for r in volume.resampling.runs] == [(21, 5.0), (10, 10.0)]
    assert volume.shape[0] == SMALL.slices - 1  # the 5 mm grid over the whole extent
    assert volume.voxel_volume_ml == pytest.approx(SMALL.voxel_volume_ml)
    # The 5 mm slices lie on the grid and come back unchanged.
    np.testing.assert_array_equal(volume.source_array[:20], volume.array[:20])
    # One slice missing from the 10 mm run is a gap (20 mm between 10 mm neighbours).
    gap = [p for k, p in enumerate(uneven) if k != 26]
    with pytest.raises(InconsistentGeometry, match=r"1 gap\(s\) of up to 20 mm.*missing"):
        to_volume(load_series(gap))


def test_a_repeated_pass_is_told_apart_by_its_acquisition(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    """A re-scan of the first 12 slices, with its own Acquisition Number: the full pass wins."""

    def rescan(dataset: Dataset, _index: int) -> None:
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.AcquisitionNumber = 2

    again = rewrite_series(small_study.paths[:12], tmp_path, rescan)
    volume = to_volume(load_series([*again, *small_study.paths]))
    assert volume.shape[0] == SMALL.slices
    assert volume.resampling is None
    assert {int(ds.AcquisitionNumber) for ds in volume.datasets} == {1}


def test_derived_frames_at_the_same_positions_give_way_to_the_original(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    def derived(dataset: Dataset, _index: int) -> None:
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]

    copies = rewrite_series(small_study.paths, tmp_path, derived)
    volume = to_volume(load_series([*copies, *small_study.paths]))
    assert {ds.ImageType[0] for ds in volume.datasets} == {"ORIGINAL"}


def test_enhanced_ct_has_a_slice_normal() -> None:
    """eCT_Supplemental keeps its orientation in the Plane Orientation functional group."""
    found = get_testdata_file("eCT_Supplemental.dcm")
    assert found is not None
    volume = to_volume(load_series([Path(str(found))]))
    assert "ImageOrientationPatient" not in volume.datasets[0]
    header = pydicom.dcmread(str(found), stop_before_pixels=True)
    iop = [
        float(v)
        for v in header.SharedFunctionalGroupsSequence[0]
        .PlaneOrientationSequence[0]
        .ImageOrientationPatient
    ]
    normal = np.cross(iop[:3], iop[3:])
    assert abs(float(volume.slice_normal @ normal)) == pytest.approx(1.0)
    np.testing.assert_allclose(volume.image_orientation, iop, atol=1e-6)


def test_siemens_xa_time_series_gives_its_first_temporal_position() -> None:
    """One fMRI series in 4 multi-frame files, each a time point of the same 6 slices."""
    paths = sorted((CORPUS / "enhanced-mr-siemens-xa10").iterdir())
    volume = to_volume(load_series(paths))
    assert volume.shape == (6, 64, 64)
    (instance,) = volume.instances
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert instance.SOPInstanceUID == first.SOPInstanceUID
    assert sorted(n or 0 for n in volume.frame_numbers) == [1, 2, 3, 4, 5, 6]


def test_philips_field_map_object_gives_its_magnitude_frames() -> None:
    """64 frames: 32 magnitude and 32 field-map frames at the same 32 positions."""
    path = CORPUS / "enhanced-mr-philips-fmap" / "IM_0027_fMAP.dcm"
    volume = to_volume(load_series([path]))
    assert volume.shape == (32, 64, 64)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    for number in volume.frame_numbers:
        assert number is not None
        frame_type = header.PerFrameFunctionalGroupsSequence[number - 1].MRImageFrameTypeSequence
        assert frame_type[0].FrameType[3] == "M"
    # Rescaled by each frame's own Pixel Value Transformation.
    pixels = pydicom.dcmread(path).pixel_array
    number = volume.frame_numbers[5]
    assert number is not None
    transform = header.PerFrameFunctionalGroupsSequence[number - 1]
    slope = float(transform.PixelValueTransformationSequence[0].RescaleSlope)
    np.testing.assert_allclose(volume.array[5], pixels[number - 1] * slope, rtol=1e-5)


def test_philips_gantry_tilt_ct_is_resampled() -> None:
    """A real Philips head CT with an 18.5-degree tilt: sheared, 2.5 mm along the table."""
    paths = sorted((CORPUS / "philips-ct-gantry-tilt-subset").iterdir())
    volume = to_volume(load_series(paths))
    assert volume.resampling is not None
    assert volume.resampling.tilt_deg == pytest.approx(18.5, abs=0.05)
    assert volume.spacing[0] == pytest.approx(2.5 * math.cos(math.radians(18.5)), abs=1e-3)
    assert volume.source_shape == (20, 512, 512)
    # Source slices sit on grid slices; only the in-plane shift is resampled.
    np.testing.assert_allclose(volume.resampling.grid_index, np.arange(20, dtype=float), atol=1e-6)
