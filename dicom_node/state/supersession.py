"""Superseded results: which jobs a newer one replaces, and what must be withdrawn where.

A job is (series, pipeline, exact input set). When a study grows after its
jobs ran (it was first received in part, then in full), routing creates a new
job over the larger input set; the older jobs of the same series and pipeline
are then **superseded** (by the newest of them, for display). Nothing is
stored for that: it follows from the ``jobs`` rows. What happens:

1. At once, in the transaction that creates the new job
   (:func:`supersede_older`): an older job still under way is SKIPPED with the
   reason, and its undelivered exports are marked SUPERSEDED, never sent.
2. Once the new job's results are all delivered to a destination
   (:func:`withdrawals_for`), each older job's objects that destination
   accepted are withdrawn by one IHE IOCM rejection note (written by
   :mod:`dicom_node.withdrawal`). The note's delivery is an export row of the
   older job; table ``rejections`` links each withdrawn export row to it
   (:func:`record_note`), so an object is withdrawn once.

The archive is never left without a result: the old one is withdrawn only
after the new one arrived there. Only :mod:`dicom_node` writes these rows.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, Select, and_, func, select, update
from sqlalchemy.orm import Session, aliased

from dicom_node.state.schema import (
    Export,
    ExportState,
    Job,
    JobEvent,
    JobState,
    Rejection,
    utcnow,
)

if TYPE_CHECKING:  # db.py calls supersede_older inside its transaction
    from dicom_node.state.db import StateDB

__all__ = [
    "NoteView",
    "Withdrawal",
    "jobs_with_superseded_elders",
    "notes_of",
    "record_note",
    "retry_failed_notes",
    "supersede_older",
    "superseded_by",
    "withdrawals_for",
]

#: States of a job that is still working towards delivering its results.
_UNDER_WAY = (JobState.QUEUED, JobState.RUNNING, JobState.EXPORTING)


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """What one destination holds of one superseded job: one rejection note's worth."""

    job_id: int
    superseded_by: int
    destination: str
    study_uid: str
    export_ids: tuple[int, ...]
    paths: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NoteView:
    """A rejection note of a job, and its delivery to one destination."""

    destination: str
    sop_instance_uid: str
    superseded_by: int
    rejected: int
    state: ExportState
    attempts: int
    last_error: str
    sent_at: datetime.datetime | None


def _elders(job: Job) -> ColumnElement[bool]:
    """Condition: a job of ``job``'s series and pipeline, older, over another input set."""
    return and_(
        Job.series_uid == job.series_uid,
        Job.pipeline == job.pipeline,
        Job.id < job.id,
        Job.input_hash != job.input_hash,
    )


def _note_ids() -> Select[tuple[int]]:
    return select(Rejection.note_export_id)


def supersede_older(s: Session, job: Job) -> list[int]:
    """Stop what older jobs of ``job``'s series and pipeline still had under way.

    Called in the transaction that creates ``job`` (flushed, so it has an ID).

    Parameters
    ----------
    s : sqlalchemy.orm.Session
        The open transaction.
    job : Job
        The new job.

    Returns
    -------
    list[int]
        IDs of the older jobs it supersedes.
    """
    older = s.scalars(select(Job).where(_elders(job)).order_by(Job.id)).all()
    reason = f"superseded by job {job.id}: the series' input set changed"
    now = utcnow()
    for old in older:
        if JobState(old.state) in _UNDER_WAY:
            old.state = JobState.SKIPPED
            old.reason = reason
            old.updated_at = now
            s.add(JobEvent(job_id=old.id, state=JobState.SKIPPED, at=now, detail=reason))
        # Undelivered results are never sent; rejection notes still pending are.
        s.execute(
            update(Export)
            .where(Export.job_id == old.id)
            .where(Export.state == ExportState.PENDING)
            .where(Export.id.not_in(_note_ids()))
            .values(state=ExportState.SUPERSEDED, last_error=f"not sent: {reason}")
        )
    return [old.id for old in older]


def withdrawals_for(state: StateDB, job_id: int) -> list[Withdrawal]:
    """What must be withdrawn now that ``job_id`` delivered results.

    For each destination that accepted every result object of the job, the
    objects older jobs of its series and pipeline (over other input sets)
    delivered there and that no note has withdrawn yet.

    Parameters
    ----------
    state : StateDB
        The state DB.
    job_id : int
        A job whose exports may have settled.

    Returns
    -------
    list[Withdrawal]
        One per (older job, destination); empty when nothing is due.
    """
    with state.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return []
        own = s.execute(
            select(Export.destination, Export.state)
            .where(Export.job_id == job_id)
            .where(Export.id.not_in(_note_ids()))
        ).all()
        by_destination: dict[str, list[str]] = defaultdict(list)
        for destination, export_state in own:
            by_destination[destination].append(export_state)
        delivered = sorted(
            d for d, states in by_destination.items() if all(x == ExportState.SENT for x in states)
        )
        if not delivered:
            return []
        rows = s.execute(
            select(
                Export.id, Export.job_id, Export.destination, Export.path, Export.sop_instance_uid
            )
            .join(Job, Job.id == Export.job_id)
            .where(_elders(job))
            .where(Export.destination.in_(delivered))
            .where(Export.state == ExportState.SENT)
            .where(Export.id.not_in(select(Rejection.export_id)))
            .where(Export.id.not_in(_note_ids()))
            .order_by(Export.job_id, Export.destination, Export.id)
        ).all()
        study_uid = job.study_uid
    groups: dict[tuple[int, str], list[tuple[int, str, str]]] = defaultdict(list)
    for export_id, old_id, destination, path, sop_uid in rows:
        groups[(old_id, destination)].append((export_id, path, sop_uid))
    return [
        Withdrawal(
            job_id=old_id,
            superseded_by=job_id,
            destination=destination,
            study_uid=study_uid,
            export_ids=tuple(e for e, _, _ in items),
            paths=tuple(p for _, p, _ in items),
            sop_instance_uids=tuple(u for _, _, u in items),
        )
        for (old_id, destination), items in groups.items()
    ]


