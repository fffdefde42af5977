"""The built-in body and lung segmentation on the phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.phantom import PhantomStudy
from pipelines.algorithms import builtin_names, get_builtin
from pipelines.algorithms.body_lung import FillHolesInPlane, KeepLargestComponent
from pipelines.errors import PipelineConfigError, UnsupportedInput
from pipelines.load import load_series
from pipelines.volume import Volume, to_volume
from tests.unit.pipelines.phantom_series import rewrite_series

segment = get_builtin("body_lung_threshold")


def _relative_errors(volume: Volume, study: PhantomStudy) -> dict[str, float]:
    masks = segment(volume)
    assert set(masks) == {"body", "right_lung", "left_lung"}
    errors = {}
    for name, truth in study.true_volumes_ml.items():
        assert masks[name].dtype == np.bool_
        assert masks[name].shape == volume.shape
        errors[name] = abs(volume.measure(masks[name]).volume_ml - truth) / truth
    return errors


def test_volumes_match_the_phantom_truth(small_study: PhantomStudy) -> None:
    errors = _relative_errors(to_volume(load_series(small_study.paths)), small_study)
    assert max(errors.values()) < 0.02, errors


def test_lungs_are_inside_the_body_and_table_outside(small_study: PhantomStudy) -> None:
    volume = to_volume(load_series(small_study.paths))
    masks = segment(volume)
    assert not np.any(masks["right_lung"] & ~masks["body"])
    assert not np.any(masks["left_lung"] & ~masks["body"])
    assert not np.any(masks["right_lung"] & masks["left_lung"])
    # The phantom's table (200 HU) lies at y = 123..131 mm, behind an air gap below the
    # skin (y <= 115 mm): it is there in the image but no voxel of it is body.
    row_y = volume.affine[1, 1] * np.arange(volume.shape[1]) + volume.affine[1, 3]
    below = row_y > 119.0
    assert np.any(volume.array[:, below] > 100)
    assert not np.any(masks["body"][:, below])


def test_sides_follow_the_affine_not_the_column_index(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    """A series stored mirrored (columns running to patient right) keeps its sides."""

    def mirror(dataset: Dataset, _index: int) -> None:
        pixels = dataset.pixel_array[:, ::-1].copy()
        x0, y0, z0 = (float(v) for v in dataset.ImagePositionPatient)
        last_x = x0 + (int(dataset.Columns) - 1) * float(dataset.PixelSpacing[1])
        dataset.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        dataset.ImagePositionPatient = [last_x, y0, z0]
        dataset.PixelData = pixels.tobytes()

    paths = rewrite_series(small_study.paths, tmp_path, mirror)
    volume = to_volume(load_series(paths))
    # Head first now (the normal points to the feet), columns run to the patient's right.
    assert volume.affine[2, 0] < 0
    assert volume.affine[0, 2] < 0
    masks = segment(volume)
    for name, sign in (("right_lung", -1.0), ("left_lung", 1.0)):
        k, r, c = np.nonzero(masks[name])
        x = volume.affine[0, 0] * k + volume.affine[0, 1] * r + volume.affine[0, 2] * c
        assert np.all(np.sign(x + volume.affine[0, 3]) == sign), name
    errors = _relative_errors(volume, small_study)
    assert max(errors.values()) < 0.02, errors


def test_non_ct_is_skipped(small_study: PhantomStudy, tmp_path: Path) -> None:
    def to_mr(dataset: Dataset, _index: int) -> None:
        dataset.Modality = "MR"

    paths = rewrite_series(small_study.paths[:4], tmp_path, to_mr)
    with pytest.raises(UnsupportedInput, match="needs CT"):
        segment(to_volume(load_series(paths)))


def test_unknown_builtin_is_a_config_error() -> None:
    assert "body_lung_threshold" in builtin_names()
    with pytest.raises(PipelineConfigError, match="unknown built-in algorithm 'nope'"):
        get_builtin("nope")


def test_fill_holes_works_per_slice_and_leaves_open_gaps() -> None:
    image = np.zeros((1, 3, 9, 9), dtype=bool)
    image[0, :, 2:7, 2:7] = True
    image[0, :, 4, 4] = False  # enclosed in its slice: a hole in every slice
    image[0, 1, 4, 3:6] = False  # slice 1: a bigger hole, still enclosed by the ring
    image[0, 2, 4, 0:5] = False  # slice 2: a channel opens the hole to the border
    filled = np.asarray(FillHolesInPlane(slice_axis=0)(image))
    assert filled.dtype == np.bool_
    assert filled[0, 0, 4, 4]
    assert filled[0, 1, 4, 4]
    assert not filled[0, 2, 4, 4]
    # Slice axis last (MONAI layout): the same image, transposed, fills the same way.
    transposed = np.asarray(FillHolesInPlane(slice_axis=2)(image.transpose(0, 3, 2, 1)))
    np.testing.assert_array_equal(transposed.transpose(0, 3, 2, 1), filled)


def test_keep_largest_component_uses_face_connectivity() -> None:
    image = np.zeros((1, 4, 6, 6), dtype=bool)
    image[0, :, 0:3, 0:3] = True  # 36 voxels
    image[0, 0, 4:6, 4:6] = True  # 4 voxels, apart from the rest
    image[0, 2, 3, 3] = True  # touches the big block only at a corner
    kept = KeepLargestComponent(connectivity=1)(image)
    assert int(kept.sum()) == 36
    assert int(KeepLargestComponent(connectivity=3)(image).sum()) == 37
    with pytest.raises(ValueError, match="connectivity"):
        KeepLargestComponent(connectivity=4)
