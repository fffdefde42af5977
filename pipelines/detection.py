"""A detector's boxes as findings placed on the source slices.

A detection bundle (``lung_nodule_ct_detection``) gives, per image, boxes with a
class label and a score; its postprocessing decides their format (MONAI box
mode, e.g. ``cccwhd``) and their space (voxels of the preprocessed image, or
world coordinates after ``AffineBoxToWorldCoordinated``, LPS when its
``affine_lps_to_ras`` flag undoes the RAS of the loaded image). Both are read
from the parsed postprocessing unless the pipeline YAML states them
(:class:`pipelines.spec.DetectionSpec`).

:func:`findings` turns each box scoring at least the threshold into a
:class:`Finding`: its corners in patient coordinates (LPS, mm), the source
slices it covers, the slice through its centre and the rectangle it makes on
that slice in pixel coordinates, its extents along the patient axes and the
volume of the ellipsoid it bounds.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.apps.detection.transforms.dictionary import (
    AffineBoxToWorldCoordinated,
    ConvertBoxModed,
)
from monai.data.box_utils import convert_box_mode
from monai.transforms.compose import Compose

from pipelines.errors import PipelineError
from pipelines.spec import BoxSpace, DetectionSpec, LabelSpec
from pipelines.volume import Volume

__all__ = ["Finding", "box_format", "findings"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected box on the source volume.

    Attributes
    ----------
    label : LabelSpec
        The class it was reported as.
    score : float
        The detector's score, in [0, 1].
    corners_lps : numpy.ndarray
        ``(8, 3)`` corners in patient coordinates (mm).
    center_lps : numpy.ndarray
        ``(3,)`` centre in patient coordinates (mm).
    slices : tuple[int, ...]
        Indices of the volume's source slices (:attr:`pipelines.volume.Volume.datasets`)
        the box covers, in order.
    center_slice : int
        Index of the slice nearest the centre.
    rectangle : tuple[float, float, float, float]
        ``(column_min, row_min, column_max, row_max)`` on the centre slice, in
        pixel coordinates as SCOORD writes them (PS3.3 C.18.6.1.1: column, row,
        the top-left pixel's centre at 0.5, 0.5), clipped to the image.
    extent_mm : tuple[float, float, float]
        Extent left-right, anterior-posterior and cranio-caudal (mm).
    """

    label: LabelSpec
    score: float
    corners_lps: npt.NDArray[np.float64]
    center_lps: npt.NDArray[np.float64]
    slices: tuple[int, ...]
    center_slice: int
    rectangle: tuple[float, float, float, float]
    extent_mm: tuple[float, float, float]

    @property
    def ellipsoid_volume_mm3(self) -> float:
        """Volume of the ellipsoid inscribed in the box (mm^3)."""
        a, b, c = self.extent_mm
        return math.pi / 6.0 * a * b * c


def box_format(postprocessing: Any, spec: DetectionSpec) -> tuple[str, BoxSpace]:
    """The box mode and space of a detector's output after its postprocessing.

    Parameters
    ----------
    postprocessing : Any
        The parsed postprocessing of the bundle (or None).
    spec : DetectionSpec
        The pipeline's statement, which wins where given.

    Returns
    -------
    tuple[str, BoxSpace]
        e.g. ``("cccwhd", BoxSpace.WORLD_LPS)``.
    """
    mode, space = "xyzxyz", BoxSpace.IMAGE
    transforms = postprocessing.transforms if isinstance(postprocessing, Compose) else ()
    for transform in transforms:
        if isinstance(transform, ConvertBoxModed):
            mode = _mode_name(transform.converter.dst_mode)
        elif isinstance(transform, AffineBoxToWorldCoordinated):
            lps = bool(transform.affine_lps_to_ras)
            space = BoxSpace.WORLD_LPS if lps else BoxSpace.WORLD_RAS
    return spec.box_mode or mode, spec.box_space or space


def findings(
    values: dict[str, Any],
    image: Any,
    volume: Volume,
    labels: list[LabelSpec],
    spec: DetectionSpec,
    postprocessing: Any,
) -> list[Finding]:
    """Boxes at or above the score threshold, best first, as findings on the volume.

    Parameters
    ----------
    values : dict[str, Any]
        The bundle's non-tensor output: boxes, labels, scores under the keys of
        ``spec``.
    image : monai.data.MetaTensor
        The preprocessed image (its affine places boxes given in its voxels).
    volume : Volume
        The source volume.
    labels : list[LabelSpec]
        The pipeline's classes; ``value`` is the detector's label.
    spec : DetectionSpec
        Keys, threshold, limit and box format.
    postprocessing : Any
        The bundle's parsed postprocessing, for the box format.

    Returns
    -------
    list[Finding]
        At most ``spec.max_findings``; boxes of a class the pipeline does not
        list, and boxes outside the volume, are left out.

    Raises
    ------
    PipelineError
        If the output lacks the boxes, labels or scores, or their counts differ.
    """
    missing = [k for k in (spec.box_key, spec.score_key) if k not in values]
    if missing:
        raise PipelineError(
            f"the detector's output has no {', '.join(missing)} (it has: "
            f"{', '.join(sorted(values)) or 'nothing'}); set detection.box_key/score_key"
        )
    boxes = torch.as_tensor(values[spec.box_key]).float().reshape(-1, 6)
    scores = torch.as_tensor(values[spec.score_key]).float().reshape(-1)
    classes = (
        torch.as_tensor(values[spec.label_key]).reshape(-1).long()
        if spec.label_key in values
        else torch.zeros(len(scores), dtype=torch.long)
    )
    if not len(boxes) == len(scores) == len(classes):
        raise PipelineError(
            f"the detector gave {len(boxes)} boxes, {len(scores)} scores, {len(classes)} labels"
        )
    mode, space = box_format(postprocessing, spec)
    converted = torch.as_tensor(convert_box_mode(boxes, src_mode=mode, dst_mode="xyzxyz"))
    corners = converted.double().numpy()
    by_value = {label.value: label for label in labels}
    order = torch.argsort(scores, descending=True).tolist()
    found: list[Finding] = []
    for index in order:
        score = float(scores[index])
        label = by_value.get(int(classes[index]))
        if score < spec.score_threshold or label is None:
            continue
        finding = _place(corners[index], space, image, volume, label, min(score, 1.0))
        if finding is not None:
            found.append(finding)
        if len(found) == spec.max_findings:
            break
    return found


