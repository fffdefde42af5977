"""Write a job's measurements as a Comprehensive 3D SR (TID 1500 Measurement Report).

One TID 1411 "Volumetric ROI Measurements and Qualitative Evaluations" group per
segment of the SEG. Each group references its segment (SEG SOP Instance UID and
Segment Number) and the segment's source, carries the same tracking UID as the
segment, and holds two TID 300 measurements:

- Volume: (118565006, SCT, "Volume") in mL (UCUM ``ml``).
- Mean attenuation: (112031, DCM, "Attenuation Coefficient"), derivation
  (373098007, SCT, "Mean"), in Hounsfield units (UCUM ``[hnsf'U]``), as dcmqi
  writes it. Left out for a modality other than CT.

The source of a segment is named the way TID 1411 allows and dcmqi writes it:
for a series of single-frame images, one "Source Series for Segmentation"
(121232, DCM) item with the Series Instance UID; for an Enhanced multi-frame
image, one "Source Image for Segmentation" item with the frames the segment
covers. Which slice each SEG frame came from is in the SEG itself (its per-frame
Derivation Image references), and every source image is listed in the SR's
Current Requested Procedure Evidence. One reference per source image per
segment would repeat the SEG's mapping in the SR (900 content items for three
segments over 300 slices) and made building the SR take over a second.

Each segment also gets a TID 1410 "Planar ROI Measurements and Qualitative
Evaluations" group with the same Tracking UID: its outline on the slice where
its cross-section is largest, as a SCOORD POLYLINE on that source image (its
SOP Instance and, for a multi-frame source, frame), with the cross-section's
area (42798000, SCT, "Area") in mm2, and for anatomy its Finding Site. Viewers
that draw SR measurements on images need such a region: OHIF's SR viewport
reads each group's SCOORD or SCOORD3D and its Referenced SOP Sequence, merges
the groups of one Tracking UID into one measurement (so it lists the volume,
the mean, the area and the site) and jumps to that image; a group without a
region stopped its viewport with a TypeError. dcmqi and 3D Slicer keep reading
the volumetric groups.

Procedure Reported names the imaging procedure: the source's own Procedure
Code Sequence where it has one, else the CID 100 code of its modality
(:func:`procedure_reported`).

The observer is a device (the algorithm), whose UID is the algorithm's Device
UID (:attr:`pipelines.uids.ResultUIDs.device_uid`). The document is COMPLETE,
UNVERIFIED and PRELIMINARY: a machine made it and no person has checked it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.errors import PipelineError
from pipelines.outline import Outlines, to_image_coordinates, trace
from pipelines.spec import LabelSpec, PipelineSpec
from pipelines.uids import ResultUIDs
from pipelines.volume import RegionStats, Volume
from pipelines.writers.absent import absent_group
from pipelines.writers.seg import (
    MANUFACTURER,
    code,
    contributing_equipment,
    segment_numbers,
    software_versions,
    tracking_uid,
)

__all__ = [
    "AREA",
    "HOUNSFIELD_UNIT",
    "MEAN",
    "MEAN_ATTENUATION",
    "MILLILITER",
    "SQUARE_MILLIMETER",
    "SR_SERIES_NUMBER",
    "VOLUME",
    "device_observer",
    "observation_context",
    "procedure_reported",
    "report_sr",
    "write_sr",
]

logger = logging.getLogger(__name__)

#: Series Number of the SR series (after the SEG's).
SR_SERIES_NUMBER = 9002

VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")
MILLILITER = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
MEAN_ATTENUATION = hd.sr.CodedConcept("112031", "DCM", "Attenuation Coefficient")
MEAN = hd.sr.CodedConcept("373098007", "SCT", "Mean")
HOUNSFIELD_UNIT = hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
AREA = hd.sr.CodedConcept("42798000", "SCT", "Area")
SQUARE_MILLIMETER = hd.sr.CodedConcept("mm2", "UCUM", "square millimeter")
#: Segmented Property Category (SCT) of anatomy, as opposed to findings.
ANATOMICAL_STRUCTURE = "123037004"

# CID 100 "Quantitative Diagnostic Imaging Procedures" by modality; others get the generic code.
_PROCEDURES = {
    "CT": codes.cid100.CTUnspecifiedBodyRegion,
    "MR": codes.cid100.MRIUnspecifiedBodyRegion,
    "PT": codes.cid100.PETUnspecifiedBodyRegion,
    "NM": codes.cid100.NMUnspecifiedBodyRegion,
    "CR": codes.cid100.XRUnspecifiedBodyRegion,
    "DX": codes.cid100.XRUnspecifiedBodyRegion,
    "MG": codes.cid100.XRUnspecifiedBodyRegion,
}


def write_sr(
    volume: Volume,
    masks: Mapping[str, npt.NDArray[np.bool_]],
    seg_dataset: Dataset,
    spec: PipelineSpec,
    uids: ResultUIDs,
    measurements: Mapping[str, RegionStats],
    *,
    outlines: Outlines | None = None,
    series_number: int = SR_SERIES_NUMBER,
    absent: Sequence[LabelSpec] = (),
) -> Dataset:
    """Build the SR of a job, referencing its SEG and each segment's key image.

    Parameters
    ----------
    volume : Volume
        The source volume; its headers are the evidence beside the SEG.
    masks : Mapping[str, numpy.ndarray]
        The masks the SEG was written from, on the volume's grid (which source
        frames each segment covers).
    seg_dataset : pydicom.dataset.Dataset
        The SEG from :func:`pipelines.writers.seg.write_seg`.
    spec : PipelineSpec
        Labels, algorithm and version.
    uids : ResultUIDs
        Where the SR's UIDs come from.
    measurements : Mapping[str, RegionStats]
        Volume and mean per label name, measured on the grid the masks live on
        (:meth:`pipelines.volume.Volume.measure`).
    outlines : Outlines or None
        The masks' outlines (:func:`pipelines.outline.trace`), when the job
        traced them already; traced here otherwise.
    series_number : int
        Series Number of the SR.
    absent : Sequence[LabelSpec]
        Labels that came out empty: each gets a TID 1501 group saying Absent
        (:func:`pipelines.writers.absent.absent_group`).

    Returns
    -------
    pydicom.dataset.Dataset
        A ``highdicom.sr.Comprehensive3DSR``.

    Raises
    ------
    PipelineError
        If the SEG does not hold the segments the masks say it should, or a
        segment has no measurement.
    PipelineConfigError
        If a label of the pipeline has no mask.
    """
    numbers = segment_numbers(spec, masks)
    in_seg = {
        int(item.SegmentNumber): str(item.SegmentLabel) for item in seg_dataset.SegmentSequence
    }
    labels = {label.name: label for label in spec.labels}
    for name, number in numbers.items():
        if in_seg.get(number) != labels[name].label:
            raise PipelineError(f"the SEG has no segment {number} for label {name!r}")
        if name not in measurements:
            raise PipelineError(f"no measurement for label {name!r}")

    modality = str(volume.datasets[0].get("Modality", ""))
    outlines = outlines if outlines is not None else trace({n: masks[n] for n in numbers})
    algorithm = hd.sr.AlgorithmIdentification(name=spec.algorithm_name, version=spec.version)
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    for name, number in numbers.items():
        groups.append(
            _roi_group(
                label=labels[name],
                number=number,
                mask=masks[name],
                stats=measurements[name],
                seg_dataset=seg_dataset,
                volume=volume,
                uids=uids,
                algorithm=algorithm,
                with_attenuation=modality == "CT",
            )
        )
        groups.append(_planar_group(labels[name], outlines, volume, uids, algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(spec, uids),
        procedure_reported=procedure_reported(volume.datasets[0]),
        imaging_measurements=[
            *groups,
            *(absent_group(label, volume.datasets[0], uids, algorithm) for label in absent),
        ],
    )
    sr = report_sr(report, [seg_dataset, *volume.instances], spec, uids, series_number)
    logger.info("sr groups=%d", len(groups))
    return sr


def report_sr(
    report: hd.sr.MeasurementReport,
    evidence: Sequence[Dataset],
    spec: PipelineSpec,
    uids: ResultUIDs,
    series_number: int,
) -> hd.sr.Comprehensive3DSR:
    """Wrap a TID 1500 report in a Comprehensive 3D SR with the pipeline's identity.

    Segmentation and classification reports differ only in their content and
    evidence; the SR around them (deterministic UIDs, status flags, equipment)
    is the same.

    Parameters
    ----------
    report : highdicom.sr.MeasurementReport
        The TID 1500 content.
    evidence : Sequence[pydicom.dataset.Dataset]
        Every object the content references (headers are enough).
    spec : PipelineSpec
        The pipeline.
    uids : ResultUIDs
        Deterministic result UIDs.
    series_number : int
        Series Number of the SR.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Complete, unverified and preliminary: an AI result no one has signed.
    """
    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=uids.sr_series,
        series_number=series_number,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        record_evidence=True,
        series_description=spec.series_description,
        manufacturer_model_name=spec.name,
        software_versions=list(software_versions(spec)),
        contributing_equipment=[contributing_equipment(spec, uids)],
    )


def observation_context(spec: PipelineSpec, uids: ResultUIDs) -> hd.sr.ObservationContext:
    """The observer of a report: the algorithm, as a device (TID 1002, 1004).

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline.
    uids : ResultUIDs
        The job's UIDs; the observer's UID is their Device UID, the same as in
        the Contributing Equipment item (IHE AIR).

    Returns
    -------
    highdicom.sr.ObservationContext
        A device observer named by the algorithm.
    """
    return hd.sr.ObservationContext(observer_device_context=device_observer(spec, uids))


def device_observer(spec: PipelineSpec, uids: ResultUIDs) -> hd.sr.ObserverContext:
    """The algorithm as a device observer (TID 1004): its Device UID, name and maker.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline.
    uids : ResultUIDs
        The job's UIDs (their Device UID).

    Returns
    -------
    highdicom.sr.ObserverContext
        Observer type (121007, DCM, "Device").
    """
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uids.device_uid,
        name=spec.algorithm_name,
        manufacturer_name=MANUFACTURER,
        model_name=spec.name,
    )
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device
    )


def procedure_reported(source: Dataset) -> hd.sr.CodedConcept:
    """Procedure Reported of a report on ``source``: the imaging procedure that made it.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        A header of the source images.

    Returns
    -------
    highdicom.sr.CodedConcept
        The first item of the source's Procedure Code Sequence (0008,1032), the
        procedure as the department coded it; else the CID 100 code of its
        modality (e.g. (25045-6, LN, "CT unspecified body region")); else
        (363679005, SCT, "Imaging procedure").
    """
    for item in source.get("ProcedureCodeSequence", []):
        value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
        if value and item.get("CodingSchemeDesignator") and item.get("CodeMeaning"):
            return hd.sr.CodedConcept(
                str(value), str(item.CodingSchemeDesignator), str(item.CodeMeaning)
            )
    code = _PROCEDURES.get(str(source.get("Modality", "")), codes.cid100.ImagingProcedure)
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


def _roi_group(
    *,
    label: LabelSpec,
    number: int,
    mask: npt.NDArray[np.bool_],
    stats: RegionStats,
    seg_dataset: Dataset,
    volume: Volume,
    uids: ResultUIDs,
    algorithm: hd.sr.AlgorithmIdentification,
    with_attenuation: bool,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """One TID 1411 group: the segment reference, its tracking identity and measurements."""
    if volume.is_multiframe:
        # One reference per multi-frame source, naming the frames the segment covers
        # (on the source slices, where the SEG's frames are).
        planes = volume.on_source_planes(mask)
        covered = np.flatnonzero(planes.reshape(planes.shape[0], -1).any(axis=1))
        frames: dict[str, list[int]] = {}
        for i in covered:
            frames.setdefault(str(volume.datasets[i].SOPInstanceUID), []).append(
                int(volume.frame_numbers[i] or 1)
            )
        by_uid = {str(ds.SOPInstanceUID): ds for ds in volume.instances}
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=str(seg_dataset.SOPClassUID),
            sop_instance_uid=str(seg_dataset.SOPInstanceUID),
            segment_number=number,
            source_images=[
                hd.sr.SourceImageForSegmentation(
                    referenced_sop_class_uid=str(by_uid[uid].SOPClassUID),
                    referenced_sop_instance_uid=uid,
                    referenced_frame_numbers=sorted(numbers),
                )
                for uid, numbers in frames.items()
            ],
        )
    else:
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=str(seg_dataset.SOPClassUID),
            sop_instance_uid=str(seg_dataset.SOPInstanceUID),
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(
                str(volume.datasets[0].SeriesInstanceUID)
            ),
        )
    items = [
        hd.sr.Measurement(
            name=VOLUME, value=stats.volume_ml, unit=MILLILITER, algorithm_id=algorithm
        )
    ]
    if with_attenuation and stats.mean_hu is not None:
        items.append(
            hd.sr.Measurement(
                name=MEAN_ATTENUATION,
                value=stats.mean_hu,
                unit=HOUNSFIELD_UNIT,
                derivation=MEAN,
                algorithm_id=algorithm,
            )
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(uids, label.name), identifier=label.label
        ),
        referenced_segment=segment,
        finding_type=code(label.type),
        finding_category=code(label.category),
        algorithm_id=algorithm,
        measurements=items,
    )


def _planar_group(
    label: LabelSpec,
    outlines: Outlines,
    volume: Volume,
    uids: ResultUIDs,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One TID 1410 group: the segment's outline on its key image, and the area there."""
    k = outlines.representative_slice(label.name)
    if k is None:
        raise PipelineError(f"label {label.name!r} has a segment but no outline")
    source = volume.datasets[k]
    frame = volume.frame_numbers[k] if volume.frame_numbers else None
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=to_image_coordinates(outlines.largest(label.name, k)),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=str(source.SOPInstanceUID),
            referenced_frame_numbers=[frame] if frame is not None else None,
        ),
    )
    pixel_mm2 = float(volume.spacing[1] * volume.spacing[2])
    area = hd.sr.Measurement(
        name=AREA,
        value=outlines.areas[label.name][k] * pixel_mm2,
        unit=SQUARE_MILLIMETER,
        algorithm_id=algorithm,
    )
    # An anatomical structure is where it is: its own code is its Finding Site, which
    # OHIF prints under the measurements, so the reader sees which structure they are.
    sites = (
        [hd.sr.FindingSite(anatomic_location=code(label.type))]
        if label.category.value == ANATOMICAL_STRUCTURE
        else None
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(uids, label.name), identifier=label.label
        ),
        referenced_region=region,
        finding_type=code(label.type),
        finding_category=code(label.category),
        finding_sites=sites,
        algorithm_id=algorithm,
        measurements=[area],
    )
