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

Series as scanners send them
----------------------------
:func:`to_volume` first picks one stack out of the series: where frames repeat
the same positions (an fMRI time series, magnitude and field-map frames in one
Enhanced MR object, a re-scan with its own acquisition number), it tells the
passes apart by :class:`pipelines.load.FrameKind` and keeps one (magnitude and
original images first, then the pass with most slices, then the first).

It then splits the stack into runs of one spacing. A step far longer than the
spacing around it is a gap (a missing slice): that is refused, because what
lies in it cannot be known. Runs of different spacing (4 mm, then 7 mm) and a
tilted gantry (the slices sheared along the table) are not refused: the stack
is **resampled** onto a regular, unsheared grid (slice axis along the true
normal, at the finest spacing of the stack, in-plane grid widened to hold
every shifted slice). :attr:`Volume.array` and :attr:`Volume.affine` are then
that grid, which the model sees and measurements use, while
:attr:`Volume.datasets` stay the source slices. :meth:`Volume.on_source_planes`
brings a mask on the grid back onto the source slices, so that results are
written one frame per source slice, at the source's own position and
orientation: the overlay sits on the images the radiologist scrolls.

Nothing here logs patient data; only counts and timings.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from pipelines.errors import InconsistentGeometry, PipelineError, UnsupportedInput
from pipelines.load import FrameKind, Series, SeriesFrame, frame_kind
from pipelines.pixels import decode_with_pydicom, read_native

if TYPE_CHECKING:
    from monai.data.meta_tensor import MetaTensor

__all__ = [
    "MAX_TILT_DEG",
    "SHEAR_TOLERANCE_DEG",
    "RegionStats",
    "Resampling",
    "SpacingRun",
    "TensorLayout",
    "Volume",
    "to_volume",
]

logger = logging.getLogger(__name__)

#: Largest difference between direction cosines still counted as the same orientation.
ORIENTATION_TOLERANCE = 1e-3
#: Largest relative deviation of a slice step from its run's spacing (10 %).
SPACING_TOLERANCE = 0.10
#: Steps shorter than this (mm) mean two slices share a position.
DUPLICATE_TOLERANCE_MM = 1e-2
#: A lone step longer than this many times the spacing on either side is a gap.
GAP_FACTOR = 1.5
#: Shear (degrees between the slice-to-slice step and the normal) below which a
#: stack is taken as it is; above it the stack is resampled onto an unsheared grid.
SHEAR_TOLERANCE_DEG = 0.5
#: Largest gantry tilt that is resampled. CT gantries tilt about 30 degrees at
#: most; a larger shear means the positions are not one tilted stack.
MAX_TILT_DEG = 45.0

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


@dataclass(frozen=True, slots=True)
class SpacingRun:
    """Consecutive source slices at one spacing.

    Attributes
    ----------
    slices : int
        Number of slices in the run (its steps plus one).
    spacing_mm : float
        The run's spacing along the slice normal (median of its steps).
    """

    slices: int
    spacing_mm: float


