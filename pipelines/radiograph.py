"""Projection radiographs (CR, DX, MG): one 2-D image per instance.

A radiograph is not a slice of a volume: it has no position in the patient,
only a detector plane, a view and a laterality. So each instance of a CR, DX
or MG series is loaded on its own, and a classification pipeline takes each
image on its own (:func:`load_radiographs`).

Values are stored values after the Modality LUT (Rescale Slope/Intercept),
with MONOCHROME1 images inverted so that brighter always means more
attenuation, as in MONOCHROME2 (PS3.3 C.7.6.3.1.2). A model then sees every
image the same way round whatever the modality wrote.

Nothing here logs patient data: refusals name inputs by position.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

from pipelines.errors import PipelineError, UnsupportedInput
from pipelines.load import SeriesFile, scan_headers
from pipelines.pixels import decode_with_pydicom, read_native

if TYPE_CHECKING:
    from monai.data.meta_tensor import MetaTensor

__all__ = ["PROJECTION_SOP_CLASSES", "Radiograph", "load_radiographs"]

logger = logging.getLogger(__name__)

#: SOP classes of projection radiographs: CR, DX and MG, for presentation or processing.
PROJECTION_SOP_CLASSES = frozenset(
    {
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
        DigitalMammographyXRayImageStorageForPresentation,
        DigitalMammographyXRayImageStorageForProcessing,
    }
)


@dataclass(frozen=True, slots=True, eq=False)
class Radiograph:
    """One projection image, decoded, with what a reader of it needs to know.

    Attributes
    ----------
    array : numpy.ndarray
        float32 ``[row, column]`` after the Modality LUT; brighter is more
        attenuating (MONOCHROME1 is inverted). Treat it as read-only.
    pixel_spacing : tuple[float, float] or None
        ``(row, column)`` spacing in mm: Pixel Spacing, else Imager Pixel
        Spacing (at the detector); None when the header gives neither.
    header : pydicom.dataset.Dataset
        The source header, without Pixel Data.
    """

    array: npt.NDArray[np.float32]
    pixel_spacing: tuple[float, float] | None
    header: Dataset

    @property
    def modality(self) -> str:
        """Modality (CR, DX or MG)."""
        return str(self.header.get("Modality", ""))

    @property
    def view_position(self) -> str:
        """View Position (e.g. PA, AP, LL, CC, MLO); empty when not given."""
        return str(self.header.get("ViewPosition", "") or "")

    @property
    def laterality(self) -> str:
        """Image Laterality, else (series) Laterality: R, L, B or U; empty when not given."""
        value = self.header.get("ImageLaterality") or self.header.get("Laterality") or ""
        return str(value)

    def to_metatensor(self) -> MetaTensor:
        """Return the image as a channel-first MONAI ``MetaTensor``.

        Returns
        -------
        monai.data.MetaTensor
            float32, shape ``(1, columns, rows)``, the axis order MONAI's
            ``LoadImage`` gives a 2-D image; the affine maps ``(column, row)`` to
            mm on the detector. It shares memory with :attr:`array`.

        Note
        ----
        No copy is made: do not modify the tensor in place.
        """
        import torch
        from monai.data.meta_tensor import MetaTensor
        from monai.utils.enums import MetaKeys

        row_mm, column_mm = self.pixel_spacing or (1.0, 1.0)
        affine = torch.diag(torch.tensor([column_mm, row_mm, 1.0], dtype=torch.float64))
        data = torch.from_numpy(self.array.T)[None]
        meta = {
            MetaKeys.ORIGINAL_AFFINE: affine.clone(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape[1:]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: 0,
        }
        return MetaTensor(data, affine=affine, meta=meta)


def load_radiographs(paths: Sequence[Path]) -> tuple[Radiograph, ...]:
    """Load projection radiographs, one image per instance.

    Parameters
    ----------
    paths : Sequence[pathlib.Path]
        CR, DX or MG instances (of one or more series), in any order.

    Returns
    -------
    tuple[Radiograph, ...]
        One per input, in input order.

    Raises
    ------
    UnsupportedInput
        If there is no input, an input is not a projection radiograph, is
        multi-frame or colour, or cannot be read (see
        :func:`pipelines.load.scan_headers`).
    PipelineError
        If an input is missing, its pixel data cannot be decoded, or it decodes
        to zeros only.
    """
    if not paths:
        raise UnsupportedInput("the job has no input files")
    files = scan_headers(paths)
    total = len(files)
    for index, item in enumerate(files):
        where = f"input {index + 1} of {total}"
        sop_class = item.header.SOPClassUID
        if sop_class not in PROJECTION_SOP_CLASSES:
            raise UnsupportedInput(
                f"{where} is {sop_class.name or sop_class}, not a projection radiograph "
                "(CR, DX or MG)"
            )
        if item.number_of_frames != 1:
            raise UnsupportedInput(f"{where} has {item.number_of_frames} frames, expected 1")
    images = tuple(_decode(item, f"image {k + 1} of {total}") for k, item in enumerate(files))
    logger.debug("loaded %d radiographs", total)
    return images


def _decode(item: SeriesFile, what: str) -> Radiograph:
    header = item.header
    stored: npt.NDArray[np.generic] | None = read_native(item)
    if stored is None:
        stored = decode_with_pydicom(item, what)
    if not np.any(stored):
        raise PipelineError(
            f"the pixel data of {what} decoded to zeros only (a damaged file or failing decoder)"
        )
    array = stored.astype(np.float32)
    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0:
        array *= np.float32(slope)
    if intercept != 0.0:
        array += np.float32(intercept)
    if str(header.PhotometricInterpretation) == "MONOCHROME1":
        # Inverting around the stored range keeps values positive and ordered.
        array = np.float32(array.max() + array.min()) - array
    return Radiograph(array=array, pixel_spacing=_spacing(header), header=header)


def _spacing(header: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = header.get(keyword)
        if value is not None and len(value) == 2:
            row, column = (float(v) for v in value)
            if row > 0 and column > 0:
                return (row, column)
    return None