def record_note(state: StateDB, withdrawal: Withdrawal, path: str, sop_instance_uid: str) -> int:
    """Queue a written rejection note for delivery and mark its objects withdrawn.

    One transaction: the note's export row (PENDING, on the superseded job) and
    one ``rejections`` row per withdrawn object. Writing the same note again
    (after a crash between the file and this commit) reuses its export row.

    Parameters
    ----------
    state : StateDB
        The state DB.
    withdrawal : Withdrawal
        What the note withdraws.
    path : str
        The note's spool-relative path.
    sop_instance_uid : str
        The note's SOP Instance UID.

    Returns
    -------
    int
        The ID of the note's export row.
    """
    with state.session() as s:
        note_id = s.scalar(
            select(Export.id)
            .where(Export.job_id == withdrawal.job_id)
            .where(Export.destination == withdrawal.destination)
            .where(Export.sop_instance_uid == sop_instance_uid)
        )
        if note_id is None:
            note = Export(
                job_id=withdrawal.job_id,
                destination=withdrawal.destination,
                path=path,
                sop_instance_uid=sop_instance_uid,
            )
            s.add(note)
            s.flush()
            note_id = note.id
        for export_id in withdrawal.export_ids:
            s.add(
                Rejection(
                    export_id=export_id,
                    note_export_id=note_id,
                    superseded_by=withdrawal.superseded_by,
                )
            )
        return int(note_id)


def jobs_with_superseded_elders(state: StateDB) -> list[int]:
    """Jobs that supersede an older one: where to look for withdrawals after a restart."""
    older = aliased(Job)
    with state.read_engine.connect() as conn:
        ids = conn.execute(
            select(Job.id)
            .join(
                older,
                and_(
                    older.series_uid == Job.series_uid,
                    older.pipeline == Job.pipeline,
                    older.id < Job.id,
                    older.input_hash != Job.input_hash,
                ),
            )
            .distinct()
            .order_by(Job.id)
        ).scalars()
        return list(ids)


def superseded_by(state: StateDB, job_ids: Iterable[int]) -> dict[int, int]:
    """The newest job that supersedes each of ``job_ids`` (absent when none does).

    Parameters
    ----------
    state : StateDB
        The state DB.
    job_ids : Iterable[int]
        Jobs to look up.

    Returns
    -------
    dict[int, int]
        Job ID to the ID of the newest job of its series and pipeline over
        another input set.
    """
    wanted = list(job_ids)
    if not wanted:
        return {}
    newer = aliased(Job)
    with state.read_engine.connect() as conn:
        rows = conn.execute(
            select(Job.id, func.max(newer.id))
            .join(
                newer,
                and_(
                    newer.series_uid == Job.series_uid,
                    newer.pipeline == Job.pipeline,
                    newer.id > Job.id,
                    newer.input_hash != Job.input_hash,
                ),
            )
            .where(Job.id.in_(wanted))
            .group_by(Job.id)
        ).all()
    return {int(job_id): int(newest) for job_id, newest in rows}


def notes_of(state: StateDB, job_id: int) -> list[NoteView]:
    """The rejection notes that withdraw a job's results, with their deliveries."""
    with state.read_engine.connect() as conn:
        rows = conn.execute(
            select(
                Export.destination,
                Export.sop_instance_uid,
                func.max(Rejection.superseded_by),
                func.count(Rejection.export_id),
                Export.state,
                Export.attempts,
                Export.last_error,
                Export.sent_at,
            )
            .join(Rejection, Rejection.note_export_id == Export.id)
            .where(Export.job_id == job_id)
            .group_by(Export.id)
            .order_by(Export.id)
        ).all()
    return [
        NoteView(
            destination=destination,
            sop_instance_uid=sop_uid,
            superseded_by=int(by),
            rejected=int(count),
            state=ExportState(export_state),
            attempts=attempts,
            last_error=last_error,
            sent_at=sent_at,
        )
        for destination, sop_uid, by, count, export_state, attempts, last_error, sent_at in rows
    ]


def retry_failed_notes(state: StateDB, job_id: int) -> int:
    """Give a job's FAILED rejection notes a fresh budget; its results stay as they are.

    Returns
    -------
    int
        How many notes will be sent again.
    """
    with state.session() as s:
        result = s.execute(
            update(Export)
            .where(Export.job_id == job_id)
            .where(Export.state == ExportState.FAILED)
            .where(Export.id.in_(_note_ids()))
            .values(state=ExportState.PENDING, attempts=0, next_attempt_at=utcnow())
        )
        return int(getattr(result, "rowcount", 0))
