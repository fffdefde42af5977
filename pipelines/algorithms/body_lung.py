"""Body outline and left/right lungs of a chest CT from HU thresholds (no weights).

The steps, as MONAI array transforms on the channel-first image that
:meth:`pipelines.volume.Volume.to_metatensor` gives in the ``slices`` layout
(spatial axes ``(slice, row, column)``, LPS affine; the ``monai`` layout is a
transposed view, on which every slice-wise step would stride through memory):

1. **Body**: ``AsDiscrete(threshold=-500)``, then the largest 6-connected
   component (the patient table is separated from the patient by air, so it is
   a different component), then holes filled slice by slice. The lungs are
   enclosed by the chest wall in every axial slice, so filling puts them inside
   the body.
2. **Air inside the body**: voxels below -400 HU inside the body, without the
   components that touch the outside of the body (partial-volume voxels along
   the skin, which lie between the two thresholds).
3. **Airway**: the airway lumen is air below :data:`AIRWAY_THRESHOLD_HU`
   (-1000 HU; aerated lung is about -850, so a bronchus stays apart from the
   lung it runs along). The trachea is found in the top slices as a small
   lumen region (:data:`TRACHEA_MIN_AREA_MM2` to :data:`AIRWAY_MAX_AREA_MM2`)
   near the body's midline and followed down, slice by slice, through the
   carina into both main bronchi. A region within :data:`AIRWAY_REACH_MM` of
   the airway above it is airway as long as it stays small (at most :data:`AIRWAY_GROWTH` times
   the part above); where it suddenly grows, it has leaked into a lung and the
   tracing of that branch stops (the "explosion" control of classical airway
   region growing, as in Hu, Hoffman and Reinhardt, IEEE TMI 20(6), 2001). The
   lumen and its one-pixel partial-volume rim are airway, not lung.
4. **Lungs**: air components of at least :data:`MIN_LUNG_ML` and at least
   :data:`MIN_LUNG_FRACTION` of the largest one (bowel gas, small air pockets
   and noise are dropped).
5. **Right and left**, by the lungs' own connected components. The patient's
   right is -x in LPS (+x in RAS), read from the affine, never from the column
   index. A component that lies at least :data:`SIDE_MAJORITY` on one side of
   the body's centre goes to that side. One that straddles the midline is two
   lungs touching (at the anterior junction): it is eroded in-plane until it
   falls apart into two lung-sized parts, and every voxel goes to the part
   nearest to it, so the cut follows the narrow junction. Only if no erosion up
   to :data:`MAX_JUNCTION_MM` separates it is it cut at the midline.

MONAI's ``KeepLargestConnectedComponent`` and ``RemoveSmallObjects`` need
scikit-image on the CPU, which this project does not install, and its
``FillHoles`` fills in 3-D. The transforms below wrap ``scipy.ndimage``
instead and follow MONAI's array-transform conventions.

For demonstration and tests, not for diagnosis: a table that touches the
patient, or a large air-filled stomach, fools it; intrapulmonary airways are
counted as lung, as lung masks usually do.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import numpy.typing as npt
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms.compose import Compose
from monai.transforms.post.array import AsDiscrete
from monai.transforms.transform import Transform
from monai.utils.enums import MetaKeys, SpaceKeys, TransformBackends
from monai.utils.type_conversion import convert_to_dst_type, convert_to_numpy
from scipy import ndimage

from pipelines.errors import UnsupportedInput
from pipelines.volume import TensorLayout, Volume

__all__ = [
    "AIRWAY_GROWTH",
    "AIRWAY_MAX_AREA_MM2",
    "AIRWAY_REACH_MM",
    "AIRWAY_THRESHOLD_HU",
    "BODY",
    "BODY_THRESHOLD_HU",
    "LABEL_NAMES",
    "LEFT_LUNG",
    "LUNG_THRESHOLD_HU",
    "MAX_JUNCTION_MM",
    "MIN_LUNG_FRACTION",
    "MIN_LUNG_ML",
    "RIGHT_LUNG",
    "SIDE_MAJORITY",
    "TRACHEA_MAX_OFFSET_MM",
    "TRACHEA_MIN_AREA_MM2",
    "FillHolesInPlane",
    "KeepLargestComponent",
    "find_airway",
    "segment_body_lungs",
]

logger = logging.getLogger(__name__)

BODY = "body"
RIGHT_LUNG = "right_lung"
LEFT_LUNG = "left_lung"
#: The masks :func:`segment_body_lungs` returns, by label name.
LABEL_NAMES = (BODY, RIGHT_LUNG, LEFT_LUNG)

#: Body: at or above this HU (air is -1000, fat -100; the midpoint is -550).
BODY_THRESHOLD_HU = -500.0
#: Lung: below this HU (aerated lung about -850, soft tissue about 40; midpoint about -405).
LUNG_THRESHOLD_HU = -400.0
#: A lung component must hold at least this volume (mL).
MIN_LUNG_ML = 50.0
#: ... and at least this fraction of the largest lung component.
MIN_LUNG_FRACTION = 0.1
#: Fraction of a component's voxels on one side of the midline to give it all to that side.
SIDE_MAJORITY = 0.9
#: Largest angle (degrees) between the slice normal and the head-feet axis.
MAX_TILT_DEG = 35.0
#: Airway lumen: below this HU (air -1000; aerated lung about -850).
AIRWAY_THRESHOLD_HU = -950.0
#: A trachea's cross-section is at least this (mm^2; an adult's is about 250)...
TRACHEA_MIN_AREA_MM2 = 30.0
#: ... and an airway region at most this; a larger one is lung.
AIRWAY_MAX_AREA_MM2 = 1200.0
#: The trachea's centre lies within this distance (mm) of the body's midline.
TRACHEA_MAX_OFFSET_MM = 30.0
#: How far down from the first air inside the body the trachea is looked for (mm).
TRACHEA_SEARCH_MM = 60.0
#: How far (mm) an airway region may lie from the airway in the slice above.
AIRWAY_REACH_MM = 10.0
#: An airway region may be at most this many times the airway it continues (else: lung).
AIRWAY_GROWTH = 3.0
#: Deepest in-plane erosion (mm) tried to part two lungs that touch.
MAX_JUNCTION_MM = 15.0

# 6-connectivity in 3-D: a thin air gap separates the table from the patient.
_FACE_3D = ndimage.generate_binary_structure(3, 1)


def _in_slice_structure() -> npt.NDArray[np.bool_]:
    """4-connectivity within axes 1 and 2, none along axis 0 (the slices)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    return structure


