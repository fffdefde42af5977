"""Outlines: traced contours give the mask back, in every coordinate system the writers use."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from pipelines.outline import edge, polygon_area, to_image_coordinates, trace


def _ring() -> np.ndarray:
    """Two slices: a ring with a hole, and an empty slice; plus a blob on a third."""
    rows, columns = np.mgrid[0:64, 0:64]
    distance = np.hypot(rows - 30, columns - 28)
    masks = np.zeros((3, 64, 64), dtype=bool)
    masks[0] = (distance < 20) & (distance >= 8)
    masks[2] = (rows - 40) ** 2 / 100 + (columns - 20) ** 2 / 36 < 1
    return masks


def _even_odd(contours: tuple[np.ndarray, ...], shape: tuple[int, int]) -> np.ndarray:
    """Fill contours by pixel centres, holes by the even-odd rule (as planning systems do)."""
    filled = np.zeros(shape, dtype=bool)
    for contour in contours:
        inside = np.zeros(shape, dtype=bool)
        rows, columns = fill_polygon(contour[:, 0], contour[:, 1], shape)  # type: ignore[no-untyped-call]
        inside[rows, columns] = True
        filled ^= inside
    return filled


def test_contours_give_the_mask_back_within_one_pixel_at_the_boundary() -> None:
    masks = _ring()
    outlines = trace({"ring": masks})
    assert outlines.slices("ring") == [0, 2]
    ring = outlines.contours("ring", 0)
    assert len(ring) == 2  # the outer boundary and the hole, largest first
    assert abs(polygon_area(ring[0])) > abs(polygon_area(ring[1]))
    for k in (0, 2):
        back = _even_odd(outlines.contours("ring", k), masks[k].shape)
        assert (back ^ masks[k]).sum() <= 0.05 * masks[k].sum()
        assert not ((back ^ masks[k]) & ~(edge(masks[k]) | edge(~masks[k]))).any()
    assert outlines.areas["ring"] == {0: int(masks[0].sum()), 2: int(masks[2].sum())}
    assert outlines.representative_slice("ring") == 0
    assert outlines.representative_slice("absent") is None


def test_image_coordinates_put_pixel_centres_at_half_pixels() -> None:
    contour = np.array([[0.0, 0.0], [0.0, 2.0], [3.0, 2.0], [0.0, 0.0]])
    np.testing.assert_allclose(to_image_coordinates(contour)[1], [2.5, 0.5])


def test_edge_is_the_inner_boundary() -> None:
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    assert edge(mask).sum() == 16
    assert not edge(mask)[3, 3]


def test_a_mask_must_be_boolean_3d() -> None:
    with pytest.raises(ValueError, match="3-D boolean"):
        trace({"x": np.zeros((4, 4), dtype=bool)})


def test_edge_equals_scipys_erosion() -> None:
    """The fast edge (numpy shifts on the bounding box) against scipy's own binary erosion."""
    rng = np.random.default_rng(1)
    for _ in range(30):
        mask = ndimage.binary_dilation(rng.random((40, 50)) > 0.93, iterations=2)
        mask[0, :5] = True  # touching the border
        expected = mask & ~ndimage.binary_erosion(mask, border_value=0)
        np.testing.assert_array_equal(edge(mask), expected)
    assert not edge(np.zeros((5, 5), dtype=bool)).any()
