"""Withdrawing superseded results from the archives that hold them (IHE IOCM).

A study interrupted by a node crash and sent again in full gives a second job
over the complete series; its result supersedes the one computed from the
part (:mod:`dicom_node.state.supersession` decides which jobs, and when).
The node plays the IOCM *Change Requester*: once the new result is delivered
to a destination, it sends that destination a rejection note, a Key Object
Selection document titled (113001, DCM, "Rejected for Quality Reasons") that
references exactly the objects of the old result the destination accepted
(:func:`dicom_node.rejection_note.write_rejection_note`; why that title is
explained there). The note travels like any result: an export row, retried
with backoff, shown on the old job's page.

The note's UIDs are derived from what it rejects, so writing it again after a
crash gives the same object, and the archive keeps one. An archive that does
not implement IOCM (Orthanc 1.10) stores the note as an ordinary KO object and
keeps the old result visible.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_node.errors import NodeError
from dicom_node.phi import study_tag
from dicom_node.spool import Spool
from dicom_node.state import StateDB
from dicom_node.state.supersession import Withdrawal, record_note, withdrawals_for
from pipelines.uids import derive_uid

__all__ = ["NoteNotWritten", "note_uids", "withdraw_superseded", "write_note"]

logger = logging.getLogger(__name__)


class NoteNotWritten(NodeError):
    """A rejection note could not be written (an old result unreadable or gone from the spool)."""


#: Key Object Description of every note; no patient information.
DESCRIPTION = "Superseded by a result computed over the complete series"


def note_uids(withdrawal: Withdrawal) -> tuple[str, str]:
    """Series and SOP Instance UID of a withdrawal's note.

    One series per study holds the node's notes; a note's UID depends only on
    the set of instances it rejects (two destinations that hold the same
    objects get the same note).

    Parameters
    ----------
    withdrawal : Withdrawal
        What the note rejects.

    Returns
    -------
    tuple[str, str]
        (Series Instance UID, SOP Instance UID).
    """
    series = derive_uid("iocm-rejection-notes", withdrawal.study_uid)
    instance = derive_uid("iocm-rejection-note", *sorted(withdrawal.sop_instance_uids))
    return series, instance


def write_note(spool: Spool, withdrawal: Withdrawal) -> tuple[str, str]:
    """Write the rejection note of a withdrawal into the superseded job's folder.

    Parameters
    ----------
    spool : Spool
        The spool holding the old results (read for their headers) and the note.
    withdrawal : Withdrawal
        What to reject.

    Returns
    -------
    tuple[str, str]
        The note's spool-relative path and its SOP Instance UID.

    Raises
    ------
    NoteNotWritten
        If an old result cannot be read (gone from the spool, not DICOM, lacking
        the patient and study attributes a note copies) or the note cannot be
        written. The reason names the cause, never a value.
    """
    # highdicom takes seconds to import: the node pays it only when a note is due.
    from dicom_node.rejection_note import write_rejection_note

    series_uid, sop_uid = note_uids(withdrawal)
    target = spool.job_dir(withdrawal.job_id) / "rejections" / f"{sop_uid}.dcm"
    try:
        headers = [
            dcmread(spool.resolve(path), stop_before_pixels=True) for path in withdrawal.paths
        ]
        note = write_rejection_note(
            headers,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            instance_number=withdrawal.job_id,
            description=DESCRIPTION,
        )
        buffer = io.BytesIO()
        note.save_as(buffer, enforce_file_format=True)
        target.parent.mkdir(exist_ok=True)
        spool.write_atomic(target, buffer.getvalue(), check_space=False)
    except (OSError, InvalidDicomError, AttributeError, ValueError) as exc:
        # The exception's text may quote attribute values: only its kind is kept.
        raise NoteNotWritten(
            f"rejection note for job {withdrawal.job_id} to {withdrawal.destination} not "
            f"written ({type(exc).__name__})"
        ) from exc
    return spool.relative(target), sop_uid


def withdraw_superseded(state: StateDB, spool: Spool, job_ids: Iterable[int]) -> int:
    """Write and queue the rejection notes that jobs' deliveries made due.

    Parameters
    ----------
    state : StateDB
        The state DB.
    spool : Spool
        The spool.
    job_ids : Iterable[int]
        Jobs whose exports may have settled.

    Returns
    -------
    int
        How many notes were queued.

    Raises
    ------
    NoteNotWritten
        If a note could not be written; those of the jobs before were queued.
    """
    queued = 0
    for job_id in job_ids:
        for withdrawal in withdrawals_for(state, job_id):
            path, sop_uid = write_note(spool, withdrawal)
            record_note(state, withdrawal, path, sop_uid)
            queued += 1
            logger.info(
                "study=%s job %d superseded by job %d: rejection note for %d objects to %s",
                study_tag(withdrawal.study_uid),
                withdrawal.job_id,
                withdrawal.superseded_by,
                len(withdrawal.export_ids),
                withdrawal.destination,
            )
    return queued