_IN_SLICE = _in_slice_structure()


class KeepLargestComponent(Transform):
    """Keep the largest connected component of a one-channel binary image.

    Like ``monai.transforms.KeepLargestConnectedComponent`` for a single
    foreground, but with ``scipy.ndimage.label`` (no scikit-image needed).

    Parameters
    ----------
    connectivity : int
        1 (faces), 2 (faces and edges) or 3 (and corners), as in scikit-image.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, connectivity: int = 1) -> None:
        if connectivity not in (1, 2, 3):
            raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity}")
        self.connectivity = connectivity

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return a boolean image of the same type holding the largest component.

        Parameters
        ----------
        img : numpy.ndarray or torch.Tensor
            Shape ``(1, *spatial)``; non-zero is foreground.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            Same type and meta as ``img``, dtype bool.
        """
        mask = _channel(img)
        structure = ndimage.generate_binary_structure(mask.ndim, self.connectivity)
        labels, count = _label(mask, structure)
        if count > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            mask = labels == int(np.argmax(sizes))
        return _like(mask, img)


class FillHolesInPlane(Transform):
    """Fill the holes of a one-channel binary 3-D image slice by slice.

    A hole is background that is not 4-connected, within its slice, to the
    slice's border. MONAI's ``FillHoles`` works in 3-D instead, where the lungs
    are not holes (the airway and the ends of the scan open them).

    Parameters
    ----------
    slice_axis : int
        Spatial axis across which the slices are stacked: 0 for the ``slices``
        layout of :meth:`Volume.to_metatensor`, 2 for the ``monai`` layout.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, slice_axis: int = 0) -> None:
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
        self.slice_axis = slice_axis

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return the image with in-slice holes filled.

        Parameters
        ----------
        img : numpy.ndarray or torch.Tensor
            Shape ``(1, *spatial)`` with three spatial axes; non-zero is foreground.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            Same type and meta as ``img``, dtype bool.

        Raises
        ------
        ValueError
            If the image does not have three spatial axes.
        """
        mask = _channel(img)
        if mask.ndim != 3:
            raise ValueError(f"FillHolesInPlane needs 3 spatial axes, got {mask.ndim}")
        # Work with the slice axis first, so each slice is a[k].
        background = np.moveaxis(~mask, self.slice_axis, 0)
        labels, _ = _label(background, _IN_SLICE)
        border = np.unique(
            np.concatenate(
                [
                    labels[:, 0, :].ravel(),
                    labels[:, -1, :].ravel(),
                    labels[:, :, 0].ravel(),
                    labels[:, :, -1].ravel(),
                ]
            )
        )
        outside = np.zeros(int(labels.max()) + 1, dtype=bool)
        outside[border] = True
        outside[0] = False  # label 0 is the foreground itself
        filled = np.moveaxis(~outside[labels], 0, self.slice_axis)
        return _like(filled, img)