@dataclass(frozen=True, slots=True, eq=False)
class Resampling:
    """Where the source slices of a sheared or unevenly spaced stack lie on the grid.

    Source slice ``k``'s pixel ``(r, c)`` is the grid point
    ``(grid_index[k], r + offsets[k, 0], c + offsets[k, 1])``.

    Attributes
    ----------
    source : numpy.ndarray
        float32 ``(source slices, rows, columns)``: the rescaled source pixels, in
        the order of :attr:`Volume.datasets`.
    grid_index : numpy.ndarray
        float64 ``(source slices,)``: each source slice's (fractional) index along
        the grid's slice axis; the first is 0, the last the grid's last slice.
    offsets : numpy.ndarray
        float64 ``(source slices, 2)``: grid row and column of each source slice's
        first pixel (a gantry tilt shifts each slice along the column direction).
    tilt_deg : float
        Angle between the slice-to-slice step and the normal (gantry tilt).
    runs : tuple[SpacingRun, ...]
        The runs of one spacing, from the first slice to the last.
    """

    source: npt.NDArray[np.float32]
    grid_index: npt.NDArray[np.float64]
    offsets: npt.NDArray[np.float64]
    tilt_deg: float
    runs: tuple[SpacingRun, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Volume:
    """A sorted, rescaled image volume with its geometry and source headers.

    The array is a regular grid. Usually its slices are the source slices; for
    a sheared (gantry tilt) or unevenly spaced stack it is a resampling of them
    (:attr:`resampling`), and :meth:`on_source_planes` maps masks back.

    Attributes
    ----------
    array : numpy.ndarray
        float32 values after Rescale Slope/Intercept (HU for CT), indexed
        ``[slice, row, column]``. Treat it as read-only.
    affine : numpy.ndarray
        float64 4x4: index ``(slice, row, column, 1)`` to LPS mm.
    spacing : tuple[float, float, float]
        ``(slice, row, column)`` spacing in mm; the slice spacing is the median
        distance between neighbouring slices along the normal (the grid's step
        when resampled).
    datasets : tuple[pydicom.dataset.Dataset, ...]
        The header (no Pixel Data) of each source slice, sorted along the
        normal. The slices of a multi-frame image share one header.
    frame_numbers : tuple[int or None, ...]
        1-based frame number of each source slice inside its multi-frame source
        image, or None for single-frame sources. Empty means all None.
    positions : tuple[tuple[float, float, float], ...]
        Image Position (Patient) of each source slice, as the source says it.
        Empty means: read them from the affine.
    resampling : Resampling or None
        How the source slices lie on the grid, when they are not its slices.
    """

    array: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]
    spacing: tuple[float, float, float]
    datasets: tuple[Dataset, ...]
    frame_numbers: tuple[int | None, ...] = ()
    positions: tuple[tuple[float, float, float], ...] = ()
    resampling: Resampling | None = None

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
        """``(slices, rows, columns)`` of the grid."""
        s, r, c = self.array.shape
        return (s, r, c)

    @property
    def source_array(self) -> npt.NDArray[np.float32]:
        """The source slices' values ``[source slice, row, column]`` (the array itself
        unless resampled)."""
        return self.array if self.resampling is None else self.resampling.source

    @property
    def source_shape(self) -> tuple[int, int, int]:
        """``(source slices, rows, columns)``: the shape of masks on the source planes."""
        s, r, c = self.source_array.shape
        return (s, r, c)

    @property
    def source_positions(self) -> npt.NDArray[np.float64]:
        """Image Position (Patient) of each source slice, ``(source slices, 3)`` LPS mm."""
        if self.positions:
            return np.asarray(self.positions, dtype=np.float64)
        index = np.zeros((self.shape[0], 4), dtype=np.float64)
        index[:, 0] = np.arange(self.shape[0])
        index[:, 3] = 1.0
        return np.asarray((index @ self.affine.T)[:, :3], dtype=np.float64)

    @property
    def image_orientation(self) -> tuple[float, ...]:
        """Image Orientation (Patient) of the source slices: row, then column cosines."""
        row = self.affine[:3, 2] / np.linalg.norm(self.affine[:3, 2])
        column = self.affine[:3, 1] / np.linalg.norm(self.affine[:3, 1])
        return tuple(float(v) for v in (*row, *column))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (absolute determinant of the affine, / 1000)."""
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    @property
    def slice_normal(self) -> npt.NDArray[np.float64]:
        """Unit normal of the slices in LPS (direction of increasing slice index).

        Read from the affine, so it holds for single-frame and Enhanced sources alike.
        """
        normal = np.cross(self.affine[:3, 2], self.affine[:3, 1])
        if float(normal @ self.affine[:3, 0]) < 0:
            normal = -normal
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

    def source_view(self) -> Volume:
        """The volume on its source planes: what the writers of results draw on.

        Returns
        -------
        Volume
            This volume when its grid's slices are the source slices; otherwise
            one whose slices are the source slices (:attr:`source_array`), each at
            its own Image Position (Patient) (:attr:`positions`), with no
            resampling. Its affine runs from the first source slice to the last
            in equal steps: exact for the in-plane axes, an average along the
            slices of an unevenly spaced stack, so measure on the grid, not on
            this view.
        """
        if self.resampling is None:
            return self
        positions = self.source_positions
        affine = self.affine.copy()
        affine[:3, 0] = (positions[-1] - positions[0]) / max(1, len(positions) - 1)
        affine[:3, 3] = positions[0]
        return Volume(
            array=self.resampling.source,
            affine=affine,
            spacing=(float(np.linalg.norm(affine[:3, 0])), self.spacing[1], self.spacing[2]),
            datasets=self.datasets,
            frame_numbers=self.frame_numbers,
            positions=tuple((float(x), float(y), float(z)) for x, y, z in positions),
        )

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

    def on_source_planes(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """A mask on the grid, sampled on the source slices.

        Parameters
        ----------
        mask : numpy.ndarray
            Boolean, shape :attr:`shape`.

        Returns
        -------
        numpy.ndarray
            Boolean, shape :attr:`source_shape`: the mask itself when the grid's
            slices are the source slices; otherwise each source pixel takes the
            mask interpolated (linearly, between the two nearest grid slices and
            in-plane) at its own position, thresholded at one half.

        Raises
        ------
        ValueError
            If the mask's shape or dtype does not fit.
        """
        if mask.shape != self.array.shape:
            raise ValueError(f"mask has shape {mask.shape}, expected {self.array.shape}")
        if mask.dtype != np.bool_:
            raise ValueError(f"mask must be boolean, got {mask.dtype}")
        if self.resampling is None:
            return mask
        plan = self.resampling
        out = np.zeros(self.source_shape, dtype=bool)
        last = mask.shape[0] - 1
        for k in range(out.shape[0]):
            below = min(int(math.floor(plan.grid_index[k] + 1e-6)), last)
            weight = float(plan.grid_index[k]) - below
            if weight < 1e-6 or below == last:
                plane = mask[below].astype(np.float32)
            elif weight > 1.0 - 1e-6:
                plane = mask[below + 1].astype(np.float32)
            else:
                plane = (1.0 - weight) * mask[below].astype(np.float32)
                plane += weight * mask[below + 1].astype(np.float32)
            out[k] = _sample_plane(plane, plan.offsets[k], out.shape[1:], 0.0) >= 0.5
        return out


def to_volume(series: Series) -> Volume:
    """Pick one stack of a series, sort it along its normal and decode the pixels.

    Parameters
    ----------
    series : Series
        The output of :func:`pipelines.load.load_series`.

    Returns
    -------
    Volume
        Rescaled float32 values ``[slice, row, column]``, the LPS affine and the
        sorted source headers; resampled onto a regular grid (see the module's
        docstring) when the stack is sheared by a gantry tilt or made of runs of
        different spacing.

    Raises
    ------
    UnsupportedInput
        If the series has fewer than two slices, or its slices are sheared by
        more than :data:`MAX_TILT_DEG` (no gantry tilts that far).
    InconsistentGeometry
        If the slices have different orientations or pixel spacings, slices
        share a position and no frame type, temporal position, echo, diffusion
        weighting, file or acquisition tells the passes apart, a step between
        slices is a gap (a missing slice), or the positions do not lie on a line.
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

    stack = _choose_stack(series, normal)
    count = len(stack)
    spacings = np.array([f.pixel_spacing for f in stack], dtype=np.float64)
    if np.any(np.abs(spacings - spacings[0]) > 1e-3 * spacings[0]):
        raise InconsistentGeometry("the slices differ in Pixel Spacing")
    row_spacing, column_spacing = (float(v) for v in spacings[0])
    if row_spacing <= 0 or column_spacing <= 0:
        raise InconsistentGeometry("Pixel Spacing must be positive")

    positions = np.array([f.position for f in stack], dtype=np.float64)
    distances = positions @ normal
    steps = np.diff(distances)
    runs = _spacing_runs(steps)
    median_step = float(np.median(steps))
    # The part of each slice's position that is not along the normal: zero for a
    # plain stack, growing along the stack for a tilted gantry.
    along = distances - distances[0]
    in_plane = positions - positions[0] - along[:, np.newaxis] * normal
    fit = np.stack([np.ones(count), along], axis=1)
    coefficients, *_ = np.linalg.lstsq(fit, in_plane, rcond=None)
    off_line = float(np.max(np.linalg.norm(in_plane - fit @ coefficients, axis=1)))
    if off_line > SPACING_TOLERANCE * min(run.spacing_mm for run in runs):
        raise InconsistentGeometry(
            f"slice positions do not lie on a line (off by up to {off_line:.3g} mm)"
        )
    tilt = math.degrees(math.atan(float(np.linalg.norm(coefficients[1]))))
    if tilt > MAX_TILT_DEG:
        raise UnsupportedInput(
            f"the slices are sheared by a gantry tilt of {tilt:.1f} degrees, more than the "
            f"{MAX_TILT_DEG:.0f} degrees a tilted stack is resampled for (no gantry tilts "
            "that far; the positions are not one tilted stack)"
        )

    array = _decode(series, stack)
    datasets = tuple(series.files[f.file_index].header for f in stack)
    frame_numbers = tuple(f.frame_number for f in stack)
    source_positions = tuple((float(p[0]), float(p[1]), float(p[2])) for p in positions)
    uniform = bool(np.all(np.abs(steps - median_step) <= SPACING_TOLERANCE * median_step))
    if uniform and tilt <= SHEAR_TOLERANCE_DEG:
        step_vector = (positions[-1] - positions[0]) / (count - 1)
        affine = np.eye(4, dtype=np.float64)
        affine[:3, 0] = step_vector
        affine[:3, 1] = column_cosines * row_spacing  # down the rows
        affine[:3, 2] = row_cosines * column_spacing  # along a row
        affine[:3, 3] = positions[0]
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
            datasets=datasets,
            frame_numbers=frame_numbers,
            positions=source_positions,
        )

    # Pixel offsets of each slice's first pixel from the first slice's, in-plane.
    offsets = np.stack(
        [in_plane @ column_cosines / row_spacing, in_plane @ row_cosines / column_spacing], axis=1
    )
    corner = np.floor(offsets.min(axis=0) + 1e-6)
    offsets -= corner
    grid_rows = array.shape[1] + math.ceil(float(offsets[:, 0].max()) - 1e-6)
    grid_columns = array.shape[2] + math.ceil(float(offsets[:, 1].max()) - 1e-6)
    extent = float(distances[-1] - distances[0])
    grid_slices = round(extent / min(run.spacing_mm for run in runs)) + 1
    grid_step = extent / (grid_slices - 1)
    grid_index = along / grid_step
    grid = _resample(array, grid_index, offsets, (grid_slices, grid_rows, grid_columns))
    affine = np.eye(4, dtype=np.float64)
    affine[:3, 0] = normal * grid_step
    affine[:3, 1] = column_cosines * row_spacing
    affine[:3, 2] = row_cosines * column_spacing
    affine[:3, 3] = (
        positions[0]
        + corner[0] * row_spacing * column_cosines
        + corner[1] * column_spacing * row_cosines
    )
    logger.info(
        "volume resampled source_slices=%d runs=%d tilt=%.1f slices=%d rows=%d columns=%d "
        "seconds=%.3f",
        count,
        len(runs),
        tilt,
        grid_slices,
        grid_rows,
        grid_columns,
        time.perf_counter() - started,
    )
    return Volume(
        array=grid,
        affine=affine,
        spacing=(grid_step, row_spacing, column_spacing),
        datasets=datasets,
        frame_numbers=frame_numbers,
        positions=source_positions,
        resampling=Resampling(
            source=array,
            grid_index=grid_index,
            offsets=offsets,
            tilt_deg=tilt,
            runs=tuple(runs),
        ),
    )


