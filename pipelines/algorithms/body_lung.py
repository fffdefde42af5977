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
2. **Lung candidates**: voxels below -400 HU inside the body, without the
   components that touch the outside of the body (partial-volume voxels along
   the skin, which lie between the two thresholds).
3. **Lungs**: candidate components of at least :data:`MIN_LUNG_ML` and at least
   :data:`MIN_LUNG_FRACTION` of the largest one (bowel gas, small air pockets
   and noise are dropped).
4. **Right and left**: the patient's right is -x in LPS (+x in RAS), read from
   the affine, never from the column index. A component that lies at least
   :data:`SIDE_MAJORITY` on one side of the body's centre goes to that side;
   one that straddles the midline (lungs touching at the anterior junction, or
   a trachea joining them) is cut at the midline.

MONAI's ``KeepLargestConnectedComponent`` and ``RemoveSmallObjects`` need
scikit-image on the CPU, which this project does not install, and its
``FillHoles`` fills in 3-D. The transforms below wrap ``scipy.ndimage``
instead and follow MONAI's array-transform conventions.

For demonstration and tests, not for diagnosis: a table that touches the
patient, or a large air-filled stomach, fools it.
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
    "BODY",
    "BODY_THRESHOLD_HU",
    "LABEL_NAMES",
    "LEFT_LUNG",
    "LUNG_THRESHOLD_HU",
    "MIN_LUNG_FRACTION",
    "MIN_LUNG_ML",
    "RIGHT_LUNG",
    "SIDE_MAJORITY",
    "FillHolesInPlane",
    "KeepLargestComponent",
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
        candidates = body[box] & ~dense[box]
        lungs = _lung_components(candidates, body[box], volume.voxel_volume_ml)
        affine_lps = _lps_affine(image.affine, image.meta.get(MetaKeys.SPACE, SpaceKeys.RAS))
        offset = np.eye(4)
        offset[:3, 3] = [s.start for s in box]
        right[box], left[box] = _split_sides(lungs, body[box], affine_lps @ offset)
    del dense
    logger.info(
        "body_lung_threshold slices=%d seconds=%.3f", volume.shape[0], time.perf_counter() - started
    )
    return {BODY: body, RIGHT_LUNG: right, LEFT_LUNG: left}


def _lung_components(
    candidates: npt.NDArray[np.bool_], body: npt.NDArray[np.bool_], voxel_ml: float
) -> npt.NDArray[np.int32]:
    """Label the lung candidates and keep the lung-sized ones (0 elsewhere)."""
    labels, count = _label(candidates, _FACE_3D)
    if count == 0:
        return labels
    # Candidates next to the outside within a slice are the skin's partial-volume rim.
    outside = ~body
    touches = np.zeros_like(candidates)
    touches[:, 1:] |= outside[:, :-1]
    touches[:, :-1] |= outside[:, 1:]
    touches[:, :, 1:] |= outside[:, :, :-1]
    touches[:, :, :-1] |= outside[:, :, 1:]
    touches &= candidates
    sizes = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
    sizes[0] = 0
    sizes[np.unique(labels[touches])] = 0
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
    coords = np.nonzero(lungs)
    x = affine_lps[0, 3] + sum(affine_lps[0, axis] * coords[axis] for axis in range(3))
    on_right = np.asarray(x < midline_x)
    component = lungs[coords]
    for label in range(1, count + 1):
        members = component == label
        fraction_right = float(np.mean(on_right[members]))
        if fraction_right >= SIDE_MAJORITY:
            side_right = np.ones(int(members.sum()), dtype=bool)
        elif fraction_right <= 1.0 - SIDE_MAJORITY:
            side_right = np.zeros(int(members.sum()), dtype=bool)
        else:
            side_right = on_right[members]
        where = tuple(c[members] for c in coords)
        right[where] = side_right
        left[where] = ~side_right
    return right, left


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