def segment_body_lungs(volume: Volume) -> dict[str, npt.NDArray[np.bool_]]:
    """Segment the body and the right and left lungs of a chest CT.

    Parameters
    ----------
    volume : Volume
        An axial CT in HU.

    Returns
    -------
    dict[str, numpy.ndarray]
        Boolean masks of shape ``volume.shape`` for ``body``, ``right_lung`` and
        ``left_lung``. They overlap: the body contains the lungs.

    Raises
    ------
    UnsupportedInput
        If the series is not CT or its slices are not (roughly) axial.
    """
    modality = str(volume.datasets[0].get("Modality", ""))
    if modality != "CT":
        raise UnsupportedInput(
            f"body_lung_threshold needs CT, the series is {modality or 'unknown'}"
        )
    tilt = math.degrees(math.acos(min(1.0, abs(float(volume.slice_normal[2])))))
    if tilt > MAX_TILT_DEG:
        raise UnsupportedInput(
            f"body_lung_threshold needs axial slices; these are {tilt:.0f} degrees from axial"
        )
    started = time.perf_counter()
    image = volume.to_metatensor(TensorLayout.SLICES)
    body_chain = Compose(
        [
            AsDiscrete(threshold=BODY_THRESHOLD_HU),
            KeepLargestComponent(connectivity=1),
            FillHolesInPlane(slice_axis=0),
        ]
    )
    body = _channel(body_chain(image))
    dense = _channel(AsDiscrete(threshold=LUNG_THRESHOLD_HU)(image))
    right = np.zeros_like(body)
    left = np.zeros_like(body)
    box = _bounding_box(body, margin=1)
    if box is not None:
        # The lungs lie inside the body: work on its bounding box only.
        affine_lps = _lps_affine(image.affine, image.meta.get(MetaKeys.SPACE, SpaceKeys.RAS))
        offset = np.eye(4)
        offset[:3, 3] = [s.start for s in box]
        affine_box = affine_lps @ offset
        air = _inside_air(body[box] & ~dense[box], body[box])
        lumen = air & (volume.array[box] < AIRWAY_THRESHOLD_HU)
        air &= ~find_airway(air, lumen, body[box], affine_box)
        lungs = _lung_components(air, volume.voxel_volume_ml)
        right[box], left[box] = _split_sides(lungs, body[box], affine_box)
    del dense
    logger.info(
        "body_lung_threshold slices=%d seconds=%.3f", volume.shape[0], time.perf_counter() - started
    )
    return {BODY: body, RIGHT_LUNG: right, LEFT_LUNG: left}


