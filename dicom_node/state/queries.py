"""What the dashboard, the API, ``dicom-node status`` and ``/metrics`` read from the state DB.

Reads run on an engine of their own with deferred transactions (``BEGIN``, and
``PRAGMA query_only`` on SQLite), so a page view never takes the write lock the
receiver and the supervisor queue on. The supervisor owns the writes; the only
write here is an admin's cancel, one short transaction through
:meth:`StateDB.session` that logs a job event (retry is :mod:`dicom_node.retry`).

Rows leave this module as frozen dataclasses. Times are naive UTC, as stored.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.engine import CursorResult

from dicom_node.routing_reasons import Outcome, SeriesVerdict
from dicom_node.state.db import JobView, StateDB, job_view
from dicom_node.state.schema import (
    Association,
    Export,
    ExportState,
    Instance,
    Job,
    JobEvent,
    JobState,
    RoutingVerdict,
    Series,
    Study,
    StudyState,
    utcnow,
)

__all__ = [
    "CANCELLED_PREFIX",
    "RETRYABLE_STATES",
    "ActivityCounts",
    "AssociationRow",
    "ExportRow",
    "JobDetail",
    "JobEventRow",
    "RoutingRow",
    "StageDuration",
    "StateQueries",
    "StudyRow",
    "Totals",
    "UnroutedStudy",
]

#: Reason of a job an admin cancelled: "cancelled by <user>". Cancelled jobs are
#: SKIPPED (a terminal state every part of the node already handles), and this
#: prefix tells them apart from jobs a pipeline skipped.
CANCELLED_PREFIX = "cancelled by "

#: States an admin may retry from.
RETRYABLE_STATES = frozenset({JobState.FAILED, JobState.SKIPPED})

#: States an admin may cancel from.
CANCELLABLE_STATES = frozenset(
    {JobState.QUEUED, JobState.RUNNING, JobState.EXPORTING, JobState.FAILED}
)


@dataclass(frozen=True, slots=True)
class ActivityCounts:
    """What arrived in a time window."""

    instances: int
    bytes: int
    studies: int


@dataclass(frozen=True, slots=True)
class Totals:
    """Counters since the database was created (they survive restarts)."""

    instances: int
    bytes: int
    studies: int


@dataclass(frozen=True, slots=True)
class StudyRow:
    """A study with its series' modalities and its jobs."""

    study_uid: str
    calling_ae: str
    state: str
    first_received: datetime.datetime
    last_received: datetime.datetime
    instance_count: int
    accession_number: str
    study_date: str
    modalities: tuple[str, ...]
    jobs: tuple[JobView, ...]


@dataclass(frozen=True, slots=True)
class RoutingRow:
    """A routing verdict with the facts of its series, for the study page.

    ``series_description`` is free text: shown to those who see identities only.
    """

    verdict: SeriesVerdict
    routed_at: datetime.datetime
    series_number: str
    series_description: str
    modality: str
    instances: int


@dataclass(frozen=True, slots=True)
class UnroutedStudy:
    """A complete study whose last routing left it without any job, and why."""

    study_uid: str
    routed_at: datetime.datetime
    instance_count: int
    rows: tuple[RoutingRow, ...]


@dataclass(frozen=True, slots=True)
class JobEventRow:
    """One state change of a job."""

    state: JobState
    at: datetime.datetime
    detail: str


@dataclass(frozen=True, slots=True)
class ExportRow:
    """Delivery of one result object to one destination."""

    destination: str
    path: str
    sop_instance_uid: str
    state: ExportState
    attempts: int
    last_error: str
    sent_at: datetime.datetime | None


@dataclass(frozen=True, slots=True)
class JobDetail:
    """Everything the job page shows from the database."""

    job: JobView
    inputs: tuple[str, ...]
    task_id: str | None
    dispatched_at: datetime.datetime | None
    measurements: dict[str, float]
    study_first_received: datetime.datetime | None
    events: tuple[JobEventRow, ...]
    exports: tuple[ExportRow, ...]


@dataclass(frozen=True, slots=True)
class AssociationRow:
    """One line of the association log."""

    id: int
    calling_ae: str
    called_ae: str
    address: str
    started_at: datetime.datetime
    ended_at: datetime.datetime | None
    instances: int
    bytes: int
    failures: int
    outcome: str


