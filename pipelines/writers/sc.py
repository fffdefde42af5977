"""Burn a pipeline's segments into copies of the source slices (Secondary Capture).

For viewers that cannot show a SEG: each source slice that holds a segment is
windowed to 8 bits and written as an RGB Secondary Capture image (PS3.3 A.8.1)
with each segment filled faintly and outlined in its label's colour. The
series says in its description that it is AI-generated, references its source
slice (Source Image Sequence) and carries the same Contributing Equipment as
the SEG. It is a picture for reading, not data: measurements come from the SEG
and the SR.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pipelines.load import frame_group
from pipelines.outline import edge
from pipelines.spec import PipelineSpec
from pipelines.uids import ResultUIDs
from pipelines.volume import Volume
from pipelines.writers.seg import MANUFACTURER, contributing_equipment, software_versions

__all__ = ["SC_SERIES_NUMBER", "burn_in", "display_window", "label_colours", "write_sc"]

logger = logging.getLogger(__name__)

#: Series Number of the burned-in series (after the SEG's and the SR's).
SC_SERIES_NUMBER = 9003
# Colours of labels that declare none (RGB).
_PALETTE = ((255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 200, 0), (200, 80, 255))
_FILL_ALPHA = 0.25


def write_sc(
    volume: Volume,
    masks: Mapping[str, npt.NDArray[np.bool_]],
    spec: PipelineSpec,
    uids: ResultUIDs,
    *,
    series_number: int = SC_SERIES_NUMBER,
) -> list[Dataset]:
    """Build one burned-in Secondary Capture image per slice that holds a segment.

    Parameters
    ----------
    volume : Volume
        The source volume (HU for CT).
    masks : Mapping[str, numpy.ndarray]
        Boolean mask per label name, shaped like the volume.
    spec : PipelineSpec
        Labels (colours), version, series description.
    uids : ResultUIDs
        Where the UIDs come from (``sc-series``; ``sc`` with the source SOP Instance UID).
    series_number : int
        Series Number of the images.

    Returns
    -------
    list[pydicom.dataset.Dataset]
        ``highdicom.sc.SCImage`` objects, in slice order.

    Raises
    ------
    ValueError
        If a mask's shape differs from the volume's.
    """
    for name, mask in masks.items():
        if mask.shape != volume.shape:
            raise ValueError(f"mask {name!r} has shape {mask.shape}, expected {volume.shape}")
    names = [label.name for label in spec.labels if label.name in masks]
    if volume.resampling is not None:
        # Burned into the source slices: masks on a resampled grid go back onto them.
        masks = {name: volume.on_source_planes(mask) for name, mask in masks.items()}
        volume = volume.source_view()
    colours = label_colours(spec)
    window = display_window(volume)
    series_uid = uids.uid("sc-series")
    description = f"{spec.series_description}, burned-in overlay"
    if len(description) > 64:  # Long String; keep it saying what it is
        description = "AI burned-in overlay (not for diagnosis)"
    images: list[Dataset] = []
    orientation = _patient_orientation(volume)
    for k in range(volume.shape[0]):
        present = {name: masks[name] for name in names if masks[name][k].any()}
        if not present:
            continue
        rgb = burn_in(volume, present, colours, k, window)
        source = volume.datasets[k]
        frame = volume.frame_numbers[k] if volume.frame_numbers else None
        source_uid = str(source.SOPInstanceUID)
        instance_uid = uids.uid("sc", source_uid, str(frame or 0))
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=instance_uid,
            instance_number=len(images) + 1,
            manufacturer=MANUFACTURER,
            # highdicom annotates int pairs; spacing in mm is a float pair (DS).
            pixel_spacing=(float(volume.spacing[1]), float(volume.spacing[2])),  # type: ignore[arg-type]
            # highdicom takes one letter per direction; an oblique slice needs more.
            patient_orientation=(orientation[0][0], orientation[1][0]),
            contributing_equipment=[contributing_equipment(spec, uids)],
        )
        image.PatientOrientation = list(orientation)
        image.SeriesDescription = description
        image.ImageType = ["DERIVED", "SECONDARY"]
        image.BurnedInAnnotation = "NO"
        image.ManufacturerModelName = spec.name
        image.SoftwareVersions = list(software_versions(spec))  # type: ignore[assignment]
        image.DerivationDescription = "AI segmentation burned into the source image"
        # General Series Laterality (Type 2C): the source's, else empty (not known here).
        image.Laterality = str(source.get("Laterality", "") or "")
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        if frame is not None:
            reference.ReferencedFrameNumber = frame
        image.SourceImageSequence = [reference]
        images.append(image)
    logger.info("sc images=%d", len(images))
    return images


def label_colours(spec: PipelineSpec) -> dict[str, tuple[int, int, int]]:
    """Display colour (RGB 0-255) of each label: its own, else one of a fixed palette.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline.

    Returns
    -------
    dict[str, tuple[int, int, int]]
        Colour by label name; every result kind draws a label in the same colour.
    """
    return {
        label.name: label.color or _PALETTE[i % len(_PALETTE)]
        for i, label in enumerate(spec.labels)
    }


def burn_in(
    volume: Volume,
    masks: Mapping[str, npt.NDArray[np.bool_]],
    colours: Mapping[str, tuple[int, int, int]],
    slice_index: int,
    window: tuple[float, float],
) -> npt.NDArray[np.uint8]:
    """One slice, windowed to 8 bits, with each mask filled faintly and outlined in its colour.

    Parameters
    ----------
    volume : Volume
        The source volume.
    masks : Mapping[str, numpy.ndarray]
        Masks (shaped like the volume) to draw, in drawing order.
    colours : Mapping[str, tuple[int, int, int]]
        RGB colour by label name (:func:`label_colours`).
    slice_index : int
        The slice.
    window : tuple[float, float]
        Lowest and highest value shown (:func:`display_window`).

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` uint8 RGB.
    """
    low, high = window
    grey = np.clip((volume.array[slice_index] - low) / (high - low), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=-1)
    for name, mask3d in masks.items():
        mask = mask3d[slice_index]
        colour = np.asarray(colours[name], dtype=np.float32)
        rgb[mask] = (1 - _FILL_ALPHA) * rgb[mask] + _FILL_ALPHA * colour
        rgb[edge(mask)] = colour
    return np.asarray(np.rint(rgb), dtype=np.uint8)


def display_window(volume: Volume) -> tuple[float, float]:
    """Display window of the source: its first Window Center/Width, else the 1-99 percentiles.

    An Enhanced image keeps the window in its Frame VOI LUT functional group.

    Parameters
    ----------
    volume : Volume
        The source volume.

    Returns
    -------
    tuple[float, float]
        The lowest and highest value shown.
    """
    header = volume.datasets[0]
    first_frame = volume.frame_numbers[0] if volume.frame_numbers else None
    voi = frame_group(header, first_frame, "FrameVOILUTSequence") or header
    centre, width = voi.get("WindowCenter"), voi.get("WindowWidth")
    if centre is not None and width is not None:
        c = float(centre[0] if isinstance(centre, MultiValue) else centre)
        w = float(width[0] if isinstance(width, MultiValue) else width)
        if w > 1:
            return (c - w / 2.0, c + w / 2.0)
    values = volume.source_array
    low, high = np.percentile(values[:: max(1, values.shape[0] // 16)], [1, 99])
    return (float(low), float(max(high, low + 1.0)))


def _patient_orientation(volume: Volume) -> tuple[str, str]:
    """Patient Orientation letters of the rows' and columns' directions (PS3.3 C.7.6.1.1.1)."""
    iop = volume.image_orientation
    return (_letters(list(iop[:3])), _letters(list(iop[3:])))


def _letters(direction: list[float]) -> str:
    names = (("R", "L"), ("A", "P"), ("F", "H"))
    order = np.argsort(-np.abs(direction))
    letters = [
        names[axis][1 if direction[axis] > 0 else 0]
        for axis in order
        if abs(direction[axis]) > 1e-3
    ]
    return "".join(letters[:3])