def _inside_air(
    candidates: npt.NDArray[np.bool_], body: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Air inside the body, without components next to the outside within a slice.

    Those are the skin's partial-volume rim, between the body and lung thresholds.
    """
    labels, count = _label(candidates, _FACE_3D)
    if count == 0:
        return candidates
    outside = ~body
    touches = np.zeros_like(candidates)
    touches[:, 1:] |= outside[:, :-1]
    touches[:, :-1] |= outside[:, 1:]
    touches[:, :, 1:] |= outside[:, :, :-1]
    touches[:, :, :-1] |= outside[:, :, 1:]
    touches &= candidates
    rim = np.zeros(count + 1, dtype=bool)
    rim[np.unique(labels[touches])] = True
    rim[0] = True
    inside: npt.NDArray[np.bool_] = ~rim[labels]
    return inside


def find_airway(
    air: npt.NDArray[np.bool_],
    lumen: npt.NDArray[np.bool_],
    body: npt.NDArray[np.bool_],
    affine_lps: npt.NDArray[np.float64],
) -> npt.NDArray[np.bool_]:
    """Trace the trachea and main bronchi down from the top of an axial volume.

    The lumen is traced; the airway is then the air around it: in each slice,
    the whole air region holding traced lumen while that region is
    airway-sized, else (where a bronchus touches the lung in the slice) the
    lumen and its one-pixel partial-volume rim.

    Parameters
    ----------
    air : numpy.ndarray
        Boolean ``[slice, row, column]``: air inside the body (below
        :data:`LUNG_THRESHOLD_HU`).
    lumen : numpy.ndarray
        Boolean, same shape: air below :data:`AIRWAY_THRESHOLD_HU`.
    body : numpy.ndarray
        Boolean, same shape: the body.
    affine_lps : numpy.ndarray
        4x4: index ``(slice, row, column, 1)`` to LPS mm.

    Returns
    -------
    numpy.ndarray
        Boolean, same shape: the airway outside the lungs (empty when the volume
        holds no trachea, e.g. it starts below the carina).
    """
    traced = _trace_lumen(lumen, body, affine_lps)
    airway = np.zeros_like(air)
    pixel_mm2 = float(np.linalg.norm(np.cross(affine_lps[:3, 1], affine_lps[:3, 2])))
    for k in np.flatnonzero(traced.any(axis=(1, 2))):
        labels, _ = ndimage.label(air[k], structure=_IN_SLICE[1])
        rim = ndimage.binary_dilation(traced[k], structure=_IN_SLICE[1])
        for region in np.unique(labels[traced[k]]):
            if region == 0:
                continue
            inside = labels == region
            if np.count_nonzero(inside) * pixel_mm2 <= AIRWAY_MAX_AREA_MM2:
                airway[k] |= inside
            else:
                airway[k] |= inside & rim
    return airway


def _trace_lumen(
    lumen: npt.NDArray[np.bool_], body: npt.NDArray[np.bool_], affine_lps: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """The trachea's lumen found near the top, followed down into both main bronchi."""
    airway = np.zeros_like(lumen)
    pixel_mm2 = float(np.linalg.norm(np.cross(affine_lps[:3, 1], affine_lps[:3, 2])))
    in_plane = (float(np.linalg.norm(affine_lps[:3, 1])), float(np.linalg.norm(affine_lps[:3, 2])))
    # Head first: walk the slices from the top (highest z) down.
    order = range(lumen.shape[0] - 1, -1, -1) if affine_lps[2, 0] > 0 else range(lumen.shape[0])
    slice_mm = float(np.linalg.norm(affine_lps[:3, 0]))
    search = max(1, math.ceil(TRACHEA_SEARCH_MM / slice_mm))
    current: npt.NDArray[np.bool_] | None = None
    searched = 0
    plane = _IN_SLICE[1]
    for k in order:
        if not lumen[k].any():
            if current is not None:
                break
            continue
        labels, count = ndimage.label(lumen[k], structure=plane)
        areas = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64) * pixel_mm2
        if current is None:
            seed = _trachea_seed(labels, count, areas, body[k], affine_lps, k)
            searched += 1
            if seed is None:
                if searched >= search:
                    break
                continue
            airway[k] = labels == seed
            current = airway[k]
            continue
        accepted = _continuing_regions(labels, areas, current, in_plane, pixel_mm2)
        if not accepted.any():
            break
        airway[k] = accepted[labels]
        current = airway[k]
    return airway


