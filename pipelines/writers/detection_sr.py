"""Write a detector's findings as a Comprehensive 3D SR (TID 1500 Measurement Report).

One TID 1411 "Volumetric ROI Measurements and Qualitative Evaluations" group per
finding (a box at or above the pipeline's score threshold). Its region is the
box drawn as a closed rectangle (SCOORD POLYLINE, pixel coordinates) on every
source slice it covers, each referencing that slice (Image Region, TID 1411 row
"Image Region" 1-n). The slice through the box's centre comes first: OHIF's
``cornerstone-dicom-sr`` extension draws a measurement group from the first
SCOORD (or SCOORD3D) item it finds in it (``_processTID1410Measurement``), so the
viewer shows the box on the centre slice and jumps there. The group holds, as
TID 300 measurements referencing the centre slice:

- Width (103355008, SCT), Depth (131197000, SCT) and Height (121207, DCM): the
  box's extents left-right, anterior-posterior and cranio-caudal, in mm;
- Volume of ellipsoid (121221, DCM): the ellipsoid inscribed in the box, in mm3;
- Probability (122157, DCM): the detector's score, UCUM ``1``;

and a qualitative evaluation (the finding's code = Present), with the class's
codes as Finding Type and Finding Category. A study without findings above the
threshold still gets an SR: one TID 1501 group per class saying Absent, so the
radiologist reads "searched, nothing found" rather than nothing.

Each finding's tracking UID is derived from the pipeline, the input and the
finding's rank, so a re-run writes the same SR.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from pipelines.detection import Finding
from pipelines.errors import PipelineError
from pipelines.spec import PipelineSpec
from pipelines.uids import ResultUIDs
from pipelines.volume import Volume
from pipelines.writers.absent import absent_group
from pipelines.writers.classification_sr import NO_UNITS, PRESENT, PROBABILITY
from pipelines.writers.seg import code
from pipelines.writers.sr import (
    SR_SERIES_NUMBER,
    observation_context,
    procedure_reported,
    report_sr,
)

__all__ = ["DEPTH", "ELLIPSOID_VOLUME", "HEIGHT", "WIDTH", "write_detection_sr"]

logger = logging.getLogger(__name__)

WIDTH = hd.sr.CodedConcept("103355008", "SCT", "Width")
DEPTH = hd.sr.CodedConcept("131197000", "SCT", "Depth")
HEIGHT = hd.sr.CodedConcept("121207", "DCM", "Height")
ELLIPSOID_VOLUME = hd.sr.CodedConcept("121221", "DCM", "Volume of ellipsoid")
_MILLIMETER = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
_CUBIC_MILLIMETER = hd.sr.CodedConcept("mm3", "UCUM", "cubic millimeter")


def write_detection_sr(
    volume: Volume,
    found: Sequence[Finding],
    spec: PipelineSpec,
    uids: ResultUIDs,
    *,
    series_number: int = SR_SERIES_NUMBER,
) -> Dataset:
    """Build the SR of a detection job.

    Parameters
    ----------
    volume : Volume
        The source volume; its headers are the evidence and the regions' images.
    found : Sequence[Finding]
        The findings, best first (:func:`pipelines.detection.findings`).
    spec : PipelineSpec
        Classes with their codes, algorithm, version, series description.
    uids : ResultUIDs
        Deterministic result UIDs.
    series_number : int
        Series Number of the SR.

    Returns
    -------
    pydicom.dataset.Dataset
        A ``highdicom.sr.Comprehensive3DSR``.

    Raises
    ------
    PipelineError
        If a finding lies on no slice of the volume, or the volume is made of
        frames of a multi-frame image (regions reference single-frame slices).
    """
    if volume.is_multiframe:
        raise PipelineError("detection regions need single-frame source slices")
    algorithm = hd.sr.AlgorithmIdentification(name=spec.algorithm_name, version=spec.version)
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | (
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations)] = []  # fmt: skip
    for rank, finding in enumerate(found, start=1):
        groups.append(_finding_group(finding, rank, volume, uids, algorithm))
    reported = {finding.label.name for finding in found}
    for label in spec.labels:
        if label.name not in reported:
            groups.append(absent_group(label, volume.datasets[0], uids, algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(spec, uids),
        procedure_reported=procedure_reported(volume.datasets[0]),
        imaging_measurements=groups,
    )
    sr = report_sr(report, volume.instances, spec, uids, series_number)
    logger.info("detection sr findings=%d groups=%d", len(found), len(groups))
    return sr


def _finding_group(
    finding: Finding,
    rank: int,
    volume: Volume,
    uids: ResultUIDs,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    if not finding.slices:
        raise PipelineError(f"finding {rank} lies on no slice of the series")
    order = [finding.center_slice, *(s for s in finding.slices if s != finding.center_slice)]
    column_min, row_min, column_max, row_max = finding.rectangle
    rectangle = np.array(
        [[column_min, row_min], [column_max, row_min], [column_max, row_max],
         [column_min, row_max], [column_min, row_min]],
        dtype=np.float32,
    )  # fmt: skip
    regions = [
        hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=rectangle,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=str(volume.datasets[index].SOPClassUID),
                referenced_sop_instance_uid=str(volume.datasets[index].SOPInstanceUID),
            ),
        )
        for index in order
    ]
    center = volume.datasets[finding.center_slice]
    reference = [
        hd.sr.SourceImageForMeasurement(
            referenced_sop_class_uid=str(center.SOPClassUID),
            referenced_sop_instance_uid=str(center.SOPInstanceUID),
        )
    ]
    width, depth, height = finding.extent_mm
    measurements = [
        hd.sr.Measurement(name=concept, value=round(value, 2), unit=unit,
                          algorithm_id=algorithm, referenced_images=reference)
        for concept, value, unit in (
            (WIDTH, width, _MILLIMETER),
            (DEPTH, depth, _MILLIMETER),
            (HEIGHT, height, _MILLIMETER),
            (ELLIPSOID_VOLUME, finding.ellipsoid_volume_mm3, _CUBIC_MILLIMETER),
            (PROBABILITY, finding.score, NO_UNITS),
        )
    ]  # fmt: skip
    finding_code = code(finding.label.type)
    identifier = f"{finding.label.label} {rank}"[:64]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.uid("tracking", finding.label.name, str(rank)), identifier=identifier
        ),
        referenced_regions=regions,
        finding_type=finding_code,
        finding_category=code(finding.label.category),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=finding_code, value=PRESENT)],
    )