#: What tells passes over the same positions apart, in the order they are tried.
_PASS_KEYS: tuple[tuple[str, Callable[[SeriesFrame, FrameKind], object]], ...] = (
    ("frame type", lambda _, kind: kind.image_type),
    ("temporal position", lambda _, kind: kind.temporal_position),
    ("echo", lambda _, kind: kind.echo),
    ("diffusion weighting", lambda _, kind: kind.diffusion),
    ("file", lambda frame, _: frame.file_index),
    ("acquisition number", lambda _, kind: kind.acquisition),
)
# Least fraction of the series' extent along the normal that a chosen pass covers.
_PASS_MIN_EXTENT = 0.5
# Image/Frame Type value 4 of complex MR data and maps: not the anatomy a model expects.
_NOT_MAGNITUDE = frozenset(
    {"P", "PHASE", "R", "REAL", "I", "IMAGINARY", "FIELD_MAP", "B0", "B1", "PHASE_MAP"}
)


def _choose_stack(series: Series, normal: npt.NDArray[np.float64]) -> list[SeriesFrame]:
    """The frames of one stack, sorted along the normal (all of them, unless passes repeat)."""
    frames = series.frames
    distances = np.array([f.position for f in frames], dtype=np.float64) @ normal
    order = np.argsort(distances, kind="stable")
    ordered = [frames[i] for i in order]
    problem = _stack_problem(distances[order])
    if problem is None:
        return ordered
    multiframe = len(series.files) > 1 and any(f.is_multiframe for f in series.files)
    kinds = [frame_kind(series, frame) for frame in frames]
    for name, key in _PASS_KEYS:
        if name == "file" and not multiframe:
            continue
        passes: dict[object, list[int]] = {}
        for index in order:
            passes.setdefault(key(frames[index], kinds[index]), []).append(int(index))
        if len(passes) < 2:
            continue
        # A pass must span most of the series: splitting a sequential CT by its
        # per-rotation acquisition numbers must not turn a gap into a 4-slice volume.
        usable = [
            members
            for members in passes.values()
            if len(members) >= 2
            and np.ptp(distances[members]) >= _PASS_MIN_EXTENT * np.ptp(distances)
            and _stack_problem(distances[members]) is None
        ]
        if not usable:
            continue
        chosen = min(usable, key=lambda members: _pass_rank(kinds, members))
        logger.info(
            "series repeats slice positions in %d passes told apart by %s; using one of %d slices",
            len(passes),
            name,
            len(chosen),
        )
        return [frames[i] for i in chosen]
    raise problem


