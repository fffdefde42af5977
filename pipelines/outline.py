"""Outlines of masks on their slices: the planar regions every non-SEG result draws.

The SR's planar region (SCOORD), the presentation state's graphics (GSPS), the
RT Structure Set's contours and the PDF's key images all draw the same thing:
the boundary of a segment on a source slice. One :class:`Outlines` per job
(:func:`trace`) is handed to each writer; each slice is traced at most once.

A contour is traced with scikit-image's marching squares
(``skimage.measure.find_contours``) at level 0.5 of the zero-padded mask, so
every contour is closed and runs between the pixel centres inside the mask and
those outside it: filling the polygon by the "pixel centre inside" rule (as RT
planning systems and plastimatch do) gives the mask back. Vertices on straight
runs and 45-degree staircases are dropped; the polygon stays the same.

Coordinates:

- index space: ``(row, column)`` of the volume's array, the centre of the top
  left pixel at ``(0, 0)``; what :func:`trace` returns;
- DICOM image coordinates (:func:`to_image_coordinates`): ``(column, row)``
  with the top left corner of the top left pixel at ``(0, 0)`` and its centre
  at ``(0.5, 0.5)``, as SCOORD (PS3.3 C.18.6.1.2) and GSPS PIXEL units
  (C.10.5.1.2) define them;
- patient coordinates (:func:`to_patient`): LPS mm, as RT contours (C.8.8.6)
  need them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from skimage.measure import find_contours

from pipelines.volume import Volume

__all__ = [
    "Contour",
    "Outlines",
    "edge",
    "polygon_area",
    "to_image_coordinates",
    "to_patient",
    "trace",
]

#: A closed polygon, ``(N, 2)`` float64 ``(row, column)`` index coordinates, last point = first.
Contour = npt.NDArray[np.float64]


class Outlines:
    """The outlines of every segment on every slice it touches, traced when first asked for.

    The areas (pixels per slice) are counted at once; a slice's contours are
    traced the first time a writer asks for them and kept. An SR needs one slice
    per segment, presentation states and structure sets need them all; a job
    that writes only the SR traces three slices, not three hundred.

    Parameters
    ----------
    masks : Mapping[str, numpy.ndarray]
        Boolean ``(slices, rows, columns)`` mask per label name.

    Attributes
    ----------
    areas : dict[str, dict[int, int]]
        Label name, then slice index, then the number of mask pixels there
        (only slices the label touches).

    Raises
    ------
    ValueError
        If a mask is not a 3-D boolean array.
    """

    def __init__(self, masks: Mapping[str, npt.NDArray[np.bool_]]) -> None:
        self._masks = dict(masks)
        self._contours: dict[tuple[str, int], tuple[Contour, ...]] = {}
        self.areas: dict[str, dict[int, int]] = {}
        for name, mask in masks.items():
            if mask.ndim != 3 or mask.dtype != np.bool_:
                raise ValueError(f"mask {name!r} must be a 3-D boolean array, got {mask.dtype}")
            counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
            self.areas[name] = {int(k): int(counts[k]) for k in np.flatnonzero(counts)}

    def slices(self, name: str) -> list[int]:
        """The slice indices a label's mask touches, in order.

        Parameters
        ----------
        name : str
            Label name.

        Returns
        -------
        list[int]
            Empty when the label has no voxel.
        """
        return sorted(self.areas.get(name, {}))

    def contours(self, name: str, slice_index: int) -> tuple[Contour, ...]:
        """The closed contours of a label on one slice (outer boundaries and holes), largest first.

        Parameters
        ----------
        name : str
            Label name.
        slice_index : int
            The slice.

        Returns
        -------
        tuple[Contour, ...]
            Empty when the label does not touch that slice.
        """
        if slice_index not in self.areas.get(name, {}):
            return ()
        key = (name, slice_index)
        if key not in self._contours:
            self._contours[key] = _trace_slice(self._masks[name][slice_index])
        return self._contours[key]

    def representative_slice(self, name: str) -> int | None:
        """The slice where a label's cross-section is largest (its key image).

        Parameters
        ----------
        name : str
            Label name.

        Returns
        -------
        int or None
            The slice index (the lowest one among equals), or None for an empty label.
        """
        areas = self.areas.get(name, {})
        if not areas:
            return None
        return min(areas, key=lambda k: (-areas[k], k))

    def largest(self, name: str, slice_index: int) -> Contour:
        """The largest contour of a label on one slice (its outer boundary there).

        Parameters
        ----------
        name : str
            Label name.
        slice_index : int
            A slice the label touches.

        Returns
        -------
        Contour
            The closed polygon of largest area.

        Raises
        ------
        KeyError
            If the label does not touch that slice.
        """
        contours = self.contours(name, slice_index)
        if not contours:
            raise KeyError(f"label {name!r} has no outline on slice {slice_index}")
        return contours[0]


def trace(masks: Mapping[str, npt.NDArray[np.bool_]]) -> Outlines:
    """The outlines of each mask on each slice it touches (traced when first asked for).

    Parameters
    ----------
    masks : Mapping[str, numpy.ndarray]
        Boolean ``(slices, rows, columns)`` mask per label name.

    Returns
    -------
    Outlines
        Areas now, contours on demand.

    Raises
    ------
    ValueError
        If a mask is not a 3-D boolean array.
    """
    return Outlines(masks)


def _trace_slice(mask: npt.NDArray[np.bool_]) -> tuple[Contour, ...]:
    """Closed contours of one 2-D mask, largest first; traced inside its bounding box only."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    r0, c0 = int(rows[0]), int(columns[0])
    crop = mask[r0 : int(rows[-1]) + 1, c0 : int(columns[-1]) + 1]
    # One pixel of background around the crop closes every contour; -1 undoes the pad.
    padded = np.pad(crop, 1).astype(np.float32)
    offset = np.array([r0 - 1, c0 - 1], dtype=np.float64)
    contours = []
    # scikit-image ships no type hints.
    for traced in find_contours(padded, 0.5):  # type: ignore[no-untyped-call]
        polygon = _without_collinear(np.asarray(traced, dtype=np.float64)) + offset
        if len(polygon) >= 4:  # a closed triangle at least
            contours.append(polygon)
    contours.sort(key=lambda c: -abs(polygon_area(c)))
    return tuple(contours)


