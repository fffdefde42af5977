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
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from pipelines.errors import InconsistentGeometry, PipelineError, UnsupportedInput
from pipelines.load import NATIVE_TRANSFER_SYNTAXES, Series, SeriesFile

if TYPE_CHECKING:
    from monai.data.meta_tensor import MetaTensor

__all__ = ["RegionStats", "TensorLayout", "Volume", "to_volume"]

logger = logging.getLogger(__name__)

#: Largest difference between direction cosines still counted as the same orientation.
ORIENTATION_TOLERANCE = 1e-3
#: Largest relative deviation of one slice step from the median step (10 %).
SPACING_TOLERANCE = 0.10
#: Steps shorter than this (mm) mean two slices share a position.
DUPLICATE_TOLERANCE_MM = 1e-2

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
        The source headers (no Pixel Data), in the same order as the slices.
    """

    array: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]
    spacing: tuple[float, float, float]
    datasets: tuple[Dataset, ...]

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
        If the series has fewer than two slices.
    InconsistentGeometry
        If the slices have different orientations or pixel spacings, two slices
        share a position, a step between slices deviates more than 10 % from the
        median step (a missing slice), or the positions do not lie on a line.
    PipelineError
        If a file's pixel data cannot be decoded.
    """
    started = time.perf_counter()
    files = series.files
    count = len(files)
    if count < 2:
        raise UnsupportedInput(f"a volume needs at least 2 slices, the series has {count}")

    orientations = np.array(
        [[float(v) for v in f.header.ImageOrientationPatient] for f in files], dtype=np.float64
    )
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

    spacings = np.array([[float(v) for v in f.header.PixelSpacing] for f in files])
    if np.any(np.abs(spacings - spacings[0]) > 1e-3 * spacings[0]):
        raise InconsistentGeometry("the slices differ in Pixel Spacing")
    row_spacing, column_spacing = (float(v) for v in spacings[0])
    if row_spacing <= 0 or column_spacing <= 0:
        raise InconsistentGeometry("Pixel Spacing must be positive")

    positions = np.array(
        [[float(v) for v in f.header.ImagePositionPatient] for f in files], dtype=np.float64
    )
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
    # A tilted gantry shears the stack; that is fine as long as the positions lie on a line.
    step_vector = (positions[-1] - positions[0]) / (count - 1)
    expected = positions[0] + np.arange(count)[:, np.newaxis] * step_vector
    off_line = float(np.max(np.linalg.norm(positions - expected, axis=1)))
    if off_line > SPACING_TOLERANCE * median_step:
        raise InconsistentGeometry(
            f"slice positions do not lie on a line (off by up to {off_line:.3g} mm)"
        )

    affine = np.eye(4, dtype=np.float64)
    affine[:3, 0] = step_vector
    affine[:3, 1] = column_cosines * row_spacing  # down the rows
    affine[:3, 2] = row_cosines * column_spacing  # along a row
    affine[:3, 3] = positions[0]

    sorted_files = [files[i] for i in order]
    array = _decode(sorted_files)
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
        datasets=tuple(f.header for f in sorted_files),
    )


def _decode(files: list[SeriesFile]) -> npt.NDArray[np.float32]:
    """Decode every slice into one preallocated float32 array and apply the rescale."""
    first = files[0].header
    rows, columns = int(first.Rows), int(first.Columns)
    out = np.empty((len(files), rows, columns), dtype=np.float32)
    for index, item in enumerate(files):
        frame: npt.NDArray[np.generic] | None = _read_native(item)
        if frame is None:
            frame = _read_with_pydicom(item, index, len(files))
        if frame.shape != (rows, columns):
            raise PipelineError(
                f"pixel data of slice {index + 1} of {len(files)} has shape {frame.shape}, "
                f"expected {(rows, columns)}"
            )
        target = out[index]
        target[...] = frame
        slope = float(item.header.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(item.header.get("RescaleIntercept", 0.0) or 0.0)
        if slope != 1.0:
            target *= np.float32(slope)
        if intercept != 0.0:
            target += np.float32(intercept)
    return out


def _read_native(item: SeriesFile) -> npt.NDArray[np.integer] | None:
    """Read an uncompressed little-endian frame with one seek, or None to use pydicom.

    The element header at the recorded offset is checked (tag, VR, length), so a
    file that does not look exactly as expected falls back to pydicom.
    """
    header = item.header
    syntax = header.file_meta.TransferSyntaxUID
    bits_allocated = int(header.BitsAllocated)
    if item.pixel_offset is None or syntax not in NATIVE_TRANSFER_SYNTAXES:
        return None
    if bits_allocated not in (8, 16, 32):
        return None
    rows, columns = int(header.Rows), int(header.Columns)
    expected = rows * columns * (bits_allocated // 8)
    explicit = syntax == pydicom.uid.ExplicitVRLittleEndian
    with item.path.open("rb") as fh:
        fh.seek(item.pixel_offset)
        head = fh.read(12 if explicit else 8)
        if len(head) < (12 if explicit else 8) or head[:4] != b"\xe0\x7f\x10\x00":
            return None
        if explicit:
            if head[4:6] not in (b"OW", b"OB"):
                return None
            length = int.from_bytes(head[8:12], "little")
        else:
            length = int.from_bytes(head[4:8], "little")
        # An odd-sized 8-bit frame is padded with one byte.
        if length not in (expected, expected + 1):
            return None
        buffer = fh.read(expected)
    if len(buffer) != expected:
        return None
    signed = int(header.PixelRepresentation) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits_allocated // 8}")
    frame = np.frombuffer(buffer, dtype=dtype).reshape(rows, columns)
    bits_stored = int(header.BitsStored)
    if bits_stored < bits_allocated:
        # Bits above Bits Stored are not pixel data (PS3.5 8.1.1): mask, or sign-extend.
        shift = bits_allocated - bits_stored
        mask = dtype.type((1 << bits_stored) - 1)
        frame = (frame << shift) >> shift if signed else frame & mask
    return frame


def _read_with_pydicom(item: SeriesFile, index: int, total: int) -> npt.NDArray[np.generic]:
    """Decode a frame through pydicom (compressed, deflated, big-endian, 1-bit)."""
    try:
        dataset = pydicom.dcmread(item.path)
        frame: npt.NDArray[np.generic] = dataset.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, EOFError, AttributeError) as exc:
        raise PipelineError(
            f"pixel data of slice {index + 1} of {total} cannot be decoded"
        ) from exc
    return frame