def _pass_rank(kinds: list[FrameKind], members: list[int]) -> tuple[int, int, int]:
    """Order of preference: original, then magnitude images; more slices; first in the series."""
    image_type = kinds[members[0]].image_type
    derived = int(bool(image_type) and image_type[0] != "ORIGINAL")
    not_magnitude = int(len(image_type) > 3 and image_type[3] in _NOT_MAGNITUDE)
    return (derived + not_magnitude, -len(members), min(members))


def _stack_problem(distances: npt.NDArray[np.float64]) -> InconsistentGeometry | None:
    """Why sorted positions along the normal are not one stack, or None when they are."""
    steps = np.diff(distances)
    duplicates = int(np.count_nonzero(steps < DUPLICATE_TOLERANCE_MM))
    if duplicates:
        return InconsistentGeometry(
            f"{duplicates} slice position(s) occur more than once (duplicate slices)"
        )
    runs = _spacing_runs(steps)
    gaps: list[float] = []
    first = 0
    for index, run in enumerate(runs):
        if run.slices == 2:  # a lone step between runs: a transition, or a gap
            around = [runs[i].spacing_mm for i in (index - 1, index + 1) if 0 <= i < len(runs)]
            if around and run.spacing_mm > GAP_FACTOR * max(around):
                gaps.append(float(steps[first]))
        first += run.slices - 1
    if gaps:
        typical = float(np.median(steps))
        return InconsistentGeometry(
            f"slice spacing is not uniform: {len(gaps)} gap(s) of up to {max(gaps):.3g} mm "
            f"between slices {typical:.3g} mm apart (a slice is missing or the series is mixed)"
        )
    return None