@dataclass(frozen=True, slots=True)
class StageDuration:
    """Seconds a finished job stage took, for the duration histograms."""

    pipeline: str
    stage: str
    seconds: float


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class StateQueries:
    """Read-only queries over the state DB, plus an admin's cancel.

    Parameters
    ----------
    state : StateDB
        The node's state DB: reads go through its read-only engine
        (:attr:`StateDB.read_engine`), the few writes through :meth:`StateDB.session`.
    """

    def __init__(self, state: StateDB) -> None:
        self.state = state
        self._engine = state.read_engine

    def ping(self) -> bool:
        """Whether the database answers a trivial query."""
        with self._engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Job).limit(1)).scalar() is not None

    # -- overview ----------------------------------------------------------------

    def activity(self, since: datetime.datetime) -> ActivityCounts:
        """Instances, bytes and distinct studies received since a time.

        Parameters
        ----------
        since : datetime.datetime
            Naive UTC.

        Returns
        -------
        ActivityCounts
            What arrived since then.
        """
        with self._engine.connect() as conn:
            count, size, studies = conn.execute(
                select(
                    func.count(Instance.sop_instance_uid),
                    func.coalesce(func.sum(Instance.size), 0),
                    func.count(func.distinct(Instance.study_uid)),
                ).where(Instance.received_at >= since)
            ).one()
        return ActivityCounts(instances=int(count), bytes=int(size), studies=int(studies))

    def totals(self) -> Totals:
        """Instances, bytes and studies ever received (monotonic: rows are never deleted)."""
        with self._engine.connect() as conn:
            count, size = conn.execute(
                select(
                    func.count(Instance.sop_instance_uid), func.coalesce(func.sum(Instance.size), 0)
                )
            ).one()
            studies = conn.execute(select(func.count(Study.study_uid))).scalar_one()
        return Totals(instances=int(count), bytes=int(size), studies=int(studies))

    def job_state_counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zero or not)."""
        counts = dict.fromkeys(JobState, 0)
        with self._engine.connect() as conn:
            for state, count in conn.execute(
                select(Job.state, func.count(Job.id)).group_by(Job.state)
            ):
                counts[JobState(state)] = int(count)
        return counts

    def failures_since(self, since: datetime.datetime) -> int:
        """Jobs that ended FAILED since a time."""
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count(Job.id))
                    .where(Job.state == JobState.FAILED)
                    .where(Job.updated_at >= since)
                ).scalar_one()
            )

    # -- studies -----------------------------------------------------------------

    def search_studies(
        self,
        *,
        text: str = "",
        modality: str = "",
        calling_ae: str = "",
        date_from: str = "",
        date_to: str = "",
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[int, list[StudyRow]]:
        """Studies matching a search, newest first.

        Parameters
        ----------
        text : str
            Part of the accession number or calling AE title (case-insensitive).
        modality : str
            A modality one of the study's series has (exact, e.g. ``CT``).
        calling_ae : str
            The sender's AE title (exact).
        date_from, date_to : str
            Study Date bounds as ``YYYYMMDD``, inclusive; empty for open.
        limit, offset : int
            The page.

        Returns
        -------
        tuple[int, list[StudyRow]]
            The number of matches and the requested page.
        """
        query: Select[Any] = select(Study)
        if text:
            pattern = _like(text.strip().upper())
            query = query.where(
                or_(
                    func.upper(Study.accession_number).like(pattern, escape="\\"),
                    func.upper(Study.calling_ae).like(pattern, escape="\\"),
                )
            )
        if modality:
            query = query.where(
                Study.study_uid.in_(
                    select(Series.study_uid).where(Series.modality == modality.strip().upper())
                )
            )
        if calling_ae:
            query = query.where(Study.calling_ae == calling_ae.strip())
        if date_from:
            query = query.where(Study.study_date >= date_from)
        if date_to:
            query = query.where(Study.study_date <= date_to)
        with self._engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            studies = conn.execute(
                query.order_by(Study.last_received.desc()).limit(limit).offset(offset)
            ).all()
            uids = [row.study_uid for row in studies]
            modalities, jobs = self._children(conn, uids)
        rows = [
            StudyRow(
                study_uid=row.study_uid,
                calling_ae=row.calling_ae,
                state=row.state,
                first_received=row.first_received,
                last_received=row.last_received,
                instance_count=row.instance_count,
                accession_number=row.accession_number,
                study_date=row.study_date,
                modalities=tuple(sorted(modalities.get(row.study_uid, ()))),
                jobs=tuple(jobs.get(row.study_uid, ())),
            )
            for row in studies
        ]
        return int(total), rows

    def study(self, study_uid: str) -> StudyRow | None:
        """One study with its modalities and jobs, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(select(Study).where(Study.study_uid == study_uid)).first()
            if row is None:
                return None
            modalities, jobs = self._children(conn, [study_uid])
        return StudyRow(
            study_uid=row.study_uid,
            calling_ae=row.calling_ae,
            state=row.state,
            first_received=row.first_received,
            last_received=row.last_received,
            instance_count=row.instance_count,
            accession_number=row.accession_number,
            study_date=row.study_date,
            modalities=tuple(sorted(modalities.get(study_uid, ()))),
            jobs=tuple(jobs.get(study_uid, ())),
        )

    def first_instance_path(self, study_uid: str) -> str | None:
        """Spool-relative path of one instance of a study (to read its header)."""
        with self._engine.connect() as conn:
            return conn.execute(
                select(Instance.path).where(Instance.study_uid == study_uid).limit(1)
            ).scalar()

    def routing(self, study_uid: str) -> list[RoutingRow]:
        """Why each series of a study was or was not selected by each pipeline.

        Parameters
        ----------
        study_uid : str
            The study.

        Returns
        -------
        list[RoutingRow]
            The verdicts of the study's last routing, by series then pipeline;
            empty while it has not been routed.
        """
        with self._engine.connect() as conn:
            return self._routing_rows(conn, [study_uid]).get(study_uid, [])

    def studies_without_jobs(
        self, since: datetime.datetime, *, limit: int = 20
    ) -> list[UnroutedStudy]:
        """Complete studies routed since a time that have no job at all, newest first.

        Parameters
        ----------
        since : datetime.datetime
            Naive UTC.
        limit : int
            At most this many studies.

        Returns
        -------
        list[UnroutedStudy]
            Each with the verdicts that say why.
        """
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(Study.study_uid, Study.instance_count, func.max(RoutingVerdict.routed_at))
                .join(RoutingVerdict, RoutingVerdict.study_uid == Study.study_uid)
                .where(Study.state == StudyState.COMPLETE)
                .where(RoutingVerdict.routed_at >= since)
                .where(~Study.study_uid.in_(select(Job.study_uid)))
                .group_by(Study.study_uid, Study.instance_count)
                .order_by(func.max(RoutingVerdict.routed_at).desc())
                .limit(limit)
            ).all()
            verdicts = self._routing_rows(conn, [uid for uid, _, _ in rows])
        return [
            UnroutedStudy(
                study_uid=uid,
                routed_at=routed_at,
                instance_count=int(count),
                rows=tuple(verdicts.get(uid, ())),
            )
            for uid, count, routed_at in rows
        ]

    @staticmethod
    def _routing_rows(conn: Any, study_uids: list[str]) -> dict[str, list[RoutingRow]]:
        out: dict[str, list[RoutingRow]] = defaultdict(list)
        if not study_uids:
            return out
        series = {
            row.series_uid: row
            for row in conn.execute(
                select(Series.series_uid, Series.modality, Series.attributes).where(
                    Series.study_uid.in_(study_uids)
                )
            )
        }
        counts = dict(
            conn.execute(
                select(Instance.series_uid, func.count(Instance.sop_instance_uid))
                .where(Instance.study_uid.in_(study_uids))
                .group_by(Instance.series_uid)
            ).all()
        )
        verdicts = conn.execute(
            select(RoutingVerdict)
            .where(RoutingVerdict.study_uid.in_(study_uids))
            .order_by(RoutingVerdict.study_uid, RoutingVerdict.id)
        ).all()
        for row in verdicts:
            facts = series.get(row.series_uid)
            attributes = dict(facts.attributes or {}) if facts is not None else {}
            out[row.study_uid].append(
                RoutingRow(
                    verdict=SeriesVerdict(
                        series_uid=row.series_uid,
                        pipeline=row.pipeline,
                        pipeline_version=row.pipeline_version,
                        outcome=Outcome(row.outcome),
                        rule=row.rule or "",
                        rules=SeriesVerdict.rules_from_json(row.rules),
                        job_id=row.job_id,
                        new_job=bool(row.new_job),
                    ),
                    routed_at=row.routed_at,
                    series_number=str(attributes.get("SeriesNumber", "")),
                    series_description=str(attributes.get("SeriesDescription", "")),
                    modality=facts.modality if facts is not None else "",
                    instances=int(counts.get(row.series_uid, 0)),
                )
            )
        return out

    @staticmethod
    def _children(
        conn: Any, study_uids: list[str]
    ) -> tuple[dict[str, set[str]], dict[str, list[JobView]]]:
        modalities: dict[str, set[str]] = defaultdict(set)
        jobs: dict[str, list[JobView]] = defaultdict(list)
        if not study_uids:
            return modalities, jobs
        for uid, modality in conn.execute(
            select(Series.study_uid, Series.modality).where(Series.study_uid.in_(study_uids))
        ):
            if modality:
                modalities[uid].add(modality)
        for job in conn.execute(
            select(Job).where(Job.study_uid.in_(study_uids)).order_by(Job.id)
        ).all():
            jobs[job.study_uid].append(job_view(job))
        return modalities, jobs

    # -- jobs --------------------------------------------------------------------

    def jobs(
        self,
        *,
        states: Iterable[JobState] = (),
        since: datetime.datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[JobView]]:
        """Jobs, most recently changed first.

        Parameters
        ----------
        states : Iterable[JobState]
            Only these states; empty for all.
        since : datetime.datetime or None
            Only jobs changed since then (naive UTC).
        limit, offset : int
            The page.

        Returns
        -------
        tuple[int, list[JobView]]
            The number of matches and the requested page.
        """
        query: Select[Any] = select(Job)
        wanted = [str(s) for s in states]
        if wanted:
            query = query.where(Job.state.in_(wanted))
        if since is not None:
            query = query.where(Job.updated_at >= since)
        with self._engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            rows = conn.execute(
                query.order_by(Job.updated_at.desc(), Job.id.desc()).limit(limit).offset(offset)
            ).all()
        return int(total), [job_view(row) for row in rows]

    def job_detail(self, job_id: int) -> JobDetail | None:
        """A job with its events, exports and its study's arrival, or None."""
        with self._engine.connect() as conn:
            job = conn.execute(select(Job).where(Job.id == job_id)).first()
            if job is None:
                return None
            events = conn.execute(
                select(JobEvent.state, JobEvent.at, JobEvent.detail)
                .where(JobEvent.job_id == job_id)
                .order_by(JobEvent.at, JobEvent.id)
            ).all()
            exports = conn.execute(
                select(Export).where(Export.job_id == job_id).order_by(Export.id)
            ).all()
            first_received = conn.execute(
                select(Study.first_received).where(Study.study_uid == job.study_uid)
            ).scalar()
        return JobDetail(
            job=job_view(job),
            inputs=tuple(job.inputs or ()),
            task_id=job.task_id,
            dispatched_at=job.dispatched_at,
            measurements=dict(job.measurements or {}),
            study_first_received=first_received,
            events=tuple(JobEventRow(JobState(s), at, detail or "") for s, at, detail in events),
            exports=tuple(
                ExportRow(
                    destination=row.destination,
                    path=row.path,
                    sop_instance_uid=row.sop_instance_uid,
                    state=ExportState(row.state),
                    attempts=row.attempts,
                    last_error=row.last_error,
                    sent_at=row.sent_at,
                )
                for row in exports
            ),
        )

    # -- associations ---------------------------------------------------------------

    def associations(
        self, *, limit: int = 100, offset: int = 0
    ) -> tuple[int, list[AssociationRow]]:
        """The association log, newest first."""
        with self._engine.connect() as conn:
            total = conn.execute(select(func.count(Association.id))).scalar_one()
            rows = conn.execute(
                select(Association)
                .order_by(Association.started_at.desc(), Association.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
        return int(total), [
            AssociationRow(
                id=row.id,
                calling_ae=row.calling_ae,
                called_ae=row.called_ae,
                address=row.address,
                started_at=row.started_at,
                ended_at=row.ended_at,
                instances=row.instances,
                bytes=row.bytes,
                failures=row.failures,
                outcome=row.outcome,
            )
            for row in rows
        ]

    # -- metrics -----------------------------------------------------------------------

    def associations_by_outcome(self) -> dict[str, int]:
        """How many associations ended each way (``open`` while one runs)."""
        with self._engine.connect() as conn:
            return {
                str(outcome): int(count)
                for outcome, count in conn.execute(
                    select(Association.outcome, func.count(Association.id)).group_by(
                        Association.outcome
                    )
                )
            }

    def store_failures(self) -> int:
        """C-STORE requests answered with a failure status, over closed associations."""
        with self._engine.connect() as conn:
            return int(
                conn.execute(select(func.coalesce(func.sum(Association.failures), 0))).scalar_one()
            )

    def exports_in_state(self, state: ExportState) -> dict[str, int]:
        """Per destination, export rows in ``state``.

        PENDING is the backlog still to send; FAILED, the objects given up on
        (out of attempts, or cancelled) until an admin retries them.
        """
        with self._engine.connect() as conn:
            return {
                str(destination): int(count)
                for destination, count in conn.execute(
                    select(Export.destination, func.count(Export.id))
                    .where(Export.state == state)
                    .group_by(Export.destination)
                )
            }

    def failure_events(self) -> list[tuple[str, str]]:
        """(pipeline, reason) of every FAILED job event ever (events are never deleted).

        A retried job that fails again counts again, so counters built on these
        only go up.
        """
        with self._engine.connect() as conn:
            return [
                (str(pipeline), str(detail or ""))
                for pipeline, detail in conn.execute(
                    select(Job.pipeline, JobEvent.detail)
                    .join(Job, Job.id == JobEvent.job_id)
                    .where(JobEvent.state == JobState.FAILED)
                )
            ]

    def stage_durations(self) -> list[StageDuration]:
        """Seconds each finished stage of each job took, from the job events.

        Stages are ``waiting`` (the study's first instance to the job's
        creation: completeness and routing), the time spent in each state
        (``QUEUED``, ``RUNNING``, ``EXPORTING``) until the next event, and
        ``total`` (job creation to DONE). A stage still under way is left out.

        Returns
        -------
        list[StageDuration]
            One entry per finished stage.
        """
        with self._engine.connect() as conn:
            jobs = {
                job_id: (pipeline, created, first)
                for job_id, pipeline, created, first in conn.execute(
                    select(Job.id, Job.pipeline, Job.created_at, Study.first_received).join(
                        Study, Study.study_uid == Job.study_uid, isouter=True
                    )
                )
            }
            events = conn.execute(
                select(JobEvent.job_id, JobEvent.state, JobEvent.at).order_by(
                    JobEvent.job_id, JobEvent.at, JobEvent.id
                )
            ).all()
        out: list[StageDuration] = []
        for pipeline, created, first in jobs.values():
            if first is not None:
                out.append(StageDuration(pipeline, "waiting", (created - first).total_seconds()))
        by_job: dict[int, list[tuple[str, datetime.datetime]]] = defaultdict(list)
        for job_id, state, at in events:
            by_job[job_id].append((state, at))
        for job_id, rows in by_job.items():
            pipeline = jobs.get(job_id, ("?", None, None))[0]
            for (state, at), (_next_state, next_at) in zip(rows, rows[1:], strict=False):
                if state in (JobState.QUEUED, JobState.RUNNING, JobState.EXPORTING):
                    out.append(StageDuration(pipeline, state, (next_at - at).total_seconds()))
            if rows[-1][0] == JobState.DONE:
                out.append(
                    StageDuration(pipeline, "total", (rows[-1][1] - rows[0][1]).total_seconds())
                )
        return out

    # -- an admin's writes ------------------------------------------------------------

    def cancel_job(self, job_id: int, user: str) -> bool:
        """Cancel a job: SKIPPED with the reason "cancelled by <user>".

        Exports still pending are given up (FAILED, "cancelled"), so nothing
        more is sent for it. A worker already running the job finishes, but
        its result is ignored: the supervisor only collects QUEUED and RUNNING
        jobs.

        Parameters
        ----------
        job_id : int
            The job.
        user : str
            Who asked.

        Returns
        -------
        bool
            False when the job does not exist or has already ended (DONE, SKIPPED).
        """
        now = utcnow()
        reason = f"{CANCELLED_PREFIX}{user}"
        with self.state.session() as s:
            result = cast(
                CursorResult[Any],
                s.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .where(Job.state.in_([str(x) for x in CANCELLABLE_STATES]))
                    .values(state=JobState.SKIPPED, reason=reason, updated_at=now)
                ),
            )
            if not result.rowcount:
                return False
            s.execute(
                update(Export)
                .where(Export.job_id == job_id)
                .where(Export.state == ExportState.PENDING)
                .values(state=ExportState.FAILED, last_error="cancelled")
            )
            s.add(JobEvent(job_id=job_id, state=JobState.SKIPPED, at=now, detail=reason))
        return True
