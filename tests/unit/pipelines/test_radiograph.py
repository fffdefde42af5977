"""Projection radiographs: the DX phantom as an object, and loading CR, DX and MG images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation

from dicom_node.phantom import PhantomStudy
from dicom_node.phantom_dx import ChestRadiographPhantom, RadiographStudy
from pipelines.errors import PipelineError, UnsupportedInput
from pipelines.radiograph import load_radiographs
from tests.judges import dciodvfy_errors
from tests.unit.pipelines.phantom_series import rewrite_series

PHANTOM = ChestRadiographPhantom(size=192)


@pytest.fixture(scope="module")
def dx_study(tmp_path_factory: pytest.TempPathFactory) -> RadiographStudy:
    return PHANTOM.write(tmp_path_factory.mktemp("dx"), [True, False])


def test_dx_phantom_is_a_valid_dx_for_presentation(dx_study: RadiographStudy) -> None:
    assert dciodvfy_errors(dx_study.paths[0]) == []
    ds = pydicom.dcmread(dx_study.paths[0])
    assert ds.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForPresentation
    assert ds.Modality == "DX"
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.ViewPosition == "PA"
    assert ds.ImageLaterality == "U"
    assert ds.PatientOrientation == ["L", "F"]
    assert [float(v) for v in ds.ImagerPixelSpacing] == [1.4, 1.4]
    assert ds.pixel_array.shape == (192, 192)
    assert 0 < int(ds.pixel_array.max()) <= 4095
    # One image per instance, each its own SOP instance in one series.
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in dx_study.paths}
    assert len(uids) == 2


def test_phantom_nodule_is_the_only_difference() -> None:
    """Same index, with and without the finding: they differ only in a small round region."""
    with_finding = PHANTOM.image(3, True)
    without = PHANTOM.image(3, False)
    difference = np.abs(with_finding - without) > 0.05
    assert 20 < int(difference.sum()) < 0.05 * difference.size
    np.testing.assert_array_equal(PHANTOM.image(3, True), with_finding)


def test_dx_images_load_one_by_one_with_view_and_laterality(dx_study: RadiographStudy) -> None:
    images = load_radiographs(dx_study.paths)
    assert len(images) == 2
    for image, path in zip(images, dx_study.paths, strict=True):
        np.testing.assert_array_equal(image.array, pydicom.dcmread(path).pixel_array)
        assert image.modality == "DX"
        assert image.view_position == "PA"
        assert image.laterality == "U"
        assert image.pixel_spacing == (1.4, 1.4)
        assert "PixelData" not in image.header
    tensor = images[0].to_metatensor()
    assert tuple(tensor.shape) == (1, 192, 192)
    assert float(tensor[0, 10, 50]) == float(images[0].array[50, 10])  # (column, row) order


def test_mammogram_keeps_its_view_and_laterality(dx_study: RadiographStudy, tmp_path: Path) -> None:
    def to_mg(dataset: Dataset, _index: int) -> None:
        dataset.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
        dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        dataset.Modality = "MG"
        dataset.ViewPosition = "CC"
        dataset.ImageLaterality = "L"

    paths = rewrite_series(dx_study.paths[:1], tmp_path, to_mg)
    (image,) = load_radiographs(paths)
    assert (image.modality, image.view_position, image.laterality) == ("MG", "CC", "L")


def test_monochrome1_is_inverted_to_brighter_is_denser(
    dx_study: RadiographStudy, tmp_path: Path
) -> None:
    def to_monochrome1(dataset: Dataset, _index: int) -> None:
        inverted = 4095 - dataset.pixel_array
        dataset.PhotometricInterpretation = "MONOCHROME1"
        dataset.PixelData = inverted.astype(np.uint16).tobytes()

    paths = rewrite_series(dx_study.paths[:1], tmp_path, to_monochrome1)
    (flipped,) = load_radiographs(paths)
    (plain,) = load_radiographs(dx_study.paths[:1])
    # Inverted around the image's own range: the order of values is that of MONOCHROME2.
    assert np.corrcoef(flipped.array.ravel(), plain.array.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_J2KI.dcm"])
def test_real_computed_radiographs_load(name: str) -> None:
    path = Path(str(get_testdata_file(name)))
    (image,) = load_radiographs([path])
    reference = pydicom.dcmread(path)
    assert image.modality == "CR"
    assert image.array.shape == reference.pixel_array.shape
    values = reference.pixel_array.astype(np.float32)
    if reference.PhotometricInterpretation == "MONOCHROME1":
        values = values.max() + values.min() - values
    np.testing.assert_allclose(image.array, values)


def test_a_ct_slice_is_not_a_radiograph(small_study: PhantomStudy) -> None:
    with pytest.raises(UnsupportedInput, match="not a projection radiograph"):
        load_radiographs(small_study.paths[:2])
    with pytest.raises(UnsupportedInput, match="no input"):
        load_radiographs([])


def test_blank_radiograph_is_refused(dx_study: RadiographStudy, tmp_path: Path) -> None:
    def blank(dataset: Dataset, _index: int) -> None:
        dataset.PixelData = bytes(len(dataset.PixelData))

    paths = rewrite_series(dx_study.paths[:1], tmp_path, blank)
    with pytest.raises(PipelineError, match="zeros only"):
        load_radiographs(paths)
