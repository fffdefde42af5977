"""Draw the segments on the source images as Grayscale Softcopy Presentation States.

For PACS that show presentation states but not SEG: one GSPS (PS3.3 A.33.1,
highdicom's ``pr`` module) per source image a segment touches. Each holds, per
segment on that image, a graphic layer named ``SEG<n>`` with the segment's
label as description and its colour as Recommended Display CIELab Value, and
in that layer:

- the segment's outlines as closed POLYLINE graphic objects in PIXEL units
  (:mod:`pipelines.outline`), each carrying the segment's Tracking UID;
- a text object with the segment's label above its outline;
- the outline as pixels, a one-bit overlay plane (PS3.3 C.9.2) activated in the
  layer (Overlay Activation Layer, C.11.7), for displays that draw overlays but
  not graphics. A presentation state has 16 overlay groups; segments past the
  sixteenth on one image keep their vector outline only. (dcmtk's ``dcmp2pgm``
  reads both, the graphics and the overlays it writes out as bitmaps, but its
  8-bit rendering draws neither; the tests read what it parsed.)

Why one presentation state per image: an overlay in a presentation state
applies to every image it references, and each image has outlines of its own.
Frames of a multi-frame source get one presentation state each, its graphics
naming the frame; overlays are left out there (they would cover every frame).

Each object copies the source's first window (Softcopy VOI LUT), so the image
looks as it does without the presentation state, and carries the same
Contributing Equipment (the algorithm) as every other result.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels.utils import pack_bits

from pipelines.outline import Outlines, edge, to_image_coordinates
from pipelines.spec import LabelSpec, PipelineSpec
from pipelines.uids import ResultUIDs
from pipelines.volume import Volume
from pipelines.writers.encoded import floats, item
from pipelines.writers.sc import label_colours
from pipelines.writers.seg import (
    MANUFACTURER,
    contributing_equipment,
    segment_numbers,
    software_versions,
    tracking_uid,
)

__all__ = ["CONTENT_LABEL", "GSPS_SERIES_NUMBER", "write_gsps"]

logger = logging.getLogger(__name__)

#: Series Number of the presentation states (after SEG, SR and SC).
GSPS_SERIES_NUMBER = 9004
#: Content Label (a Code String) of every presentation state the node writes.
CONTENT_LABEL = "AI_OUTLINES"
# Overlay groups 6000, 6002, ... 601E (PS3.5 7.6): sixteen at most.
_OVERLAY_GROUPS = tuple(range(0x6000, 0x6020, 2))
# P-value of white (PS3.3 C.10.7.1.1: 0 to 0xFFFF).
_WHITE = 0xFFFF
# Height of the label's text box in pixels, and width per character.
_TEXT_HEIGHT = 12.0
_CHAR_WIDTH = 7.0


def write_gsps(
    volume: Volume,
    masks: Mapping[str, npt.NDArray[np.bool_]],
    spec: PipelineSpec,
    uids: ResultUIDs,
    outlines: Outlines,
    *,
    series_number: int = GSPS_SERIES_NUMBER,
) -> list[Dataset]:
    """Build one presentation state per source slice that holds a segment.

    Parameters
    ----------
    volume : Volume
        The source volume; its headers are the referenced images.
    masks : Mapping[str, numpy.ndarray]
        Boolean mask per label name, shaped like the volume.
    spec : PipelineSpec
        Labels (names, colours), algorithm, version, series description.
    uids : ResultUIDs
        Where the UIDs come from (``gsps-series``; ``gsps`` with the source's
        SOP Instance UID and frame).
    outlines : Outlines
        The masks' outlines (:func:`pipelines.outline.trace`).
    series_number : int
        Series Number of the presentation states.

    Returns
    -------
    list[pydicom.dataset.Dataset]
        Grayscale Softcopy Presentation States, in slice order.

    Raises
    ------
    PipelineConfigError
        If a label of the pipeline has no mask.
    """
    numbers = segment_numbers(spec, masks)
    labels = {label.name: label for label in spec.labels}
    colours = label_colours(spec)
    layers = {
        name: hd.pr.GraphicLayer(
            layer_name=f"SEG{number}",
            order=number,
            description=labels[name].label,
            display_color=hd.color.CIELabColor.from_rgb(*colours[name]),
        )
        for name, number in numbers.items()
    }
    for layer in layers.values():
        # For grayscale displays, and the value a display draws the layer's overlays in.
        layer.GraphicLayerRecommendedDisplayGrayscaleValue = _WHITE
    touched = sorted({k for name in numbers for k in outlines.slices(name)})
    if not touched:
        return []
    template = _template(volume.datasets[touched[0]], spec, uids, series_number)
    states: list[Dataset] = []
    for k in touched:
        present = [name for name in numbers if k in outlines.areas[name]]
        source = volume.datasets[k]
        frame = volume.frame_numbers[k] if volume.frame_numbers else None
        state = _copy_of(template)
        state.SOPInstanceUID = uids.uid("gsps", str(source.SOPInstanceUID), str(frame or 0))
        state.file_meta.MediaStorageSOPInstanceUID = state.SOPInstanceUID
        state.InstanceNumber = len(states) + 1
        series = Dataset()
        series.SeriesInstanceUID = source.SeriesInstanceUID
        series.ReferencedImageSequence = [_image_reference(source, frame)]
        state.ReferencedSeriesSequence = [series]
        if "SoftcopyVOILUTSequence" in template:
            voi = _copy_of(template.SoftcopyVOILUTSequence[0])
            voi.ReferencedImageSequence = [_image_reference(source, frame)]
            state.SoftcopyVOILUTSequence = [voi]
        state.GraphicLayerSequence = [layers[name] for name in present]
        state.GraphicAnnotationSequence = [
            _annotation(source, frame, layers[name], outlines, name, k, labels[name], uids)
            for name in present
        ]
        if frame is None:
            for group, name in zip(_OVERLAY_GROUPS, present, strict=False):
                _add_overlay(state, group, edge(masks[name][k]), layers[name], labels[name].label)
        states.append(state)
    logger.info("gsps images=%d", len(states))
    return states


def _template(
    source: Dataset, spec: PipelineSpec, uids: ResultUIDs, series_number: int
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The parts every presentation state of a job shares, built once by highdicom.

    Building each object with highdicom checks every referenced image against
    its IOD three times (about 20 ms an image, 6 s for 300 slices); the
    per-image parts (references, layers, graphics, overlays) are small, so
    :func:`write_gsps` takes this template's shared elements and adds them.
    ``tests/unit/pipelines/test_gsps.py`` checks that the result equals what
    highdicom builds for the same image.
    """
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=uids.uid("gsps-series"),
        series_number=series_number,
        sop_instance_uid=uids.uid("gsps-template"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=spec.name,
        # highdicom annotates a 1-tuple; a list is what pydicom writes as multi-valued LO.
        software_versions=list(software_versions(spec)),  # type: ignore[arg-type]
        device_serial_number="0",
        content_label=CONTENT_LABEL,
        content_description=spec.series_description[:64],
        voi_lut_transformations=_window(source),
        # Without an explicit shape dcmtk renders a MONOCHROME2 image far too dark.
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=hd.PresentationLUTShapeValues.IDENTITY
        ),
        contributing_equipment=[contributing_equipment(spec, uids)],
    )
    state.SeriesDescription = spec.series_description[:64]
    # General Series Laterality (Type 2C): the source's, else empty (not known here).
    state.Laterality = str(source.get("Laterality", "") or "")
    return state