def _continuing_regions(
    labels: npt.NDArray[np.int32],
    areas: npt.NDArray[np.float64],
    above: npt.NDArray[np.bool_],
    in_plane: tuple[float, float],
    pixel_mm2: float,
) -> npt.NDArray[np.bool_]:
    """Which regions of a slice continue the airway of the slice above (by region label).

    A region continues it when it lies within AIRWAY_REACH_MM of an airway piece
    above (a bronchus leaving the carina at a shallow angle moves sideways from
    slice to slice) and stays airway-sized: at most AIRWAY_GROWTH times the
    pieces it continues, and at most AIRWAY_MAX_AREA_MM2.
    """
    pieces, count = ndimage.label(above, structure=_IN_SLICE[1])
    piece_areas = np.bincount(pieces.ravel(), minlength=count + 1) * pixel_mm2
    part_above = np.zeros(len(areas), dtype=np.float64)
    margin = (math.ceil(AIRWAY_REACH_MM / in_plane[0]), math.ceil(AIRWAY_REACH_MM / in_plane[1]))
    for piece, where in enumerate(ndimage.find_objects(pieces), start=1):
        if where is None:
            continue
        # Only the piece's neighbourhood is measured, not the whole slice.
        box = tuple(
            slice(max(0, w.start - m), min(n, w.stop + m))
            for w, m, n in zip(where, margin, pieces.shape, strict=True)
        )
        near = ndimage.distance_transform_edt(pieces[box] != piece, sampling=in_plane)
        regions = np.unique(labels[box][near <= AIRWAY_REACH_MM])
        part_above[regions] += piece_areas[piece]
    accepted = (part_above > 0) & (
        areas <= np.minimum(AIRWAY_MAX_AREA_MM2, AIRWAY_GROWTH * part_above + pixel_mm2)
    )
    accepted[0] = False
    return accepted


def _trachea_seed(
    labels: npt.NDArray[np.int32],
    count: int,
    areas: npt.NDArray[np.float64],
    body: npt.NDArray[np.bool_],
    affine_lps: npt.NDArray[np.float64],
    k: int,
) -> int | None:
    """The largest trachea-sized air region near the midline of one slice, or None."""
    if count == 0 or not body.any():
        return None
    sized = [
        region
        for region in range(1, count + 1)
        if TRACHEA_MIN_AREA_MM2 <= areas[region] <= AIRWAY_MAX_AREA_MM2
    ]
    if not sized:
        return None
    centres = ndimage.center_of_mass(labels > 0, labels, sized)
    body_centre = ndimage.center_of_mass(body)

    def x_of(row: float, column: float) -> float:
        return float(affine_lps[0] @ np.array([k, row, column, 1.0]))

    midline = x_of(*body_centre)
    near = [
        region
        for region, centre in zip(sized, centres, strict=True)
        if abs(x_of(*centre) - midline) <= TRACHEA_MAX_OFFSET_MM
    ]
    return max(near, key=lambda region: areas[region]) if near else None


