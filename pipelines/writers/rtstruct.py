"""Write the segments as an RT Structure Set (PS3.3 A.19), for oncology and planning systems.

One ROI per segment (ROI Number = Segment Number), with the segment's label as
ROI Name, its colour as ROI Display Color, ``AUTOMATIC`` generation by the
algorithm, and one CLOSED_PLANAR contour per outline on each source plane it
touches (:mod:`pipelines.outline`), in patient coordinates, each naming its
source image (Contour Image Sequence). RT ROI Observations give each ROI its
interpreted type (EXTERNAL for the body, ORGAN for other anatomy, none for a
finding) and the segment's SNOMED CT code.

highdicom has no RT Structure Set class and rt-utils needs OpenCV; the object
is built with pydicom on highdicom's SOP base (patient, study, series,
equipment, SOP common: :func:`~pipelines.writers.instance.new_instance`). A
hole in a segment is a contour of its own, and planning systems fill contours
by the even-odd rule, as the outlines are traced.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import RTStructureSetStorage

from pipelines.outline import Outlines, to_patient
from pipelines.spec import LabelSpec, PipelineSpec
from pipelines.uids import ResultUIDs
from pipelines.volume import Volume
from pipelines.writers import encoded
from pipelines.writers.instance import new_instance
from pipelines.writers.sc import label_colours
from pipelines.writers.seg import segment_numbers

__all__ = ["RTSTRUCT_SERIES_NUMBER", "write_rtstruct"]

logger = logging.getLogger(__name__)

#: Series Number of the structure set.
RTSTRUCT_SERIES_NUMBER = 9005
# Segmented Property Category of anatomy (SCT 123037004): its ROIs are organs.
_ANATOMY = "123037004"
# RT ROI Interpreted Type of particular structures: the body outline is the EXTERNAL contour.
_INTERPRETED = {"38266002": "EXTERNAL"}


def write_rtstruct(
    volume: Volume,
    masks: Mapping[str, npt.NDArray[np.bool_]],
    spec: PipelineSpec,
    uids: ResultUIDs,
    outlines: Outlines,
    *,
    series_number: int = RTSTRUCT_SERIES_NUMBER,
) -> Dataset:
    """Build the structure set of a job.

    Parameters
    ----------
    volume : Volume
        The source volume: its headers are the referenced images, its geometry
        places the contours.
    masks : Mapping[str, numpy.ndarray]
        Boolean mask per label name (which labels have a segment).
    spec : PipelineSpec
        Labels, colours, algorithm, version.
    uids : ResultUIDs
        Where the UIDs come from (``rtstruct-series``, ``rtstruct``).
    outlines : Outlines
        The masks' outlines.
    series_number : int
        Series Number of the structure set.

    Returns
    -------
    pydicom.dataset.Dataset
        The RT Structure Set, ready to write.

    Raises
    ------
    PipelineConfigError
        If a label of the pipeline has no mask.
    ValueError
        If every mask is empty.
    """
    numbers = segment_numbers(spec, masks)
    if not numbers:
        raise ValueError("every mask is empty; there is nothing to write")
    labels = {label.name: label for label in spec.labels}
    colours = label_colours(spec)
    first = volume.datasets[0]
    now = datetime.datetime.now()
    rt = new_instance(
        first,
        spec,
        uids,
        role="rtstruct",
        sop_class_uid=RTStructureSetStorage,
        modality="RTSTRUCT",
        series_number=series_number,
    )
    rt.OperatorsName = ""  # RT Series, Type 2: no person operated the algorithm
    rt.StructureSetLabel = "AI"  # Type 1, at most 16 characters
    rt.StructureSetName = spec.algorithm_name[:64]
    rt.StructureSetDescription = spec.series_description
    rt.StructureSetDate = now.strftime("%Y%m%d")
    rt.StructureSetTime = now.strftime("%H%M%S")
    frame_of_reference = str(first.FrameOfReferenceUID)
    # Frame of Reference module: the contours lie in the source's patient coordinates.
    rt.FrameOfReferenceUID = frame_of_reference
    rt.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    rt.ReferencedFrameOfReferenceSequence = [_referenced_frame(volume, frame_of_reference)]
    rt.StructureSetROISequence = [
        _roi(labels[name], number, frame_of_reference, spec) for name, number in numbers.items()
    ]
    rt.ROIContourSequence = [
        _contours(volume, outlines, name, number, colours[name]) for name, number in numbers.items()
    ]
    rt.RTROIObservationsSequence = [
        _observation(labels[name], number) for name, number in numbers.items()
    ]
    rt.ApprovalStatus = "UNAPPROVED"  # an AI result no one has reviewed
    logger.info("rtstruct rois=%d", len(numbers))
    return rt


def _referenced_frame(volume: Volume, frame_of_reference: str) -> Dataset:
    """The frame of reference, study and series the contours lie in (C.8.8.5)."""
    first = volume.datasets[0]
    images = []
    for source in volume.instances:
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        images.append(item)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired)
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_of_reference
    frame.RTReferencedStudySequence = [study]
    return frame


def _roi(label: LabelSpec, number: int, frame_of_reference: str, spec: PipelineSpec) -> Dataset:
    """A Structure Set ROI Sequence item: number, name and how it was made."""
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = frame_of_reference
    roi.ROIName = label.label[:64]
    roi.ROIDescription = f"{label.type.meaning} ({spec.algorithm_name} {spec.version})"[:64]
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = spec.algorithm_name[:64]
    return roi


def _contours(
    volume: Volume,
    outlines: Outlines,
    name: str,
    number: int,
    colour: tuple[int, int, int],
) -> Dataset:
    """A ROI Contour Sequence item: the colour and every closed planar contour."""
    contours = []
    for k in outlines.slices(name):
        source = volume.datasets[k]
        frame = volume.frame_numbers[k] if volume.frame_numbers else None
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        if frame is not None:
            reference.ReferencedFrameNumber = frame
        for outline in outlines.contours(name, k):
            points = to_patient(volume, k, outline[:-1])  # closed: the first point is not repeated
            contour = encoded.item()
            contour.ContourImageSequence = [reference]
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            element = encoded.decimal_strings("ContourData", points)
            contour[element.tag] = element
            contours.append(contour)
    item = Dataset()
    item.ROIDisplayColor = list(colour)
    item.ReferencedROINumber = number
    item.ContourSequence = contours
    return item


def _observation(label: LabelSpec, number: int) -> Dataset:
    """An RT ROI Observations item: what the ROI is (C.8.8.8)."""
    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    # Type 2; a finding gets no type: a target volume (GTV...) is a clinician's call.
    observation.RTROIInterpretedType = _INTERPRETED.get(
        label.type.value, "ORGAN" if label.category.value == _ANATOMY and not label.finding else ""
    )
    observation.ROIInterpreter = ""  # Type 2: an algorithm, not a person
    identification = Dataset()
    identification.CodeValue = label.type.value
    identification.CodingSchemeDesignator = label.type.scheme
    identification.CodeMeaning = label.type.meaning
    observation.RTROIIdentificationCodeSequence = [identification]
    return observation
