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

The observer is a device (the pipeline), whose UID is derived like every other
UID here. The document is COMPLETE, UNVERIFIED and PRELIMINARY: a machine made
it and no person has checked it.
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
from pipelines.spec import LabelSpec, PipelineSpec
from pipelines.uids import ResultUIDs, derive_uid
from pipelines.volume import RegionStats, Volume
from pipelines.writers.seg import (
    MANUFACTURER,
    code,
    contributing_equipment,
    segment_numbers,
    software_versions,
    tracking_uid,
)

__all__ = [
    "HOUNSFIELD_UNIT",
    "MEAN",
    "MEAN_ATTENUATION",
    "MILLILITER",
    "SR_SERIES_NUMBER",
    "VOLUME",
    "observation_context",
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

# CID 100 "Quantitative Diagnostic Imaging Procedures" by modality; others get the generic code.
_PROCEDURES = {"CT": codes.cid100.CTUnspecifiedBodyRegion}


def write_sr(
    volume: Volume,
    masks: Mapping[str, npt.NDArray[np.bool_]],
    seg_dataset: Dataset,
    spec: PipelineSpec,
    uids: ResultUIDs,
    measurements: Mapping[str, RegionStats],
    *,
    series_number: int = SR_SERIES_NUMBER,
) -> Dataset:
    """Build the SR of a job, referencing its SEG.

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
    series_number : int
        Series Number of the SR.

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
    algorithm = hd.sr.AlgorithmIdentification(name=spec.algorithm_name, version=spec.version)
    groups = [
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
        for name, number in numbers.items()
    ]
    context = observation_context(spec)
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=_PROCEDURES.get(modality, codes.cid100.ImagingProcedure),
        imaging_measurements=groups,
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
        contributing_equipment=[contributing_equipment(spec)],
    )


def observation_context(spec: PipelineSpec) -> hd.sr.ObservationContext:
    """The observer of a report: the pipeline, as a device (TID 1004).

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline.

    Returns
    -------
    highdicom.sr.ObservationContext
        A device observer whose UID is derived from the pipeline's name and version.
    """
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derive_uid("device", MANUFACTURER, spec.name, spec.version),
        name=spec.algorithm_name,
        manufacturer_name=MANUFACTURER,
        model_name=spec.name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


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