def _spacing_runs(steps: npt.NDArray[np.float64]) -> list[SpacingRun]:
    """Split positive steps into runs whose steps stay within SPACING_TOLERANCE of each other."""
    median = float(np.median(steps))
    if np.all(np.abs(steps - median) <= SPACING_TOLERANCE * median):
        return [SpacingRun(slices=len(steps) + 1, spacing_mm=median)]  # one run: the usual case
    runs: list[SpacingRun] = []
    start = 0
    for index in range(1, len(steps) + 1):
        reference = float(np.median(steps[start:index]))
        if index == len(steps) or abs(float(steps[index]) - reference) > (
            SPACING_TOLERANCE * reference
        ):
            runs.append(SpacingRun(slices=index - start + 1, spacing_mm=reference))
            start = index
    return runs


def _sample_plane(
    plane: npt.NDArray[np.float32],
    offset: npt.NDArray[np.float64],
    shape: tuple[int, ...],
    fill: float,
) -> npt.NDArray[np.float32]:
    """``out[r, c] = plane[r + offset[0], c + offset[1]]``, bilinear, ``fill`` outside."""
    if np.all(np.abs(offset - np.round(offset)) < 1e-6):
        whole = np.round(offset).astype(int)
        out = np.full(shape, fill, dtype=np.float32)
        rows = slice(max(0, -whole[0]), min(shape[0], plane.shape[0] - whole[0]))
        columns = slice(max(0, -whole[1]), min(shape[1], plane.shape[1] - whole[1]))
        if rows.start < rows.stop and columns.start < columns.stop:
            out[rows, columns] = plane[
                rows.start + whole[0] : rows.stop + whole[0],
                columns.start + whole[1] : columns.stop + whole[1],
            ]
        return out
    # Imported here: only sheared stacks need it, and it costs a plain load 15 MB.
    from scipy import ndimage

    sampled: npt.NDArray[np.float32] = ndimage.affine_transform(
        plane,
        np.ones(2),
        offset=offset,
        output_shape=shape,
        output=np.float32,
        order=1,
        mode="constant",
        cval=fill,
    )
    return sampled


