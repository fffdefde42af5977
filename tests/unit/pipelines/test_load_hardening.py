"""The loader on real files and awkward series: compressed syntaxes, Enhanced multi-frame,
real multi-slice series, oblique stacks, blank pixel data, header scans (tilted and
unevenly spaced stacks: ``test_volume.py``).

Real files come from pydicom and pydicom-data (``get_testdata_file``). A single
real slice is turned into a two-slice series by a copy whose position moves
along the normal and whose SOP Instance UID is new; the compressed Pixel Data
stays exactly as the file has it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from dicom_node.phantom import PhantomStudy
from pipelines.errors import InconsistentGeometry, PipelineError, UnsupportedInput
from pipelines.load import group_by_series, load_series, scan_headers
from pipelines.volume import to_volume
from tests.unit.pipelines.phantom_series import SMALL, rewrite_series


def _testdata(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, f"{name} is missing: pydicom-data must be installed"
    return Path(str(found))


def _two_slice_series(source: Path, folder: Path) -> list[Path]:
    """The real file plus a copy one slice further along its normal.

    A file without a Frame of Reference UID (some of pydicom's are anonymised
    down to the image) gets one; the Pixel Data is written back untouched.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    if "FrameOfReferenceUID" not in ds:
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
    first = folder / "a.dcm"
    ds.save_as(first, enforce_file_format=True)
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    position = np.array([float(v) for v in ds.ImagePositionPatient]) + 3.0 * normal
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    second = folder / "b.dcm"
    ds.save_as(second, enforce_file_format=True)
    return [first, second]


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("693_J2KR.dcm", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless, real CT
        ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91"),  # JPEG 2000 lossy, real CT
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),  # RLE lossless
        ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),
        ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),  # explicit VR big endian
    ],
)
def test_real_compressed_slices_decode_as_pydicom_does(
    name: str, syntax: str, tmp_path: Path
) -> None:
    source = _testdata(name)
    paths = _two_slice_series(source, tmp_path)
    assert pydicom.dcmread(paths[1], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    volume = to_volume(load_series(paths))
    reference = pydicom.dcmread(source)
    expected = reference.pixel_array.astype(np.float64) * float(
        reference.get("RescaleSlope", 1)
    ) + float(reference.get("RescaleIntercept", 0))
    assert volume.shape == (2, *reference.pixel_array.shape)
    for k in range(2):
        np.testing.assert_allclose(volume.array[k], expected, atol=1e-3)


def test_jpeg_lossless_real_file_decodes(tmp_path: Path) -> None:
    """JPEG Lossless (process 14, SV1) through pylibjpeg-libjpeg: a real 8-bit file."""
    source = _testdata("JPGLosslessP14SV1_1s_1f_8b.dcm")
    ds = pydicom.dcmread(source)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    # An ultrasound frame has no patient geometry: give it one, keep its compressed pixels.
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.FrameOfReferenceUID = generate_uid()
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    paths = _two_slice_series(tmp_path / "one.dcm", tmp_path / "series")
    volume = to_volume(load_series(paths))
    np.testing.assert_array_equal(volume.array[0], ds.pixel_array)
    assert np.any(volume.array)


def test_jpeg_baseline_slices_decode(small_study: PhantomStudy, tmp_path: Path) -> None:
    """JPEG Baseline (8-bit lossy): phantom slices encoded by Pillow, decoded by pylibjpeg."""

    def to_jpeg(dataset: Dataset, _index: int) -> None:
        hu = dataset.pixel_array.astype(np.float64) - 1024.0
        grey = np.clip((hu + 1000.0) / 1500.0 * 255.0, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grey).save(buffer, format="JPEG", quality=95)
        dataset.BitsAllocated = 8
        dataset.BitsStored = 8
        dataset.HighBit = 7
        dataset.RescaleIntercept = 0
        dataset.PixelData = encapsulate([buffer.getvalue()])
        dataset["PixelData"].VR = "OB"
        dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        dataset.LossyImageCompression = "01"

    paths = rewrite_series(small_study.paths[:3], tmp_path, to_jpeg)
    volume = to_volume(load_series(paths))
    for k, path in enumerate(paths):
        np.testing.assert_array_equal(volume.array[k], pydicom.dcmread(path).pixel_array)
    assert volume.array.max() > 100  # the body is there, not a blank decode


def test_enhanced_ct_frames_become_slices_with_their_geometry() -> None:
    source = _testdata("eCT_Supplemental.dcm")
    series = load_series([source])
    assert [f.frame_number for f in series.frames] == [1, 2]
    volume = to_volume(series)
    reference = pydicom.dcmread(source)
    assert volume.shape == (2, int(reference.Rows), int(reference.Columns))
    assert volume.is_multiframe
    assert len(volume.instances) == 1
    positions = {
        frame.frame_number: [
            float(v) for v in frame_groups.PlanePositionSequence[0].ImagePositionPatient
        ]
        for frame, frame_groups in zip(
            series.frames, reference.PerFrameFunctionalGroupsSequence, strict=True
        )
    }
    for k, number in enumerate(volume.frame_numbers):
        assert number is not None
        origin = volume.affine @ np.array([k, 0, 0, 1.0])
        np.testing.assert_allclose(origin[:3], positions[number], atol=1e-3)
        # Rescale comes from the Pixel Value Transformation functional group.
        np.testing.assert_allclose(
            volume.array[k], reference.pixel_array[number - 1].astype(np.float64) - 1024.0
        )


@pytest.mark.parametrize(
    "name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm"]
)
def test_multiframe_without_functional_groups_is_refused_with_reason(name: str) -> None:
    with pytest.raises(UnsupportedInput, match="without per-frame functional groups"):
        load_series([_testdata(name)])