def _mode_name(mode: Any) -> str:
    if isinstance(mode, str):
        return mode
    name = getattr(mode, "name", None) or type(mode).__name__
    # MONAI's BoxMode classes are named after their mode (CornerCornerModeTypeA ...).
    return {
        "CornerCornerModeTypeA": "xyzxyz",
        "CornerCornerModeTypeB": "xxyyzz",
        "CornerCornerModeTypeC": "xyxyzz",
        "CornerSizeMode": "xyzwhd",
        "CenterSizeMode": "cccwhd",
    }.get(str(name), "xyzxyz")


def _place(
    box: npt.NDArray[np.float64],
    space: BoxSpace,
    image: Any,
    volume: Volume,
    label: LabelSpec,
    score: float,
) -> Finding | None:
    """One xyzxyz box as a finding on the volume, or None when it misses the volume."""
    low, high = box[:3], box[3:]
    corners = np.array(
        [[(low, high)[i][0], (low, high)[j][1], (low, high)[k][2]]
         for i, j, k in itertools.product((0, 1), repeat=3)],
        dtype=np.float64,
    )  # fmt: skip
    if space is BoxSpace.WORLD_RAS:
        corners = corners @ _LPS_TO_RAS.T  # RAS and LPS differ by the sign of x and y
    elif space is BoxSpace.IMAGE:
        affine = torch.as_tensor(image.affine).double().numpy()
        homogeneous = np.c_[corners, np.ones(len(corners))]
        corners = (homogeneous @ affine.T)[:, :3] @ _LPS_TO_RAS.T  # image affine is RAS
    # The source slices, each at its own position: right for a tilted or unevenly
    # spaced stack as well, whose grid the detector saw but the radiologist does not.
    source = volume.source_view()
    positions = source.source_positions
    orientation = np.asarray(source.image_orientation, dtype=np.float64)
    row_dir, column_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, column_dir)
    depth = positions @ normal
    if len(depth) > 1 and depth[-1] < depth[0]:
        normal, depth = -normal, -depth
    # A slice stands for the slab half-way to each neighbour (its own step at the ends).
    steps = np.diff(depth) if len(depth) > 1 else np.array([source.spacing[0]])
    below = np.r_[steps[0], steps] / 2.0
    above = np.r_[steps, steps[-1]] / 2.0
    reach = corners @ normal
    covered = np.flatnonzero((reach.max() > depth - below) & (reach.min() < depth + above))
    if covered.size == 0:
        return None
    first, last = int(covered[0]), int(covered[-1])
    center = corners.mean(axis=0)
    nearest = int(np.argmin(np.abs(depth - float(center @ normal))))
    center_slice = min(max(nearest, first), last)
    # In-plane indices on the centre slice: rows down the column direction, columns
    # along the row direction (PS3.3 C.7.6.2.1.1).
    _, rows, columns = source.shape
    offset = corners - positions[center_slice]
    row_index = offset @ column_dir / source.spacing[1]
    column_index = offset @ row_dir / source.spacing[2]
    # SCOORD: column then row, pixel centres at .5 (PS3.3 C.18.6.1.1).
    column_min = float(np.clip(column_index.min() + 0.5, 0.0, columns))
    column_max = float(np.clip(column_index.max() + 0.5, 0.0, columns))
    row_min = float(np.clip(row_index.min() + 0.5, 0.0, rows))
    row_max = float(np.clip(row_index.max() + 0.5, 0.0, rows))
    if column_max <= column_min or row_max <= row_min:
        return None
    extent = corners.max(axis=0) - corners.min(axis=0)
    return Finding(
        label=label,
        score=score,
        corners_lps=corners,
        center_lps=center,
        slices=tuple(range(first, last + 1)),
        center_slice=center_slice,
        rectangle=(column_min, row_min, column_max, row_max),
        extent_mm=(float(extent[0]), float(extent[1]), float(extent[2])),
    )
