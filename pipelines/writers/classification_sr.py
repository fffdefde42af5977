"""Write per-image classification results as a Comprehensive 3D SR (TID 1500).

One TID 1501 "Measurement and Qualitative Evaluation Group" per (image,
label). Each group names the finding (the label's Segmented Property Type code
as Finding Type, its category as Finding Category), references the radiograph
it is about (Source image for measurement group), and holds:

- a TID 300 measurement (122157, DCM, "Probability") in UCUM ``1`` ("no
  units"), the model's probability of the finding, referencing the image;
- a qualitative evaluation, concept name the finding's code, value
  (121053, DCM, "Present") or (121054, DCM, "Absent") by the label's threshold.

The observer is the algorithm as a device (its Device UID); Procedure
Reported names the radiographs' procedure (:func:`~pipelines.writers.sr.procedure_reported`);
the document is COMPLETE, UNVERIFIED and PRELIMINARY, like every result the node
writes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from pipelines.errors import PipelineError
from pipelines.radiograph import Radiograph
from pipelines.spec import LabelSpec, PipelineSpec
from pipelines.uids import ResultUIDs
from pipelines.writers.seg import code
from pipelines.writers.sr import (
    SR_SERIES_NUMBER,
    observation_context,
    procedure_reported,
    report_sr,
)

__all__ = ["ABSENT", "NO_UNITS", "PRESENT", "PROBABILITY", "write_classification_sr"]

logger = logging.getLogger(__name__)

PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
PRESENT = hd.sr.CodedConcept("121053", "DCM", "Present")
ABSENT = hd.sr.CodedConcept("121054", "DCM", "Absent")


def write_classification_sr(
    images: Sequence[Radiograph],
    probabilities: Sequence[Mapping[str, float]],
    spec: PipelineSpec,
    uids: ResultUIDs,
    *,
    series_number: int = SR_SERIES_NUMBER,
) -> Dataset:
    """Build the SR of a classification job.

    Parameters
    ----------
    images : Sequence[Radiograph]
        The classified images; their headers are the evidence.
    probabilities : Sequence[Mapping[str, float]]
        For each image, the probability of each label, by label name.
    spec : PipelineSpec
        Labels with codes and thresholds, algorithm, version, series description.
    uids : ResultUIDs
        Where the Series and SOP Instance UIDs come from.
    series_number : int
        Series Number of the SR.

    Returns
    -------
    pydicom.dataset.Dataset
        A ``highdicom.sr.Comprehensive3DSR``.

    Raises
    ------
    PipelineError
        If there are no images, the numbers of images and results differ, a
        label has no probability, or a probability lies outside [0, 1].
    """
    if not images:
        raise PipelineError("there is no image to report on")
    if len(images) != len(probabilities):
        raise PipelineError(
            f"{len(images)} image(s) but {len(probabilities)} classification result(s)"
        )
    for number, result in enumerate(probabilities, start=1):
        for label in spec.labels:
            value = result.get(label.name)
            if value is None:
                raise PipelineError(f"image {number} has no probability for {label.name!r}")
            if not 0.0 <= value <= 1.0:
                raise PipelineError(
                    f"image {number}: probability of {label.name!r} is {value}, not in [0, 1]"
                )
    algorithm = hd.sr.AlgorithmIdentification(name=spec.algorithm_name, version=spec.version)
    groups = [
        _group(image, label, float(result[label.name]), number, uids, algorithm)
        for number, (image, result) in enumerate(zip(images, probabilities, strict=True), 1)
        for label in spec.labels
    ]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(spec, uids),
        procedure_reported=procedure_reported(images[0].header),
        imaging_measurements=groups,
    )
    sr = report_sr(report, [image.header for image in images], spec, uids, series_number)
    logger.info("classification sr images=%d groups=%d", len(images), len(groups))
    return sr


def _group(
    image: Radiograph,
    label: LabelSpec,
    probability: float,
    number: int,
    uids: ResultUIDs,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One TID 1501 group: the finding on one image, its probability and presence."""
    sop_class = str(image.header.SOPClassUID)
    sop_instance = str(image.header.SOPInstanceUID)
    finding = code(label.type)
    probability_item = hd.sr.Measurement(
        name=PROBABILITY,
        value=probability,
        unit=NO_UNITS,
        algorithm_id=algorithm,
        referenced_images=[
            hd.sr.SourceImageForMeasurement(
                referenced_sop_class_uid=sop_class, referenced_sop_instance_uid=sop_instance
            )
        ],
    )
    presence = hd.sr.QualitativeEvaluation(
        name=finding, value=PRESENT if probability >= label.threshold else ABSENT
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.uid("tracking", label.name, sop_instance),
            identifier=f"{label.label} on image {number}"[:64],
        ),
        finding_type=finding,
        finding_category=code(label.category),
        algorithm_id=algorithm,
        measurements=[probability_item],
        qualitative_evaluations=[presence],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=sop_class, referenced_sop_instance_uid=sop_instance
            )
        ],
    )