def _copy_of(template: Dataset) -> Dataset:
    """A new data set holding copies of the template's elements (their values are shared).

    Assigning to a keyword of a pydicom data set changes the value of the
    element in place, so the copies must be new elements; the values they share
    are only ever replaced, never changed.
    """
    copied = Dataset()
    for element in template:
        copied.add(copy.copy(element))
    if hasattr(template, "file_meta"):
        copied.file_meta = FileMetaDataset()
        for element in template.file_meta:
            copied.file_meta.add(copy.copy(element))
    return copied


def _image_reference(source: Dataset, frame: int | None) -> Dataset:
    """A Referenced Image Sequence item naming one image (and frame)."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item


def _annotation(
    source: Dataset,
    frame: int | None,
    layer: hd.pr.GraphicLayer,
    outlines: Outlines,
    name: str,
    slice_index: int,
    label: LabelSpec,
    uids: ResultUIDs,
) -> Dataset:
    """A Graphic Annotation Sequence item (PS3.3 C.10.5): a segment's outlines and label."""
    track = tracking_uid(uids, name)
    text = label.label[:64]
    contours = outlines.contours(name, slice_index)
    graphics = [_polyline(to_image_coordinates(contour), text, track) for contour in contours]
    points = to_image_coordinates(contours[0])
    columns = float(source.Columns)
    centre = float(points[:, 0].mean())
    top = float(points[:, 1].min())
    half = min(len(text) * _CHAR_WIDTH / 2.0, columns / 2.0)
    left = min(max(centre - half, 0.0), columns - 2.0 * half)
    bottom = max(top - 2.0, _TEXT_HEIGHT)
    caption = hd.pr.TextObject(
        text_value=text,
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=(left, bottom - _TEXT_HEIGHT, left + 2.0 * half, bottom),
        tracking_id=text,
        tracking_uid=track,
    )
    item = Dataset()
    item.ReferencedImageSequence = [_image_reference(source, frame)]
    item.GraphicLayer = layer.GraphicLayer
    item.TextObjectSequence = [caption]
    item.GraphicObjectSequence = graphics
    return item


