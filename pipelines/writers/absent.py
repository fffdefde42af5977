"""A finding looked for and not found, as a TID 1501 group that says Absent.

A 104-label segmentation whose series shows 30 of the structures writes 30
segments; the other 74 are not silently dropped: the SR holds one TID 1501
"Measurement and Qualitative Evaluation Group" per label, with the label's codes
as Finding Type and Category and a qualitative evaluation (the finding's code =
(121054, DCM, "Absent")), referencing the series it was looked for in. A
detector that finds nothing above its threshold reports each class the same way.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.spec import LabelSpec
from pipelines.uids import ResultUIDs
from pipelines.writers.seg import code

__all__ = ["absent_group"]


def absent_group(
    label: LabelSpec,
    source: Dataset,
    uids: ResultUIDs,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the label was looked for in the series and is absent.

    Parameters
    ----------
    label : LabelSpec
        The label (its codes).
    source : pydicom.dataset.Dataset
        A source image of the series (the group's source image reference).
    uids : ResultUIDs
        The job's UIDs (the group's tracking UID is derived from them).
    algorithm : highdicom.sr.AlgorithmIdentification
        The algorithm that looked.

    Returns
    -------
    highdicom.sr.MeasurementsAndQualitativeEvaluations
        The group.
    """
    finding = code(label.type)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.uid("tracking", label.name, "absent"),
            identifier=f"{label.label} (absent)"[:64],
        ),
        finding_type=finding,
        finding_category=code(label.category),
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=finding, value=codes.DCM.Absent)],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
            )
        ],
    )