def _resample(
    source: npt.NDArray[np.float32],
    grid_index: npt.NDArray[np.float64],
    offsets: npt.NDArray[np.float64],
    shape: tuple[int, int, int],
) -> npt.NDArray[np.float32]:
    """Interpolate source slices onto the grid: in-plane (undo the shear), then along the normal."""
    fill = float(source.min())
    grid = np.empty(shape, dtype=np.float32)
    planes: dict[int, npt.NDArray[np.float32]] = {}

    def unsheared(k: int) -> npt.NDArray[np.float32]:
        if k not in planes:
            for old in [key for key in planes if key < k - 1]:
                del planes[old]
            planes[k] = _sample_plane(source[k], -offsets[k], shape[1:], fill)
        return planes[k]

    last = len(grid_index) - 1
    for j in range(shape[0]):
        k = min(int(np.searchsorted(grid_index, j + 1e-6, side="right")) - 1, last - 1)
        weight = (j - float(grid_index[k])) / float(grid_index[k + 1] - grid_index[k])
        if weight < 1e-6:
            grid[j] = unsheared(k)
        elif weight > 1.0 - 1e-6:
            grid[j] = unsheared(k + 1)
        else:
            np.multiply(unsheared(k), np.float32(1.0 - weight), out=grid[j])
            grid[j] += np.float32(weight) * unsheared(k + 1)
    return grid


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
