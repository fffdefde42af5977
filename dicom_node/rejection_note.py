"""Write an IHE IOCM rejection note: a Key Object Selection document that withdraws results.

IHE Imaging Object Change Management (RAD TF-1 Vol. 1, IOCM; RAD TF-2 RAD-66)
withdraws instances from an archive by sending it a Key Object Selection
document (PS3.3 A.35.4, TID 2010) whose Document Title is a rejection code of
CID 7010 (the same codes make up CID 7031 "Reason for Removal from Operational
Use"), and which references exactly the rejected instances, in its content
tree and in its Current Requested Procedure Evidence Sequence. The note sits in
the rejected instances' study, in a series of its own.

The node withdraws a result when a newer job over a different input set of
the same series supersedes it (a study first received in part, then in full).
The title is (113001, DCM, "Rejected for Quality Reasons"): the withdrawn
result describes the right patient and the right series, but was computed from
an incomplete input, so it is of insufficient quality and has been replaced.
"Rejected for Patient Safety Reasons" (113037) is for objects that could harm a
patient if used (a wrong laterality, a wrong patient), which archives hide
from every user and may delete at once; "Incorrect Modality Worklist Entry"
(113038) is for objects filed under the wrong order. Neither fits, and a
quality rejection lets the archive keep the old result for quality review.

Like every writer of results, this one returns a dataset and chooses no UID. It
lives on the node's side (the node decides when a result is withdrawn, and sends
the note), so it imports highdicom alone, not the workers' writers.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import highdicom as hd
from pydicom.dataset import Dataset

__all__ = ["MANUFACTURER", "REJECTION_SERIES_NUMBER", "RejectionTitle", "write_rejection_note"]

#: Manufacturer of every object the node writes (as :data:`pipelines.writers.seg.MANUFACTURER`;
#: a test keeps the two equal).
MANUFACTURER = "dicom-node"
#: Series Number of the rejection notes' series (after the results, 9001 to 9007).
REJECTION_SERIES_NUMBER = 9008


class RejectionTitle(Enum):
    """The Document Titles of CID 7010 that reject instances (IOCM)."""

    QUALITY = hd.sr.CodedConcept("113001", "DCM", "Rejected for Quality Reasons")
    PATIENT_SAFETY = hd.sr.CodedConcept("113037", "DCM", "Rejected for Patient Safety Reasons")
    WORKLIST_ENTRY = hd.sr.CodedConcept("113038", "DCM", "Incorrect Modality Worklist Entry")
    RETENTION_EXPIRED = hd.sr.CodedConcept("113039", "DCM", "Data Retention Policy Expired")


def write_rejection_note(
    rejected: Sequence[Dataset],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    title: RejectionTitle = RejectionTitle.QUALITY,
    description: str | None = None,
) -> hd.ko.KeyObjectSelectionDocument:
    """Build a rejection note that references exactly ``rejected``.

    Parameters
    ----------
    rejected : Sequence[pydicom.dataset.Dataset]
        The instances to withdraw (headers suffice), all of one study. Patient
        and study attributes of the note are copied from the first.
    series_instance_uid : str
        Series Instance UID of the note.
    sop_instance_uid : str
        SOP Instance UID of the note.
    instance_number : int
        Instance Number of the note within its series.
    title : RejectionTitle
        Why the instances are rejected.
    description : str or None
        Key Object Description (113012, DCM): a short text for the archive's
        operators; no patient information.

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument
        The note, Explicit VR Little Endian.

    Raises
    ------
    ValueError
        If ``rejected`` is empty, or its instances belong to more than one study.
    """
    if not rejected:
        raise ValueError("a rejection note must reference at least one instance")
    studies = {str(ds.StudyInstanceUID) for ds in rejected}
    if len(studies) != 1:
        raise ValueError(f"rejected instances span {len(studies)} studies; a note covers one")
    content = hd.ko.KeyObjectSelection(
        document_title=title.value, referenced_objects=rejected, description=description
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=rejected,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=REJECTION_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
    )
