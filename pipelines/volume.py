"""Turn a checked series into a volume of Hounsfield units with its affine.

Axis order and coordinates
--------------------------
:class:`Volume` arrays are indexed ``[slice, row, column]``: slices are sorted
along the slice normal (the cross product of the row and column direction
cosines of Image Orientation (Patient), PS3.3 C.7.6.2.1.1), so slice 0 has the
lowest position along the normal (feet first for an axial series written in the
usual way). The 4x4 :attr:`Volume.affine` maps an index ``(slice, row, column, 1)``
to patient coordinates in mm in DICOM's LPS system (+x patient left, +y
posterior, +z head).

:meth:`Volume.to_metatensor` gives the same data the way MONAI's ``LoadImage``
(ITK reader) does, so MONAI transforms and bundles see what they were built for:
channel first, spatial axes ``(column, row, slice)`` and an RAS affine.

Nothing here logs patient data; only counts and timings.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from pipelines.errors import InconsistentGeometry, PipelineError, UnsupportedInput
from pipelines.load import Series, SeriesFrame
from pipelines.pixels import decode_with_pydicom, read_native

if TYPE_CHECKING:
    from monai.data.meta_tensor import MetaTensor

__all__ = ["MAX_TILT_DEG", "RegionStats", "TensorLayout", "Volume", "to_volume"]

logger = logging.getLogger(__name__)

#: Largest difference between direction cosines still counted as the same orientation.
ORIENTATION_TOLERANCE = 1e-3
#: Largest relative deviation of one slice step from the median step (10 %).
SPACING_TOLERANCE = 0.10
#: Steps shorter than this (mm) mean two slices share a position.
DUPLICATE_TOLERANCE_MM = 1e-2
#: Largest angle (degrees) between the step from slice to slice and the slice normal;
#: beyond it the stack is sheared (gantry tilt) and is refused.
MAX_TILT_DEG = 0.5

# Index order (column, row, slice) of MONAI's layout -> our (slice, row, column).
_MONAI_TO_OURS = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class TensorLayout(StrEnum):
    """Axis order and space of :meth:`Volume.to_metatensor`."""

    #: As MONAI's ``LoadImage`` (ITK reader) gives: ``(1, column, row, slice)``, RAS affine.
    MONAI = "monai"
    #: As :attr:`Volume.array`: ``(1, slice, row, column)``, LPS affine; no transposed views.
    SLICES = "slices"


@dataclass(frozen=True, slots=True)
class RegionStats:
    """Measurements of one mask over a volume.

    Attributes
    ----------
    voxels : int
        Number of voxels in the mask.
    volume_ml : float
        Volume in mL (1 mL = 1000 mm^3).
    mean_hu : float or None
        Mean value (HU for CT) inside the mask; None for an empty mask.
    """

    voxels: int
    volume_ml: float
    mean_hu: float | None


@dataclass(frozen=True, slots=True, eq=False)
class Volume:
    """A sorted, rescaled image volume with its geometry and source headers.

    Attributes
    ----------
    array : numpy.ndarray
        float32 values after Rescale Slope/Intercept (HU for CT), indexed
        ``[slice, row, column]``. Treat it as read-only.
    affine : numpy.ndarray
        float64 4x4: index ``(slice, row, column, 1)`` to LPS mm.
    spacing : tuple[float, float, float]
        ``(slice, row, column)`` spacing in mm; the slice spacing is the median
        distance between neighbouring slices along the normal.
    datasets : tuple[pydicom.dataset.Dataset, ...]
        The source header (no Pixel Data) of each slice, in the same order as the
        slices. The slices of a multi-frame image share one header.
    frame_numbers : tuple[int or None, ...]
        1-based frame number of each slice inside its multi-frame source image,
        or None for single-frame sources. Empty means all None.
    """

    array: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]
    spacing: tuple[float, float, float]
    datasets: tuple[Dataset, ...]
    frame_numbers: tuple[int | None, ...] = ()

    @property
    def instances(self) -> tuple[Dataset, ...]:
        """The distinct source instances, in order of their first slice."""
        seen: dict[str, Dataset] = {}
        for dataset in self.datasets:
            seen.setdefault(str(dataset.SOPInstanceUID), dataset)
        return tuple(seen.values())

    @property
    def is_multiframe(self) -> bool:
        """Whether the slices are frames of multi-frame source images."""
        return any(number is not None for number in self.frame_numbers)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``."""
        s, r, c = self.array.shape
        return (s, r, c)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (absolute determinant of the affine, / 1000)."""
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    @property
    def slice_normal(self) -> npt.NDArray[np.float64]:
        """Unit normal of the slices in LPS (direction of increasing slice index)."""
        row_cosines = np.asarray(self.datasets[0].ImageOrientationPatient[:3], dtype=np.float64)
        column_cosines = np.asarray(self.datasets[0].ImageOrientationPatient[3:], dtype=np.float64)
        normal = np.cross(row_cosines, column_cosines)
        return np.asarray(normal / np.linalg.norm(normal), dtype=np.float64)

    @property
    def monai_affine(self) -> npt.NDArray[np.float64]:
        """The affine of :meth:`to_metatensor`: index ``(column, row, slice, 1)`` to RAS mm."""
        return np.asarray(_LPS_TO_RAS @ self.affine @ _MONAI_TO_OURS, dtype=np.float64)

    def to_metatensor(self, layout: str | TensorLayout = TensorLayout.MONAI) -> MetaTensor:
        """Return the volume as a channel-first MONAI ``MetaTensor``.

        Parameters
        ----------
        layout : str or TensorLayout
            ``monai`` (default): as ``LoadImage`` gives an image, so transforms and
            bundles see what they were built for; spatial axes ``(column, row,
            slice)`` and an RAS affine. ``slices``: the axes of :attr:`array` and
            the LPS :attr:`affine`, which keeps slice-wise work on contiguous memory.

        Returns
        -------
        monai.data.MetaTensor
            float32, shape ``(1, *spatial)``, sharing memory with :attr:`array`;
            ``meta`` holds ``affine``, ``original_affine``, ``spatial_shape`` and
            ``space`` (``RAS`` or ``LPS``).

        Raises
        ------
        ValueError
            If ``layout`` is not a :class:`TensorLayout` value.

        Note
        ----
        No copy is made: do not modify the tensor in place.
        """
        import torch
        from monai.data.meta_tensor import MetaTensor
        from monai.utils.enums import MetaKeys, SpaceKeys

        layout = TensorLayout(layout)
        if layout is TensorLayout.MONAI:
            data = torch.from_numpy(self.array.transpose(2, 1, 0))[None]
            affine = torch.as_tensor(self.monai_affine, dtype=torch.float64)
            space = SpaceKeys.RAS
        else:
            data = torch.from_numpy(self.array)[None]
            affine = torch.as_tensor(self.affine, dtype=torch.float64)
            space = SpaceKeys.LPS
        meta = {
            MetaKeys.ORIGINAL_AFFINE: affine.clone(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape[1:]),
            MetaKeys.SPACE: space,
            MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
        }
        return MetaTensor(data, affine=affine, meta=meta)

    def from_monai_layout(self, array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """Bring an array in :meth:`to_metatensor` layout back to ``[slice, row, column]``.

        Parameters
        ----------
        array : numpy.ndarray
            Shape ``(columns, rows, slices)`` or ``(1, columns, rows, slices)``.

        Returns
        -------
        numpy.ndarray
            C-contiguous, shape :attr:`shape`.

        Raises
        ------
        ValueError
            If the shape does not match the volume.
        """
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        expected = self.shape[::-1]
        if array.shape != expected:
            raise ValueError(f"array has shape {array.shape}, expected {expected}")
        return np.ascontiguousarray(array.transpose(2, 1, 0))

    def measure(self, mask: npt.NDArray[np.bool_]) -> RegionStats:
        """Volume and mean value of a mask.

        Parameters
        ----------
        mask : numpy.ndarray
            Boolean, shape :attr:`shape`.

        Returns
        -------
        RegionStats
            Voxel count, volume in mL and mean (None when the mask is empty).

        Raises
        ------
        ValueError
            If the mask's shape or dtype does not fit.
        """
        if mask.shape != self.array.shape:
            raise ValueError(f"mask has shape {mask.shape}, expected {self.array.shape}")
        if mask.dtype != np.bool_:
            raise ValueError(f"mask must be boolean, got {mask.dtype}")
        voxels = int(np.count_nonzero(mask))
        mean = float(self.array[mask].mean(dtype=np.float64)) if voxels else None
        return RegionStats(voxels=voxels, volume_ml=voxels * self.voxel_volume_ml, mean_hu=mean)


def to_volume(series: Series) -> Volume:
    """Sort a series along its slice normal, check the spacing and decode the pixels.

    Parameters
    ----------
    series : Series
        The output of :func:`pipelines.load.load_series`.

    Returns
    -------
    Volume
        Rescaled float32 values ``[slice, row, column]``, the LPS affine and the
        sorted headers.

    Raises
    ------
    UnsupportedInput
        If the series has fewer than two slices, or its slices are sheared by a
        gantry tilt of more than :data:`MAX_TILT_DEG` (the volume would need
        resampling, which would change the geometry the results refer to).
    InconsistentGeometry
        If the slices have different orientations or pixel spacings, two slices
        share a position, a step between slices deviates more than 10 % from the
        median step (a missing slice), or the positions do not lie on a line.
    PipelineError
        If a file's pixel data cannot be decoded, or decodes to nothing but zeros
        although the header does not say the image is blank.
    """
    started = time.perf_counter()
    frames = series.frames
    count = len(frames)
    if count < 2:
        raise UnsupportedInput(f"a volume needs at least 2 slices, the series has {count}")

    orientations = np.array([f.orientation for f in frames], dtype=np.float64)
    differs = np.any(np.abs(orientations - orientations[0]) > ORIENTATION_TOLERANCE, axis=1)
    if np.any(differs):
        kinds = len({tuple(np.round(o, 3)) for o in orientations})
        raise InconsistentGeometry(
            f"the slices have {kinds} different orientations "
            f"({int(np.count_nonzero(differs))} of {count} differ from the first)"
        )
    row_cosines = orientations[0, :3] / np.linalg.norm(orientations[0, :3])
    column_cosines = orientations[0, 3:] / np.linalg.norm(orientations[0, 3:])
    normal = np.cross(row_cosines, column_cosines)
    if np.linalg.norm(normal) < 0.5:
        raise InconsistentGeometry("Image Orientation (Patient) rows and columns are parallel")
    normal /= np.linalg.norm(normal)

    spacings = np.array([f.pixel_spacing for f in frames], dtype=np.float64)
    if np.any(np.abs(spacings - spacings[0]) > 1e-3 * spacings[0]):
        raise InconsistentGeometry("the slices differ in Pixel Spacing")
    row_spacing, column_spacing = (float(v) for v in spacings[0])
    if row_spacing <= 0 or column_spacing <= 0:
        raise InconsistentGeometry("Pixel Spacing must be positive")

    positions = np.array([f.position for f in frames], dtype=np.float64)
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    positions = positions[order]
    steps = np.diff(distances[order])
    duplicates = int(np.count_nonzero(steps < DUPLICATE_TOLERANCE_MM))
    if duplicates:
        raise InconsistentGeometry(
            f"{duplicates} slice position(s) occur more than once (duplicate slices)"
        )
    median_step = float(np.median(steps))
    deviation = np.abs(steps - median_step) / median_step
    irregular = int(np.count_nonzero(deviation > SPACING_TOLERANCE))
    if irregular:
        largest = float(steps[np.argmax(deviation)])
        raise InconsistentGeometry(
            f"slice spacing is not uniform: {irregular} step(s) deviate more than "
            f"{SPACING_TOLERANCE:.0%} from the median {median_step:.3g} mm "
            f"(e.g. {largest:.3g} mm; a slice is missing or the series is mixed)"
        )
    step_vector = (positions[-1] - positions[0]) / (count - 1)
    expected = positions[0] + np.arange(count)[:, np.newaxis] * step_vector
    off_line = float(np.max(np.linalg.norm(positions - expected, axis=1)))
    if off_line > SPACING_TOLERANCE * median_step:
        raise InconsistentGeometry(
            f"slice positions do not lie on a line (off by up to {off_line:.3g} mm)"
        )
    # A tilted gantry shears the stack: the step between slices leaves the normal.
    tilt = math.degrees(
        math.acos(min(1.0, abs(float(step_vector @ normal)) / float(np.linalg.norm(step_vector))))
    )
    if tilt > MAX_TILT_DEG:
        raise UnsupportedInput(
            f"the slices are sheared by a gantry tilt of {tilt:.1f} degrees; a volume of "
            "tilted slices is not supported (resampling would move the results off the "
            "source slices)"
        )

    affine = np.eye(4, dtype=np.float64)
    affine[:3, 0] = step_vector
    affine[:3, 1] = column_cosines * row_spacing  # down the rows
    affine[:3, 2] = row_cosines * column_spacing  # along a row
    affine[:3, 3] = positions[0]

    sorted_frames = [frames[i] for i in order]
    array = _decode(series, sorted_frames)
    logger.info(
        "volume slices=%d rows=%d columns=%d seconds=%.3f",
        count,
        array.shape[1],
        array.shape[2],
        time.perf_counter() - started,
    )
    return Volume(
        array=array,
        affine=affine,
        spacing=(median_step, row_spacing, column_spacing),
        datasets=tuple(series.files[f.file_index].header for f in sorted_frames),
        frame_numbers=tuple(f.frame_number for f in sorted_frames),
    )


def _decode(series: Series, frames: list[SeriesFrame]) -> npt.NDArray[np.float32]:
    """Decode every slice into one preallocated float32 array and apply the rescale."""
    first = series.files[0].header
    rows, columns = int(first.Rows), int(first.Columns)
    total = len(frames)
    out = np.empty((total, rows, columns), dtype=np.float32)
    # Multi-frame files that pydicom decodes are decoded once, not once per frame.
    decoded: dict[int, npt.NDArray[np.generic]] = {}
    any_nonzero = False
    for index, geometry in enumerate(frames):
        item = series.files[geometry.file_index]
        frame_index = 0 if geometry.frame_number is None else geometry.frame_number - 1
        frame: npt.NDArray[np.generic] | None = read_native(item, frame_index)
        if frame is None:
            if geometry.file_index not in decoded:
                decoded[geometry.file_index] = decode_with_pydicom(
                    item, f"slice {index + 1} of {total}"
                )
            pixels = decoded[geometry.file_index]
            frame = pixels[frame_index] if item.number_of_frames > 1 else pixels
        if frame.shape != (rows, columns):
            raise PipelineError(
                f"pixel data of slice {index + 1} of {total} has shape {frame.shape}, "
                f"expected {(rows, columns)}"
            )
        any_nonzero = any_nonzero or bool(np.any(frame))
        target = out[index]
        target[...] = frame
        if geometry.slope != 1.0:
            target *= np.float32(geometry.slope)
        if geometry.intercept != 0.0:
            target += np.float32(geometry.intercept)
    if not any_nonzero and not _header_says_blank(first):
        raise PipelineError(
            "the pixel data decoded to zeros only, but the header does not say the images "
            "are blank (a damaged file or a failing decoder)"
        )
    return out


def _header_says_blank(header: Dataset) -> bool:
    """Whether the header declares that every stored value is 0 (Largest Image Pixel Value)."""
    largest = header.get("LargestImagePixelValue")
    return largest is not None and int(largest) == 0