def _without_collinear(polygon: Contour) -> Contour:
    """Drop the vertices where a closed polygon goes on in the same direction.

    Marching squares on a binary mask puts a vertex at every pixel edge it
    crosses, so straight runs and 45-degree staircases are long chains of
    collinear vertices. Dropping them loses nothing: the polygon is the same.
    """
    if not np.array_equal(polygon[0], polygon[-1]):
        polygon = np.vstack([polygon, polygon[:1]])
    steps = np.diff(polygon, axis=0)
    # The vertex before each step turns if this step's direction differs from the last one's.
    previous = np.roll(steps, 1, axis=0)
    turns = np.abs(previous[:, 0] * steps[:, 1] - previous[:, 1] * steps[:, 0]) > 1e-9
    turns |= np.einsum("ij,ij->i", previous, steps) < 0  # a reversal is a turn too
    kept = polygon[:-1][turns]
    if len(kept) == 0:
        return polygon
    return np.vstack([kept, kept[:1]])


def polygon_area(contour: Contour) -> float:
    """Signed area of a closed polygon in pixels (shoelace formula).

    Parameters
    ----------
    contour : Contour
        ``(N, 2)`` points, last equal to first.

    Returns
    -------
    float
        Positive or negative by the polygon's orientation.
    """
    y, x = contour[:, 0], contour[:, 1]
    return float(0.5 * (np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def edge(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The pixels of a 2-D mask that touch its outside (4-connected): its outline as pixels.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean ``(rows, columns)``.

    Returns
    -------
    numpy.ndarray
        Boolean, same shape; the mask's pixels with a neighbour outside it.
    """
    out = np.zeros_like(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return out
    columns = np.flatnonzero(mask.any(axis=0))
    # Erode only the mask's bounding box (plus one pixel): outlines are small, slices are not.
    r0, r1 = max(int(rows[0]) - 1, 0), int(rows[-1]) + 2
    c0, c1 = max(int(columns[0]) - 1, 0), int(columns[-1]) + 2
    crop = np.pad(mask[r0:r1, c0:c1], 1)
    # A pixel is inner when it and its four neighbours are in the mask (a cross erosion).
    inner = crop[1:-1, 1:-1] & crop[:-2, 1:-1] & crop[2:, 1:-1] & crop[1:-1, :-2] & crop[1:-1, 2:]
    out[r0:r1, c0:c1] = crop[1:-1, 1:-1] & ~inner
    return out


def to_image_coordinates(contour: Contour) -> npt.NDArray[np.float32]:
    """DICOM image coordinates of a contour: ``(column, row)``, pixel centres at ``+0.5``.

    Parameters
    ----------
    contour : Contour
        ``(row, column)`` index coordinates.

    Returns
    -------
    numpy.ndarray
        ``(N, 2)`` float32, as SCOORD Graphic Data and GSPS PIXEL units want them.
    """
    return np.ascontiguousarray(contour[:, ::-1] + 0.5, dtype=np.float32)


def to_patient(volume: Volume, slice_index: int, contour: Contour) -> npt.NDArray[np.float64]:
    """Patient coordinates (LPS mm) of a contour on one slice of a volume.

    The slice's own Image Position (Patient) places it where the source image
    or frame lies (:attr:`pipelines.volume.Volume.source_positions`, right for a
    tilted or unevenly spaced stack too); the volume's affine gives the in-plane
    steps.

    Parameters
    ----------
    volume : Volume
        The source volume.
    slice_index : int
        The slice the contour lies on.
    contour : Contour
        ``(row, column)`` index coordinates.

    Returns
    -------
    numpy.ndarray
        ``(N, 3)`` float64 points.
    """
    origin = volume.source_positions[slice_index]
    row_step = volume.affine[:3, 1]  # one row down, in mm
    column_step = volume.affine[:3, 2]  # one column right, in mm
    points = origin + np.outer(contour[:, 0], row_step) + np.outer(contour[:, 1], column_step)
    return np.asarray(points, dtype=np.float64)
