"""Write a pipeline's masks as a Segmentation (PS3.3 A.51, C.8.20).

One segment per label that has at least one voxel, numbered 1, 2, ... in the
order of the pipeline's labels (:func:`segment_numbers`; the SR uses the same
numbers). A BINARY SEG (the default) may hold overlapping segments: a body
segment contains the lung segments. A LABELMAP SEG (``segmentation_type:
labelmap``, Labelmap Segmentation Storage, Sup 243) stores one label per pixel;
where masks overlap the later label of the definition wins
(:func:`exclusive_masks`), and the pipeline measures those exclusive masks so
that the SR agrees with the SEG. Frames that hold no voxel of their segment
are left out (``omit_empty_frames``).

Every frame lies on a source slice, at that slice's own Image Position and
Orientation, and names it in its Derivation Image Sequence (with its Referenced
Frame Number for a multi-frame source): masks on a resampled grid (a tilted
or unevenly spaced stack) are first brought back onto the source slices
(:meth:`pipelines.volume.Volume.on_source_planes`). The sources may be:

- single-frame slices: highdicom takes each frame's plane from its slice;
- all frames of one Enhanced multi-frame image: highdicom takes the planes from
  its functional groups, in the source's frame order;
- anything else (frames of several multi-frame images, as a Siemens XA
  Enhanced MR series split over files, or some frames of one, as the magnitude
  frames of a Philips magnitude/field-map object): highdicom accepts only one
  multi-frame source, so the planes are passed explicitly, the other images
  are listed as further sources (Referenced Series Sequence), and each frame's
  Source Image item is set to the very source frame it was made from
  (PS3.3 C.7.6.16.2.6 allows any image of the study there).

Every identity comes from the caller: UIDs from :mod:`pipelines.uids` (never
``generate_uid()``), the series description and codes from the pipeline
definition. The AI algorithm is named three times, as IHE AI Results (AIR)
asks: Manufacturer's Model Name / Software Versions, the segments' Algorithm
Identification, and a Contributing Equipment item (PS3.3 C.12.1) with the AIR
purpose of reference and the algorithm's Device UID (:func:`contributing_equipment`).

The source headers are enough: highdicom reads geometry and references from
them and never needs their Pixel Data.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node import __version__ as node_version
from pipelines.errors import PipelineConfigError, PipelineError
from pipelines.labelmap import LabelMapMasks
from pipelines.spec import CodeSpec, LabelSpec, PipelineSpec, SegmentationKind
from pipelines.uids import ResultUIDs
from pipelines.volume import Volume

__all__ = [
    "MANUFACTURER",
    "PROCESSING_ALGORITHM",
    "SEG_SERIES_NUMBER",
    "code",
    "contributing_equipment",
    "exclusive_masks",
    "segment_numbers",
    "software_versions",
    "tracking_uid",
    "write_seg",
]

logger = logging.getLogger(__name__)

#: Manufacturer of every object the node writes.
MANUFACTURER = "dicom-node"
#: Purpose of Reference of the algorithm's Contributing Equipment item, as IHE AI Results
#: (AIR) defines it for an Evidence Creator; DICOM has no code of its own for it yet.
PROCESSING_ALGORITHM = hd.sr.CodedConcept("Newcode1", "99IHE", "Processing Algorithm")
#: Series Number of the SEG series; high, so viewers list results after the images.
SEG_SERIES_NUMBER = 9001
# Nothing identifies a physical device; a fixed value keeps re-runs byte-stable.
_DEVICE_SERIAL_NUMBER = "0"
# Long String (LO) values hold at most 64 characters (PS3.5 6.2).
_LO_MAX = 64
# Functional groups highdicom reads from a multi-frame source's Shared group only.
_SHARED_GEOMETRY = ("PixelMeasuresSequence", "PlaneOrientationSequence")


def code(spec: CodeSpec) -> hd.sr.CodedConcept:
    """Turn a pipeline definition's code into a highdicom coded concept.

    Parameters
    ----------
    spec : CodeSpec
        Value, scheme designator and meaning.

    Returns
    -------
    highdicom.sr.CodedConcept
        The same concept.
    """
    return hd.sr.CodedConcept(value=spec.value, scheme_designator=spec.scheme, meaning=spec.meaning)


def software_versions(spec: PipelineSpec) -> tuple[str, ...]:
    """Software Versions written into the results: the node's, then the pipeline's.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline.

    Returns
    -------
    tuple[str, ...]
        e.g. ``("dicom-node 0.1.0", "ct-body-lung 1.0.0")``.
    """
    return (f"dicom-node {node_version}", f"{spec.name} {spec.version}")


def contributing_equipment(spec: PipelineSpec, uids: ResultUIDs) -> hd.ContributingEquipment:
    """Build the Contributing Equipment item that names the algorithm (IHE AIR).

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline.
    uids : ResultUIDs
        The job's UIDs; their Device UID identifies the algorithm and its model.

    Returns
    -------
    highdicom.ContributingEquipment
        Purpose :data:`PROCESSING_ALGORITHM` (AIR's code for an algorithm, not
        DICOM's (109102, DCM, "Processing Equipment"), which names a device),
        manufacturer, the algorithm name as model name, the pipeline version as
        software version, the Device UID, and whether it is for diagnosis.
    """
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        # highdicom accepts only CID 7005's own terms; that context group is extensible,
        # so AIR's code replaces the placeholder below.
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=_lo(spec.algorithm_name, "algorithm name"),
        software_versions=[spec.version],
        contribution_description=(
            "AI-generated result"
            if spec.cleared_for_clinical_use
            else "AI-generated result (not for diagnosis)"
        ),
    )
    item.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    item.DeviceUID = uids.device_uid
    return item


def segment_numbers(
    spec: PipelineSpec, masks: Mapping[str, npt.NDArray[np.bool_]]
) -> dict[str, int]:
    """Segment Number of each non-empty label, in the order of ``spec.labels``.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline; its labels give the order.
    masks : Mapping[str, numpy.ndarray]
        Boolean mask per label name.

    Returns
    -------
    dict[str, int]
        Label name to segment number (1, 2, ...); empty labels are left out.

    Raises
    ------
    PipelineConfigError
        If a label of the pipeline has no mask.
    """
    numbers: dict[str, int] = {}
    for label in spec.labels:
        if label.name not in masks:
            produced = ", ".join(sorted(masks))
            raise PipelineConfigError(
                f"label {label.name!r} of pipeline {spec.name!r} is not produced by its model "
                f"(it produces: {produced})"
            )
        present = (
            masks.present(label.name)
            if isinstance(masks, LabelMapMasks)
            else bool(np.any(masks[label.name]))
        )
        if present:
            numbers[label.name] = len(numbers) + 1
    return numbers


def exclusive_masks(
    spec: PipelineSpec, masks: Mapping[str, npt.NDArray[np.bool_]]
) -> dict[str, npt.NDArray[np.bool_]]:
    """Masks without overlaps: where several labels claim a voxel, the later label wins.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline; the order of its labels decides.
    masks : Mapping[str, numpy.ndarray]
        Boolean mask per label name.

    Returns
    -------
    dict[str, numpy.ndarray]
        The same names; each voxel is in at most one mask.

    Raises
    ------
    PipelineConfigError
        If a label of the pipeline has no mask.
    """
    taken: npt.NDArray[np.bool_] | None = None
    out: dict[str, npt.NDArray[np.bool_]] = {}
    for label in reversed(spec.labels):
        if label.name not in masks:
            raise PipelineConfigError(f"label {label.name!r} has no mask")
        mask = masks[label.name]
        out[label.name] = mask if taken is None else mask & ~taken
        taken = mask.copy() if taken is None else taken | mask
    return {label.name: out[label.name] for label in spec.labels}


class _Segmentation(hd.seg.Segmentation):
    """highdicom's Segmentation with a cheaper overlap check for stacked binary masks.

    For a 4D boolean stack highdicom decides Segments Overlap with
    ``pixel_array.sum(axis=-1)``: a 64-bit integer per voxel (630 MB for 300
    slices of 512x512), which took 1-2 s of the ~2.5 s a SEG took to build. The
    same answer comes from a one-byte count per voxel. Every other input goes
    to highdicom's own check unchanged. If a future highdicom renames the
    method, this override is simply never called and only the speed is lost;
    ``tests/unit/pipelines/test_seg_overlap.py`` checks that it is still used.
    """

    @classmethod
    def _check_and_cast_pixel_array(
        cls,
        pixel_array: Any,
        segment_numbers: npt.NDArray[np.integer[Any]],
        segmentation_type: hd.seg.SegmentationTypeValues,
        dtype: type,
    ) -> tuple[Any, hd.seg.SegmentsOverlapValues]:
        if (
            not isinstance(pixel_array, np.ndarray)
            or pixel_array.dtype != np.bool_
            or pixel_array.ndim != 4
            or pixel_array.shape[-1] != len(segment_numbers)
            or not 1 < pixel_array.shape[-1] < 256
            or segmentation_type != hd.seg.SegmentationTypeValues.BINARY
        ):
            return super()._check_and_cast_pixel_array(
                pixel_array, segment_numbers, segmentation_type, dtype
            )
        return pixel_array, (
            hd.seg.SegmentsOverlapValues.YES
            if _segments_overlap(pixel_array)
            else hd.seg.SegmentsOverlapValues.NO
        )


def _segments_overlap(stack: npt.NDArray[np.bool_], frames_per_chunk: int = 16) -> bool:
    """Whether any pixel of a (frames, rows, columns, segments) stack is in two segments.

    Counts segments per pixel in one-byte chunks of a few frames, so the
    temporary stays small (4 MB for 512x512) and the scan stops at the first
    overlap (a body segment holding the lungs overlaps on its first lung slice).
    """
    count = np.empty((min(frames_per_chunk, stack.shape[0]), *stack.shape[1:3]), dtype=np.uint8)
    for start in range(0, stack.shape[0], frames_per_chunk):
        chunk = stack[start : start + frames_per_chunk]
        counted = count[: chunk.shape[0]]
        np.copyto(counted, chunk[..., 0])
        for index in range(1, stack.shape[-1]):
            counted += chunk[..., index]
        if counted.max() > 1:
            return True
    return False


def write_seg(
    volume: Volume,
    masks: Mapping[str, npt.NDArray[np.bool_]],
    spec: PipelineSpec,
    uids: ResultUIDs,
    *,
    series_number: int = SEG_SERIES_NUMBER,
) -> Dataset:
    """Build the SEG of a job.

    Parameters
    ----------
    volume : Volume
        The source volume; its sorted headers are the source images.
    masks : Mapping[str, numpy.ndarray]
        Boolean mask per label name, each of shape ``volume.shape`` (the grid the
        model saw); may overlap. They are written on the source slices.
    spec : PipelineSpec
        Labels with their codes, algorithm, version and series description.
    uids : ResultUIDs
        Where the Series and SOP Instance UIDs come from.
    series_number : int
        Series Number of the SEG.

    Returns
    -------
    pydicom.dataset.Dataset
        A ``highdicom.seg.Segmentation`` (BINARY, or LABELMAP as the definition
        says), not yet written to disk.

    Raises
    ------
    PipelineConfigError
        If a label has no mask, or a text from the definition is too long for its
        DICOM attribute.
    ValueError
        If a mask is not boolean or its shape differs from the volume's, or every
        mask is empty.
    """
    numbers = segment_numbers(spec, masks)
    if isinstance(masks, LabelMapMasks) and masks.labelmap.shape != volume.shape:
        raise ValueError(f"labelmap has shape {masks.labelmap.shape}, expected {volume.shape}")
    for name, mask in () if isinstance(masks, LabelMapMasks) else masks.items():
        if mask.shape != volume.shape:
            raise ValueError(f"mask {name!r} has shape {mask.shape}, expected {volume.shape}")
        if mask.dtype != np.bool_:
            raise ValueError(f"mask {name!r} must be boolean, got {mask.dtype}")
    if not numbers:
        raise ValueError("every mask is empty; there is nothing to write")
    started = time.perf_counter()

    labels = {label.name: label for label in spec.labels}
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_lo(spec.algorithm_name, "algorithm name"),
        family=code(spec.algorithm.family),
        version=_lo(spec.version, "version"),
    )
    descriptions = [
        _segment_description(labels[name], number, algorithm, uids)
        for name, number in numbers.items()
    ]
    labelmap = spec.segmentation_type == SegmentationKind.LABELMAP
    planes: dict[str, npt.NDArray[np.bool_]] = {}
    pixels: npt.NDArray[np.generic]
    if isinstance(masks, LabelMapMasks) and volume.resampling is None:
        # Disjoint labels of one label map: highdicom takes the segment numbers per pixel
        # for either type, and never needs one boolean array per segment.
        pixels = masks.segment_map(numbers)
    elif labelmap:
        # One frame per source slice: masks on a resampled grid go back onto the source planes.
        planes = {name: volume.on_source_planes(masks[name]) for name in numbers}
        # One label per pixel; the later label wins where masks overlap.
        painted = np.zeros(volume.source_shape, dtype=np.uint8)
        for name, number in numbers.items():
            painted[planes[name]] = number
        pixels = painted
    else:
        planes = {name: volume.on_source_planes(masks[name]) for name in numbers}
        # (frames, rows, columns, segments), frames in the order of the source headers. The
        # segment axis is outermost in memory: highdicom's per-segment slices are then
        # contiguous, and its overlap check (a sum over segments) runs 10x faster.
        pixels = np.moveaxis(np.stack([planes[name] for name in numbers], axis=0), 0, -1)
    del planes
    sources = list(volume.datasets)
    further: list[Dataset] = []
    plane_positions: list[hd.PlanePositionSequence] | None = None
    if volume.is_multiframe:
        instances = list(volume.instances)
        frame_count = int(instances[0].get("NumberOfFrames", 1) or 1)
        if len(instances) == 1 and sorted(n or 0 for n in volume.frame_numbers) == list(
            range(1, frame_count + 1)
        ):
            # highdicom wants the frames in the source's own frame order.
            sources = [_shared_geometry(instances[0])]
            pixels = pixels[np.argsort([number or 0 for number in volume.frame_numbers])]
        else:
            sources, further = [_shared_geometry(instances[0])], instances[1:]
            plane_positions = [
                hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, position)
                for position in volume.source_positions
            ]
    kind = (
        hd.seg.SegmentationTypeValues.LABELMAP if labelmap else hd.seg.SegmentationTypeValues.BINARY
    )

    seg = _Segmentation(
        source_images=sources,
        further_source_images=further or None,
        plane_positions=plane_positions,
        pixel_array=pixels,
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=uids.seg_series,
        series_number=series_number,
        sop_instance_uid=uids.seg_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=_lo(spec.name, "pipeline name"),
        # highdicom annotates this as a 1-tuple, but pydicom refuses tuples for a
        # multi-valued LO; a list is what both accept at run time.
        software_versions=list(software_versions(spec)),  # type: ignore[arg-type]
        device_serial_number=_DEVICE_SERIAL_NUMBER,
        content_description=_lo(spec.series_description, "series_description"),
        series_description=_lo(spec.series_description, "series_description"),
        omit_empty_frames=True,
        contributing_equipment=[contributing_equipment(spec, uids)],
    )
    if plane_positions is not None:
        _reference_source_frames(seg, volume)
    # highdicom draws a random Dimension Organization UID; derive it so re-runs match.
    dimension_uid = uids.uid("seg-dimension-organization")
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = dimension_uid
    logger.info(
        "seg segments=%d frames=%d seconds=%.3f",
        len(descriptions),
        int(seg.NumberOfFrames),
        time.perf_counter() - started,
    )
    return seg


def _shared_geometry(header: Dataset) -> Dataset:
    """The header as highdicom can read it: Pixel Measures and Plane Orientation shared.

    highdicom reads a multi-frame source's Pixel Measures and Plane Orientation
    from its Shared Functional Groups only, but scanners may keep them per
    frame (Siemens XA, Philips). The loader has checked that every frame has
    the same spacing and orientation, so a copy with the first frame's items
    lifted into the Shared group describes the same source. Only highdicom
    reads the copy; the SEG refers to the source by its UIDs.
    """
    shared_items = header.get("SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else Dataset()
    lifted = [name for name in _SHARED_GEOMETRY if name not in shared]
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if not lifted or not per_frame:
        return header
    copied = copy.deepcopy(header)
    new_shared = copy.deepcopy(shared)
    for name in lifted:
        if name in per_frame[0]:
            setattr(new_shared, name, copy.deepcopy(per_frame[0][name].value))
    copied.SharedFunctionalGroupsSequence = [new_shared]
    return copied


def _reference_source_frames(seg: hd.seg.Segmentation, volume: Volume) -> None:
    """Point each frame's Derivation Image item at the source frame on its plane.

    Used where highdicom cannot match planes to frames itself (its matching
    looks inside one multi-frame source only). Every frame was placed on a
    source slice's own position, so the match is exact.
    """
    positions = volume.source_positions
    derivation = hd.sr.CodedConcept.from_code(codes.cid7203.SegmentationImageDerivation)
    purpose = hd.sr.CodedConcept.from_code(codes.cid7202.SourceImageForImageProcessingOperation)
    for item in seg.PerFrameFunctionalGroupsSequence:
        position = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        distances = np.linalg.norm(positions - position, axis=1)
        k = int(np.argmin(distances))
        if distances[k] > 1e-3:
            raise PipelineError("a SEG frame lies on no source slice (internal error)")
        source = volume.datasets[k]
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        if volume.frame_numbers[k] is not None:
            reference.ReferencedFrameNumber = volume.frame_numbers[k]
        reference.PurposeOfReferenceCodeSequence = [purpose]
        reference.SpatialLocationsPreserved = "YES"
        image = Dataset()
        image.DerivationCodeSequence = [derivation]
        image.SourceImageSequence = [reference]
        item.DerivationImageSequence = [image]


def _segment_description(
    label: LabelSpec,
    number: int,
    algorithm: hd.AlgorithmIdentificationSequence,
    uids: ResultUIDs,
) -> hd.seg.SegmentDescription:
    """One segment: label, SNOMED codes, algorithm, tracking identity and colour."""
    color = hd.color.CIELabColor.from_rgb(*label.color) if label.color is not None else None
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=_lo(label.label, f"label {label.name!r}"),
        segmented_property_category=code(label.category),
        segmented_property_type=code(label.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        # The SR's finding for this segment carries the same tracking UID.
        tracking_uid=tracking_uid(uids, label.name),
        tracking_id=_lo(label.label, f"label {label.name!r}"),
        display_color=color,
    )
    if label.modifier is not None:
        # PS3.3 C.8.20.2: the modifier (e.g. Left) sits inside the property type item.
        description.SegmentedPropertyTypeCodeSequence[
            0
        ].SegmentedPropertyTypeModifierCodeSequence = [code(label.modifier)]
    return description


def tracking_uid(uids: ResultUIDs, label_name: str) -> str:
    """Tracking UID of a label's finding, shared by the SEG segment and the SR.

    Parameters
    ----------
    uids : ResultUIDs
        The job's UIDs.
    label_name : str
        Label name, e.g. ``"right_lung"``.

    Returns
    -------
    str
        A deterministic UID.
    """
    return uids.uid("tracking", label_name)


def _lo(value: str, what: str) -> str:
    """Refuse a Long String that does not fit (the definition is at fault)."""
    if len(value) > _LO_MAX:
        raise PipelineConfigError(f"{what} is longer than {_LO_MAX} characters: {value!r}")
    return value