def _polyline(points: npt.NDArray[np.float32], text: str, track: str) -> Dataset:
    """A Graphic Object Sequence item (PS3.3 C.10.5.1.2): a closed outline in pixels.

    The item highdicom's ``GraphicObject`` makes, with the points encoded at once
    (:mod:`pipelines.writers.encoded`).
    """
    graphic = item()
    graphic.GraphicAnnotationUnits = "PIXEL"
    graphic.GraphicDimensions = 2
    graphic.NumberOfGraphicPoints = len(points)
    element = floats("GraphicData", points)
    graphic[element.tag] = element
    graphic.GraphicType = "POLYLINE"
    graphic.GraphicFilled = "N"
    graphic.TrackingID = text
    graphic.TrackingUID = track
    return graphic


def _window(source: Dataset) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """The source's first window as the presentation state's VOI, so the image looks the same."""
    centre, width = source.get("WindowCenter"), source.get("WindowWidth")
    if centre is None or width is None:
        return None
    c = float(centre[0] if isinstance(centre, MultiValue) else centre)
    w = float(width[0] if isinstance(width, MultiValue) else width)
    if w < 1:
        return None
    return [
        hd.pr.SoftcopyVOILUTTransformation(
            window_center=c,
            window_width=w,
            referenced_images=hd.ReferencedImageSequence(referenced_images=[source]),
        )
    ]


def _add_overlay(
    state: Dataset,
    group: int,
    pixels: npt.NDArray[np.bool_],
    layer: hd.pr.GraphicLayer,
    text: str,
) -> None:
    """Add a one-bit graphics overlay (PS3.3 C.9.2) activated in ``layer`` (C.11.7)."""
    rows, columns = pixels.shape
    state.add_new((group, 0x0010), "US", rows)  # Overlay Rows
    state.add_new((group, 0x0011), "US", columns)  # Overlay Columns
    state.add_new((group, 0x0022), "LO", f"Outline of {text}"[:64])  # Overlay Description
    state.add_new((group, 0x0040), "CS", "G")  # Overlay Type: graphics
    state.add_new((group, 0x0050), "SS", [1, 1])  # Overlay Origin: the top left pixel
    state.add_new((group, 0x0100), "US", 1)  # Overlay Bits Allocated
    state.add_new((group, 0x0102), "US", 0)  # Overlay Bit Position
    state.add_new((group, 0x1001), "CS", layer.GraphicLayer)  # Overlay Activation Layer
    state.add_new((group, 0x1500), "LO", text[:64])  # Overlay Label
    state.add_new((group, 0x3000), "OW", pack_bits(pixels.astype(np.uint8).ravel()))