def _lung_components(air: npt.NDArray[np.bool_], voxel_ml: float) -> npt.NDArray[np.int32]:
    """Label the air inside the body and keep the lung-sized components (0 elsewhere)."""
    labels, count = _label(air, _FACE_3D)
    if count == 0:
        return labels
    sizes = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
    sizes[0] = 0
    largest = float(sizes.max())
    keep = (sizes * voxel_ml >= MIN_LUNG_ML) & (sizes >= MIN_LUNG_FRACTION * largest)
    keep[0] = False
    kept = np.flatnonzero(keep)
    relabel = np.zeros(count + 1, dtype=np.int32)
    relabel[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    return relabel[labels]


def _split_sides(
    lungs: npt.NDArray[np.int32], body: npt.NDArray[np.bool_], affine_lps: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Assign lung components to the patient's right (-x in LPS) or left."""
    right = np.zeros_like(lungs, dtype=bool)
    left = np.zeros_like(lungs, dtype=bool)
    count = int(lungs.max())
    if count == 0:
        return right, left
    centre_index = _centre_of_mass(body)
    midline_x = float(affine_lps[0, :3] @ centre_index + affine_lps[0, 3])

    def x_of(coords: tuple[npt.NDArray[np.intp], ...]) -> npt.NDArray[np.float64]:
        return np.asarray(
            affine_lps[0, 3] + sum(affine_lps[0, axis] * coords[axis] for axis in range(3)),
            dtype=np.float64,
        )

    for label in range(1, count + 1):
        component = lungs == label
        coords = np.nonzero(component)
        fraction_right = float(np.mean(x_of(coords) < midline_x))
        if fraction_right >= SIDE_MAJORITY:
            right |= component
        elif fraction_right <= 1.0 - SIDE_MAJORITY:
            left |= component
        else:
            parts = _part_touching_lungs(component, affine_lps)
            if parts is None:
                # Last resort: no erosion parts them; cut at the body's midline.
                on_right = x_of(coords) < midline_x
                right[tuple(c[on_right] for c in coords)] = True
                left[tuple(c[~on_right] for c in coords)] = True
                continue
            first, second = parts
            first_x = float(np.mean(x_of(np.nonzero(first))))
            second_x = float(np.mean(x_of(np.nonzero(second))))
            right |= first if first_x < second_x else second
            left |= second if first_x < second_x else first
    return right, left


def _part_touching_lungs(
    component: npt.NDArray[np.bool_], affine_lps: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None:
    """Part two lungs that touch: erode in-plane until two lung-sized parts appear, grow back.

    Every voxel of the component goes to the part whose eroded core is nearest
    (in mm), so the cut runs along the narrow junction. None when no erosion up
    to MAX_JUNCTION_MM parts it into two pieces of which the smaller holds at
    least MIN_LUNG_FRACTION of the larger.
    """
    box = _bounding_box(component, margin=1)
    if box is None:
        return None
    inside = component[box]
    spacing = tuple(float(np.linalg.norm(affine_lps[:3, axis])) for axis in range(3))
    steps = max(1, math.ceil(MAX_JUNCTION_MM / min(spacing[1], spacing[2])))
    eroded = inside
    for _ in range(steps):
        eroded = ndimage.binary_erosion(eroded, structure=_IN_SLICE)
        labels, count = _label(eroded, _FACE_3D)
        if count < 2:
            if count == 0:
                return None
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        first, second = np.argsort(sizes)[::-1][:2]
        if sizes[second] < MIN_LUNG_FRACTION * sizes[first]:
            continue
        cores = np.where(labels == first, 1, np.where(labels == second, 2, 0))
        _, nearest = ndimage.distance_transform_edt(
            cores == 0, sampling=spacing, return_indices=True
        )
        owner = cores[tuple(nearest)]
        parts = []
        for value in (1, 2):
            part = np.zeros_like(component)
            part[box] = inside & (owner == value)
            parts.append(part)
        return parts[0], parts[1]
    return None


def _bounding_box(mask: npt.NDArray[np.bool_], margin: int) -> tuple[slice, ...] | None:
    """Smallest box holding a mask, grown by ``margin`` within the array; None if empty."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=others))
        if present.size == 0:
            return None
        start = max(int(present[0]) - margin, 0)
        stop = min(int(present[-1]) + 1 + margin, mask.shape[axis])
        box.append(slice(start, stop))
    return tuple(box)


def _label(
    mask: npt.NDArray[np.bool_], structure: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.int32], int]:
    """``scipy.ndimage.label`` in the array's memory order.

    The MONAI layout is a transposed (Fortran-ordered) view of the volume;
    labelling its C-ordered transpose avoids a copy and strided access.
    """
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:
        labels, count = ndimage.label(mask.T, structure=structure.T)
        return labels.T, int(count)
    labels, count = ndimage.label(mask, structure=structure)
    return labels, int(count)


def _centre_of_mass(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Mean index of a non-empty mask along each axis, from its projections."""
    total = float(np.count_nonzero(mask))
    centre = np.empty(mask.ndim, dtype=np.float64)
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        counts = np.count_nonzero(mask, axis=others)
        centre[axis] = float(np.arange(counts.size) @ counts) / total
    return centre


def _lps_affine(
    affine: torch.Tensor | npt.NDArray[np.float64], space: object
) -> npt.NDArray[np.float64]:
    """Return the image's affine in LPS, whatever space its meta says."""
    matrix = np.asarray(convert_to_numpy(affine), dtype=np.float64)
    if str(space) == str(SpaceKeys.LPS):
        return matrix
    return np.asarray(np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix, dtype=np.float64)


def _channel(img: NdarrayOrTensor) -> npt.NDArray[np.bool_]:
    """Return the single channel of a channel-first image as a numpy bool array."""
    if img.shape[0] != 1:
        raise ValueError(f"expected one channel, got {img.shape[0]}")
    array = convert_to_numpy(img[0])
    return np.asarray(array != 0) if array.dtype != np.bool_ else np.asarray(array)


def _like(mask: npt.NDArray[np.bool_], img: NdarrayOrTensor) -> NdarrayOrTensor:
    """Wrap a spatial mask as a one-channel image of the type (and meta) of ``img``."""
    out, *_ = convert_to_dst_type(mask[np.newaxis], dst=img, dtype=torch.bool)
    return out
