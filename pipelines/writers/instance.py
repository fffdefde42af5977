"""A new result instance in the source's study, for the kinds highdicom has no class for.

The RT Structure Set and the Encapsulated PDF are built on highdicom's SOP
base: patient and study copied from a source header, a new series, the node as
equipment, the pipeline as model and software, and the algorithm's
Contributing Equipment item (IHE AIR). Each writer adds its own modules.
"""

from __future__ import annotations

import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.spec import PipelineSpec
from pipelines.uids import ResultUIDs
from pipelines.writers.seg import MANUFACTURER, contributing_equipment, software_versions

__all__ = ["new_instance"]


def new_instance(
    source: Dataset,
    spec: PipelineSpec,
    uids: ResultUIDs,
    *,
    role: str,
    sop_class_uid: str,
    modality: str,
    series_number: int,
    created: datetime.datetime | None = None,
) -> hd.base.SOPClass:
    """An empty instance of ``sop_class_uid`` in the study of ``source``.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        A source header: patient and study come from it.
    spec : PipelineSpec
        The pipeline (model name, versions, series description).
    uids : ResultUIDs
        The job's UIDs: ``<role>-series`` and ``<role>`` name the series and instance.
    role : str
        What the instance is, e.g. ``"rtstruct"``.
    sop_class_uid : str
        Its SOP Class UID.
    modality : str
        Its series' Modality.
    series_number : int
        Its Series Number.
    created : datetime.datetime or None
        Content Date and Time, when the module has them.

    Returns
    -------
    highdicom.base.SOPClass
        Patient, study, series, equipment and SOP common modules filled in.
    """
    instance = hd.base.SOPClass(
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=uids.uid(f"{role}-series"),
        series_number=series_number,
        sop_instance_uid=uids.uid(role),
        sop_class_uid=sop_class_uid,
        instance_number=1,
        modality=modality,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_id=source.get("PatientID"),
        patient_name=source.get("PatientName"),
        patient_birth_date=source.get("PatientBirthDate"),
        patient_sex=source.get("PatientSex"),
        accession_number=source.get("AccessionNumber"),
        study_id=source.get("StudyID"),
        study_date=source.get("StudyDate"),
        study_time=source.get("StudyTime"),
        referring_physician_name=source.get("ReferringPhysicianName"),
        series_description=spec.series_description[:64],
        manufacturer_model_name=spec.name,
        # highdicom annotates a 1-tuple; a list is what pydicom writes as multi-valued LO.
        software_versions=list(software_versions(spec)),  # type: ignore[arg-type]
        device_serial_number="0",
        content_date=created.date() if created else None,
        content_time=created.time() if created else None,
    )
    instance.ContributingEquipmentSequence = [contributing_equipment(spec, uids)]
    return instance
