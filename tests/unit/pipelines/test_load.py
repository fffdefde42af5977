"""Loading a series: header checks, sorting, geometry refusals, pixel decoding."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from dicom_node.phantom import PhantomStudy
from pipelines.errors import InconsistentGeometry, PipelineError, UnsupportedInput
from pipelines.load import frame_group, frame_kind, load_series
from pipelines.volume import TensorLayout, to_volume
from tests.unit.pipelines.phantom_series import SMALL, rewrite_series


def _reference_hu(path: Path) -> np.ndarray:
    """What pydicom itself makes of a slice, rescaled."""
    dataset = pydicom.dcmread(path)
    slope = float(dataset.get("RescaleSlope", 1))
    intercept = float(dataset.get("RescaleIntercept", 0))
    return dataset.pixel_array.astype(np.float64) * slope + intercept


def test_shuffled_input_is_sorted_feet_to_head(small_study: PhantomStudy) -> None:
    shuffled = list(small_study.paths)
    random.Random(7).shuffle(shuffled)
    volume = to_volume(load_series(shuffled))

    assert volume.shape == (SMALL.slices, SMALL.size, SMALL.size)
    z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert z == sorted(z)
    assert [ds.SOPInstanceUID for ds in volume.datasets] == [
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in small_study.paths
    ]
    for k in (0, 17, SMALL.slices - 1):
        np.testing.assert_array_equal(volume.array[k], _reference_hu(small_study.paths[k]))


def test_affine_maps_indices_to_the_slices_positions(small_study: PhantomStudy) -> None:
    volume = to_volume(load_series(small_study.paths))
    assert volume.spacing == pytest.approx(
        (SMALL.slice_thickness_mm, SMALL.pixel_spacing_mm, SMALL.pixel_spacing_mm)
    )
    assert volume.voxel_volume_ml == pytest.approx(SMALL.voxel_volume_ml)
    for k, dataset in enumerate(volume.datasets):
        origin = volume.affine @ np.array([k, 0, 0, 1.0])
        np.testing.assert_allclose(origin[:3], [float(v) for v in dataset.ImagePositionPatient])
    # Row index runs along +y (posterior), column index along +x (patient left).
    step_row = volume.affine @ np.array([0, 1, 0, 1.0]) - volume.affine @ np.array([0, 0, 0, 1.0])
    step_col = volume.affine @ np.array([0, 0, 1, 1.0]) - volume.affine @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(step_row[:3], [0, SMALL.pixel_spacing_mm, 0])
    np.testing.assert_allclose(step_col[:3], [SMALL.pixel_spacing_mm, 0, 0])


def test_metatensor_layouts_share_data_and_carry_their_affines(small_study: PhantomStudy) -> None:
    volume = to_volume(load_series(small_study.paths))
    slices, rows, columns = volume.shape

    monai = volume.to_metatensor()
    assert tuple(monai.shape) == (1, columns, rows, slices)
    assert monai.meta["space"] == "RAS"
    index = np.array([5, 9, 3, 1.0])  # (column, row, slice)
    ras = monai.affine.numpy() @ index
    lps = volume.affine @ np.array([3, 9, 5, 1.0])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]])
    assert float(monai[0, 5, 9, 3]) == float(volume.array[3, 9, 5])

    plain = volume.to_metatensor(TensorLayout.SLICES)
    assert tuple(plain.shape) == (1, slices, rows, columns)
    assert plain.meta["space"] == "LPS"
    np.testing.assert_allclose(plain.affine.numpy(), volume.affine)
    back = volume.from_monai_layout(monai.numpy())
    np.testing.assert_array_equal(back, volume.array)


def test_missing_slice_is_refused_as_a_gap(small_study: PhantomStudy) -> None:
    paths = [p for k, p in enumerate(small_study.paths) if k != 20]
    with pytest.raises(InconsistentGeometry) as raised:
        to_volume(load_series(paths))
    assert "spacing is not uniform" in raised.value.reason
    assert "missing" in raised.value.reason


def test_duplicate_position_is_refused(small_study: PhantomStudy, tmp_path: Path) -> None:
    def copy_of_slice_10(dataset: Dataset, _index: int) -> None:
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID

    duplicate = rewrite_series(small_study.paths[10:11], tmp_path, copy_of_slice_10)
    with pytest.raises(InconsistentGeometry) as raised:
        to_volume(load_series([*small_study.paths, *duplicate]))
    assert "duplicate" in raised.value.reason


def test_mixed_orientation_is_refused(small_study: PhantomStudy, tmp_path: Path) -> None:
    def tilt_one(dataset: Dataset, index: int) -> None:
        if index == 5:
            dataset.ImageOrientationPatient = [1, 0, 0, 0, 0.8, -0.6]

    paths = rewrite_series(small_study.paths, tmp_path, tilt_one)
    with pytest.raises(InconsistentGeometry) as raised:
        to_volume(load_series(paths))
    assert "2 different orientations" in raised.value.reason


def test_two_series_are_refused(small_study: PhantomStudy, tmp_path: Path) -> None:
    def other_series(dataset: Dataset, _index: int) -> None:
        dataset.SeriesInstanceUID = "1.2.3.4"

    other = rewrite_series(small_study.paths[:1], tmp_path, other_series)
    with pytest.raises(UnsupportedInput, match="2 series"):
        load_series([*small_study.paths[1:], *other])


def test_non_dicom_and_missing_files_are_refused(small_study: PhantomStudy, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(UnsupportedInput, match="input 41 of 41 is not a DICOM file"):
        load_series([*small_study.paths, junk])
    with pytest.raises(PipelineError, match="missing from the spool"):
        load_series([*small_study.paths, tmp_path / "gone.dcm"])
    with pytest.raises(UnsupportedInput, match="no input"):
        load_series([])


def test_missing_geometry_attribute_is_named(small_study: PhantomStudy, tmp_path: Path) -> None:
    def drop_position(dataset: Dataset, _index: int) -> None:
        del dataset.ImagePositionPatient

    paths = rewrite_series(small_study.paths[:3], tmp_path, drop_position)
    with pytest.raises(UnsupportedInput, match="lacks ImagePositionPatient"):
        load_series(paths)


def test_single_slice_is_not_a_volume(small_study: PhantomStudy) -> None:
    with pytest.raises(UnsupportedInput, match="at least 2 slices"):
        to_volume(load_series(small_study.paths[:1]))


def test_signed_12_bit_pixels_with_slope_match_pydicom(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    """The one-seek reader sign-extends 12-bit data and ignores bits above Bits Stored."""

    def to_signed(dataset: Dataset, _index: int) -> None:
        hu = np.clip(dataset.pixel_array.astype(np.int16) - 1024, -2048, 2047)
        raw = hu.astype(np.int16)
        # Garbage in the 4 unused high bits, which a reader must ignore.
        raw = (raw.view(np.uint16) & 0x0FFF) | 0xA000
        dataset.PixelRepresentation = 1
        dataset.RescaleIntercept = 0
        dataset.RescaleSlope = 2
        dataset.PixelData = raw.astype(np.uint16).tobytes()

    paths = rewrite_series(small_study.paths[:4], tmp_path, to_signed)
    volume = to_volume(load_series(paths))
    for k, path in enumerate(paths):
        np.testing.assert_array_equal(volume.array[k], _reference_hu(path))
    assert volume.array.min() < -1500  # sign extension happened (air is -1000 * slope 2)


@pytest.mark.parametrize(
    "syntax",
    [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEG2000Lossless],
)
def test_other_transfer_syntaxes_decode_like_explicit_little_endian(
    small_study: PhantomStudy, tmp_path: Path, syntax: UID
) -> None:
    def convert(dataset: Dataset, _index: int) -> None:
        if syntax in (RLELossless, JPEG2000Lossless):
            dataset.compress(syntax)
        else:
            dataset.file_meta.TransferSyntaxUID = syntax

    paths = rewrite_series(small_study.paths[:3], tmp_path, convert)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    converted = to_volume(load_series(paths))
    plain = to_volume(load_series(small_study.paths[:3]))
    np.testing.assert_array_equal(converted.array, plain.array)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_uncompressed_pixels_are_read_without_a_second_parse(
    small_study: PhantomStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: UID
) -> None:
    """The speed of loading rests on the one-seek reader; pydicom is only the fallback."""

    def set_syntax(dataset: Dataset, _index: int) -> None:
        dataset.file_meta.TransferSyntaxUID = syntax

    paths = rewrite_series(small_study.paths[:4], tmp_path, set_syntax)

    def no_fallback(*_args: object) -> None:
        raise AssertionError("decoded through pydicom")

    monkeypatch.setattr("pipelines.volume.decode_with_pydicom", no_fallback)
    volume = to_volume(load_series(paths))
    for k, path in enumerate(paths):
        np.testing.assert_array_equal(volume.array[k], _reference_hu(path))


def test_frame_kind_tells_passes_apart_in_real_enhanced_mr() -> None:
    """Philips: magnitude and field-map frames; Siemens XA: one time point per file."""
    corpus = Path("/work/shared/corpus")
    fmap = load_series([corpus / "enhanced-mr-philips-fmap" / "IM_0027_fMAP.dcm"])
    types = {frame_kind(fmap, frame).image_type[3] for frame in fmap.frames}
    assert types == {"M", "FIELD_MAP"}
    xa = load_series(sorted((corpus / "enhanced-mr-siemens-xa10").iterdir()))
    by_file = {frame.file_index: frame_kind(xa, frame).temporal_position for frame in xa.frames}
    assert sorted(by_file.values()) == ["1", "2", "3", "4"]


def test_frame_kind_of_single_frame_slices(small_study: PhantomStudy) -> None:
    series = load_series(small_study.paths[:2])
    kind = frame_kind(series, series.frames[0])
    assert kind.image_type == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert kind.acquisition == "1"
    assert kind.temporal_position == kind.echo == kind.diffusion == ""


def test_frame_group_takes_the_per_frame_item_else_the_shared_one() -> None:
    path = Path("/work/shared/corpus/enhanced-mr-philips-fmap/IM_0027_fMAP.dcm")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    first = frame_group(header, 1, "PixelValueTransformationSequence")
    last = frame_group(header, 64, "PixelValueTransformationSequence")
    assert first is not None
    assert last is not None
    assert float(first.RescaleSlope) != float(last.RescaleSlope)  # magnitude vs field map
    shared = frame_group(header, 1, "MRTimingAndRelatedParametersSequence")
    assert (
        shared is header.SharedFunctionalGroupsSequence[0].MRTimingAndRelatedParametersSequence[0]
    )
    assert frame_group(header, 1, "NoSuchSequence") is None
    assert frame_group(pydicom.Dataset(), 1, "PixelMeasuresSequence") is None