def _dicomdir_series(folder: str) -> list[Path]:
    anchor = _testdata("dicomdirtests/DICOMDIR").parent
    return sorted(p for p in (anchor / folder).iterdir() if p.is_file())


def test_real_ct_series_forms_a_volume() -> None:
    paths = _dicomdir_series("98892001/CT5N")
    volume = to_volume(load_series(paths))
    assert volume.shape[0] == len(paths) == 5
    z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert z == sorted(z) or z == sorted(z, reverse=True)


@pytest.mark.parametrize(
    ("folder", "reason"),
    [
        ("98892003/MR700", "different orientations"),  # a localizer mixed into the series
        ("77654033/CT2", "spacing is not uniform"),  # slices far apart
    ],
)
def test_real_inconsistent_series_are_refused_with_reason(folder: str, reason: str) -> None:
    paths = _dicomdir_series(folder)
    by_series = group_by_series(scan_headers(paths))
    largest = max(by_series.values(), key=len)
    with pytest.raises(InconsistentGeometry, match=reason):
        to_volume(load_series([f.path for f in largest]))


def test_scan_and_group_read_no_pixels_and_split_series(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    def other_series(dataset: Dataset, _index: int) -> None:
        dataset.SeriesInstanceUID = "1.2.3.4"

    other = rewrite_series(small_study.paths[:3], tmp_path, other_series)
    files = scan_headers([*small_study.paths, *other])
    assert all("PixelData" not in f.header for f in files)
    groups = group_by_series(files)
    assert [len(v) for v in groups.values()] == [SMALL.slices, 3]
    assert list(groups)[1] == "1.2.3.4"


def _oblique(dataset: Dataset, index: int) -> None:
    """Rotate the phantom's geometry 30 degrees about the patient's x axis."""
    angle = np.radians(30.0)
    row = np.array([1.0, 0.0, 0.0])
    column = np.array([0.0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row, column)
    corner = np.array([-50.0, -60.0, 10.0])
    dataset.ImageOrientationPatient = [round(float(v), 6) for v in (*row, *column)]
    position = corner + index * SMALL.slice_thickness_mm * normal
    dataset.ImagePositionPatient = [round(float(v), 4) for v in position]


def test_oblique_series_gets_an_oblique_affine(small_study: PhantomStudy, tmp_path: Path) -> None:
    paths = rewrite_series(small_study.paths, tmp_path, _oblique)
    volume = to_volume(load_series(list(reversed(paths))))
    angle = np.radians(30.0)
    normal = np.array([0.0, -np.sin(angle), np.cos(angle)])
    np.testing.assert_allclose(volume.slice_normal, normal, atol=1e-6)
    np.testing.assert_allclose(volume.affine[:3, 0], normal * SMALL.slice_thickness_mm, atol=1e-3)
    for k, dataset in enumerate(volume.datasets):
        origin = volume.affine @ np.array([k, 0, 0, 1.0])
        position = [float(v) for v in dataset.ImagePositionPatient]
        np.testing.assert_allclose(origin[:3], position, atol=1e-3)
    meta = volume.to_metatensor()
    # The MetaTensor's RAS affine is the same geometry: LPS with x and y negated.
    lps = volume.affine @ np.array([4, 7, 2, 1.0])
    ras = meta.affine.numpy() @ np.array([2, 7, 4, 1.0])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-6)


def test_duplicate_positions_with_new_uids_are_refused(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    """A second acquisition at the same positions, mixed into the series."""

    def again(dataset: Dataset, _index: int) -> None:
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID

    copies = rewrite_series(small_study.paths[:5], tmp_path, again)
    with pytest.raises(InconsistentGeometry, match=r"5 slice position\(s\) occur more than once"):
        to_volume(load_series([*small_study.paths, *copies]))


def test_blank_pixel_data_is_refused_unless_the_header_says_so(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    def blank(dataset: Dataset, _index: int) -> None:
        dataset.PixelData = bytes(len(dataset.PixelData))

    paths = rewrite_series(small_study.paths[:3], tmp_path / "blank", blank)
    with pytest.raises(PipelineError, match="zeros only"):
        to_volume(load_series(paths))

    def declared_blank(dataset: Dataset, index: int) -> None:
        blank(dataset, index)
        dataset.add_new(0x00280106, "US", 0)  # Smallest Image Pixel Value
        dataset.add_new(0x00280107, "US", 0)  # Largest Image Pixel Value

    paths = rewrite_series(small_study.paths[:3], tmp_path / "declared", declared_blank)
    volume = to_volume(load_series(paths))
    assert float(volume.array.max()) == -1024.0  # stored 0 with the phantom's intercept
