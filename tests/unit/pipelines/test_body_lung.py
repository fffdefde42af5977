"""The built-in body and lung segmentation on the phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from scipy import ndimage

from dicom_node.phantom import PhantomLabel, PhantomStudy
from pipelines.algorithms import builtin_names, get_builtin
from pipelines.algorithms.body_lung import FillHolesInPlane, KeepLargestComponent
from pipelines.errors import PipelineConfigError, UnsupportedInput
from pipelines.load import load_series
from pipelines.volume import Volume, to_volume
from tests.unit.pipelines.phantom_series import SMALL, rewrite_series

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


def test_airway_is_not_lung_and_lungs_match_the_truth(small_study: PhantomStudy) -> None:
    """The phantom's trachea and main bronchi are air like the lungs, and join them."""
    volume = to_volume(load_series(small_study.paths))
    masks = segment(volume)
    labels = SMALL.labels()
    airway = labels == PhantomLabel.AIRWAY
    lungs = masks["right_lung"] | masks["left_lung"]
    trachea_slices = [k for k in range(SMALL.slices) if airway[k].sum() == airway[-1].sum()]
    assert len(trachea_slices) >= 10
    # Not one voxel of the trachea is lung (the old midline cut gave the top slice's
    # trachea to the left lung) ...
    assert not np.any(lungs[trachea_slices] & airway[trachea_slices])
    # ... and of the main bronchi only the last tip, where each enters its lung.
    assert np.count_nonzero(lungs & airway) < 0.05 * np.count_nonzero(airway)
    for name in ("right_lung", "left_lung"):
        measured = volume.measure(masks[name]).volume_ml
        assert measured == pytest.approx(small_study.true_volumes_ml[name], rel=0.02), name
    # Each lung is its own side's: right is -x (LPS), left +x.
    for name, label in (
        ("right_lung", PhantomLabel.RIGHT_LUNG),
        ("left_lung", PhantomLabel.LEFT_LUNG),
    ):
        truth = labels == label
        assert np.count_nonzero(masks[name] & truth) > 0.97 * np.count_nonzero(truth), name


def _touching_lungs() -> tuple[Volume, np.ndarray, np.ndarray]:
    """A CT whose lungs meet along an anterior junction, three pixels thick."""
    shape = (24, 96, 96)
    k, r, c = np.indices(shape, dtype=np.float64)
    body = ((c - 47.5) / 46) ** 2 + ((r - 47.5) / 40) ** 2 <= 1
    # The right lung is the larger, so they meet left of the body's midline (column 56,
    # not 47.5): a cut at the midline would give part of the right lung to the left.
    right = (((c - 36) / 20) ** 2 + ((r - 47) / 22) ** 2 + ((k - 11.5) / 11) ** 2 <= 1) & (c < 56)
    left = (((c - 72) / 16) ** 2 + ((r - 47) / 22) ** 2 + ((k - 11.5) / 11) ** 2 <= 1) & (c >= 56)
    # They touch in front of the heart: a bridge between them at the junction.
    bridge = (np.abs(c - 55.5) <= 8) & (np.abs(r - 30) <= 1) & (np.abs(k - 11.5) <= 6)
    right |= bridge & (c < 56)
    left |= bridge & (c >= 56)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[right | left] = -850.0
    header = Dataset()
    header.Modality = "CT"
    header.SOPInstanceUID = "1.2.3"
    # index (slice, row, column) -> LPS: slice along z, row along y, column along x.
    affine = np.array([[0, 0, 2.0, -95.0], [0, 2.0, 0, -95.0], [5.0, 0, 0, -57.5], [0, 0, 0, 1.0]])
    volume = Volume(array=hu, affine=affine, spacing=(5.0, 2.0, 2.0), datasets=(header,) * shape[0])
    assert len(np.unique(ndimage.label(right | left)[0])) == 2  # one component
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    inner = ndimage.binary_erosion(body, structure=in_plane, iterations=3)
    assert not np.any((right | left) & ~inner)  # enclosed by the chest wall
    return volume, right, left


def test_touching_lungs_are_parted_along_their_junction() -> None:
    volume, right, left = _touching_lungs()
    masks = segment(volume)
    for name, truth in (("right_lung", right), ("left_lung", left)):
        found = masks[name]
        assert np.count_nonzero(found & truth) / np.count_nonzero(truth) > 0.98, name
        assert np.count_nonzero(found & ~truth) / np.count_nonzero(truth) < 0.02, name
