"""The state database: every write the node makes, as short transactions.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``, so a
committed row survives a power cut, and every transaction starts with
``BEGIN IMMEDIATE``, so concurrent writers (SCP threads, the supervisor loop,
several SCP processes) queue on the busy timeout instead of failing on a lock
upgrade. PostgreSQL (``postgresql+psycopg://``) runs the same statements: the
test suite runs the state DB's tests and the end-to-end flow on both. The
schema is Alembic's (:mod:`dicom_node.state.migrate`), never ``create_all``.

Rows leave this module as frozen dataclasses, never as live ORM objects.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.routing_reasons import Outcome, SeriesVerdict
from dicom_node.state import migrate
from dicom_node.state.schema import (
    TERMINAL_JOB_STATES,
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
from dicom_node.state.supersession import supersede_older

__all__ = [
    "ExportView",
    "JobListener",
    "InstanceRecord",
    "JobView",
    "NewJob",
    "SeriesInputs",
    "StateDB",
    "input_hash",
    "job_view",
    "make_engine",
]


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the SCP knows about one instance it has just written to the spool."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    calling_ae: str
    association_id: int | None
    modality: str
    accession_number: str
    study_date: str
    series_attributes: dict[str, object]


@dataclass(frozen=True, slots=True)
class SeriesInputs:
    """A series of a complete study, as routing sees it."""

    study_uid: str
    series_uid: str
    modality: str
    attributes: dict[str, object]
    instance_uids: tuple[str, ...]
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job routing wants: a series, a pipeline and the rule that chose it."""

    series: SeriesInputs
    pipeline: str
    pipeline_version: str
    queue: str
    reason: str


@dataclass(frozen=True, slots=True)
class JobView:
    """A job row, detached from the database."""

    id: int
    study_uid: str
    series_uid: str
    pipeline: str
    pipeline_version: str
    inputs: tuple[str, ...]
    queue: str
    state: JobState
    reason: str
    attempts: int
    task_id: str | None
    dispatched_at: datetime.datetime | None
    measurements: dict[str, float]
    created_at: datetime.datetime
    updated_at: datetime.datetime


@dataclass(frozen=True, slots=True)
class ExportView:
    """An export row, detached from the database."""

    id: int
    job_id: int
    destination: str
    path: str
    sop_instance_uid: str
    state: ExportState
    attempts: int
    last_error: str


#: Called inside the transaction that moves a job to a new state (the
#: notification outbox adds its rows there, so a state change and its
#: notifications commit together).
JobListener = Callable[[Session, Job, JobState], None]


def input_hash(instance_uids: Iterable[str]) -> str:
    """Hash of a set of SOP Instance UIDs; order does not matter.

    Parameters
    ----------
    instance_uids : Iterable[str]
        The input instances of a job.

    Returns
    -------
    str
        64 hex digits.
    """
    return hashlib.sha256("\n".join(sorted(instance_uids)).encode("ascii")).hexdigest()


# The C-STORE hot path's statements, compiled once per dialect by SQLAlchemy.
_HAS_INSTANCE = text("SELECT 1 FROM instances WHERE sop_instance_uid = :uid AND purged_at IS NULL")
_UPSERT_STUDY = text(
    "INSERT INTO studies (study_uid, calling_ae, state, first_received, last_received,"
    " instance_count, accession_number, study_date)"
    " VALUES (:study, :ae, :arriving, :now, :now, 1, :accession, :study_date)"
    " ON CONFLICT (study_uid) DO UPDATE SET last_received = :now, state = :arriving,"
    " complete_after = NULL, calling_ae = :ae, instance_count = studies.instance_count + 1,"
    " purged_at = NULL"
).bindparams(bindparam("now", type_=DateTime))
_INSERT_SERIES = text(
    "INSERT INTO series (series_uid, study_uid, modality, attributes)"
    " VALUES (:series, :study, :modality, :attributes) ON CONFLICT (series_uid) DO NOTHING"
).bindparams(bindparam("attributes", type_=JSON))
_INSERT_INSTANCE = text(
    "INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid,"
    " transfer_syntax_uid, path, size, received_at, association_id)"
    " VALUES (:sop, :series, :study, :sop_class, :ts, :path, :size, :now, :assoc)"
    # An instance retention removed is stored again when it is sent again.
    " ON CONFLICT (sop_instance_uid) DO UPDATE SET path = excluded.path, size = excluded.size,"
    " received_at = excluded.received_at, association_id = excluded.association_id,"
    " purged_at = NULL WHERE instances.purged_at IS NOT NULL"
).bindparams(bindparam("now", type_=DateTime))


def job_view(job: Any) -> JobView:
    """A job, from an ORM object or a Core row of the ``jobs`` table, detached."""
    return JobView(
        id=job.id,
        study_uid=job.study_uid,
        series_uid=job.series_uid,
        pipeline=job.pipeline,
        pipeline_version=job.pipeline_version,
        inputs=tuple(job.inputs),
        queue=job.queue,
        state=JobState(job.state),
        reason=job.reason,
        attempts=job.attempts,
        task_id=job.task_id,
        dispatched_at=job.dispatched_at,
        measurements=dict(job.measurements or {}),
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


def _export_view(row: Export) -> ExportView:
    return ExportView(
        id=row.id,
        job_id=row.job_id,
        destination=row.destination,
        path=row.path,
        sop_instance_uid=row.sop_instance_uid,
        state=ExportState(row.state),
        attempts=row.attempts,
        last_error=row.last_error,
    )


def _configure_sqlite(engine: Engine, *, immediate: bool) -> None:
    # pysqlite's own transaction handling must be off so BEGIN IMMEDIATE can be issued.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not immediate:
            # The read engine can never write, even by mistake.
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str, *, writer: bool) -> Engine:
    """An engine on the state DB, set up for its dialect.

    Parameters
    ----------
    url : str
        SQLAlchemy URL.
    writer : bool
        On SQLite, True begins every transaction with ``BEGIN IMMEDIATE`` (writers
        queue on the lock), False makes the connection read-only.

    Returns
    -------
    sqlalchemy.engine.Engine
        The engine; dispose of it when done.
    """
    is_sqlite = url.startswith("sqlite")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30} if is_sqlite else {},
        pool_pre_ping=not is_sqlite,
    )
    if is_sqlite:
        _configure_sqlite(engine, immediate=writer)
    return engine


class StateDB:
    """Access to the state database.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, e.g. ``sqlite:///var/spool/state.db`` or
        ``postgresql+psycopg://user@host/db``.
    upgrade : bool
        Bring the schema to this version's head first (under a lock, see
        :mod:`dicom_node.state.migrate`); False refuses an older schema instead.

    Raises
    ------
    SchemaOutOfDate
        If ``upgrade`` is False and the schema is not at the head revision.
    """

    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, writer=True)
        #: Reads that must not queue behind writers (C-STORE duplicate checks, the
        #: dashboard) use this engine: deferred BEGIN, and read-only on SQLite.
        self.read_engine = make_engine(url, writer=False)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._job_listeners: list[JobListener] = []
        if upgrade:
            migrate.upgrade(self.engine)
        else:
            self._require_head()

    def _require_head(self) -> None:
        current, head = migrate.current_revision(self.engine), migrate.head_revision()
        if current != head:
            self.close()
            raise migrate.SchemaOutOfDate(
                f"the state DB's schema is at revision {current or 'none'}, this node needs "
                f"{head}: run 'dicom-node db upgrade'"
            )

    def add_job_listener(self, listener: JobListener) -> None:
        """Call ``listener`` in the transaction of every job state change (:data:`JobListener`)."""
        self._job_listeners.append(listener)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()
        self.read_engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    # -- ingest ---------------------------------------------------------------

    def has_instance(self, sop_instance_uid: str) -> bool:
        """Whether an instance is already stored (a plain read, no write lock)."""
        with self.read_engine.connect() as conn:
            row = conn.execute(_HAS_INSTANCE, {"uid": sop_instance_uid}).first()
        return row is not None

    def record_instance(self, rec: InstanceRecord) -> bool:
        """Commit the rows of a stored instance: study, series, instance.

        This is on the C-STORE hot path, so it runs three prepared SQL statements
        (``INSERT ... ON CONFLICT``, understood by SQLite and PostgreSQL) in one
        transaction instead of ORM work. A study that was complete re-opens (a
        late instance); its jobs are re-evaluated when it completes again.

        Parameters
        ----------
        rec : InstanceRecord
            The instance, already fsync'd in the spool.

        Returns
        -------
        bool
            True if the instance is new, False if it was already recorded.
        """
        now = utcnow()
        params = {
            "study": rec.study_uid,
            "series": rec.series_uid,
            "sop": rec.sop_instance_uid,
            "sop_class": rec.sop_class_uid,
            "ts": rec.transfer_syntax_uid,
            "path": rec.path,
            "size": rec.size,
            "assoc": rec.association_id,
            "ae": rec.calling_ae,
            "now": now,
            "arriving": str(StudyState.ARRIVING),
            "accession": rec.accession_number[:16],
            "study_date": rec.study_date[:8],
            "modality": rec.modality,
            "attributes": rec.series_attributes,
        }
        # Parents first (foreign keys); the instance insert last tells a duplicate,
        # and a duplicate rolls back the study counter with everything else.
        with self.engine.connect() as conn, conn.begin() as transaction:
            conn.execute(_UPSERT_STUDY, params)
            conn.execute(_INSERT_SERIES, params)
            if not conn.execute(_INSERT_INSTANCE, params).rowcount:
                transaction.rollback()
                return False
        return True

    def open_association(self, calling_ae: str, called_ae: str, address: str) -> int:
        """Start an association log row and return its ID."""
        with self.session() as s:
            row = Association(calling_ae=calling_ae, called_ae=called_ae, address=address)
            s.add(row)
            s.flush()
            return row.id

    def close_association(
        self, assoc_id: int, *, instances: int, size: int, failures: int, outcome: str
    ) -> None:
        """Finish an association log row."""
        with self.session() as s:
            s.execute(
                update(Association)
                .where(Association.id == assoc_id)
                .values(
                    ended_at=utcnow(),
                    instances=instances,
                    bytes=size,
                    failures=failures,
                    outcome=outcome,
                )
            )

    def complete_early(self, study_uids: Iterable[str], at: datetime.datetime) -> None:
        """Let studies complete at ``at`` instead of after their quiet period."""
        with self.session() as s:
            s.execute(
                update(Study)
                .where(Study.study_uid.in_(list(study_uids)))
                .where(Study.state == StudyState.ARRIVING)
                .values(complete_after=at)
            )

    # -- stability --------------------------------------------------------------

    def studies_due(self, now: datetime.datetime, quiet_for: Callable[[str], float]) -> list[str]:
        """Return arriving studies that have been quiet long enough.

        Parameters
        ----------
        now : datetime.datetime
            Naive UTC.
        quiet_for : Callable[[str], float]
            Quiet period in seconds for a calling AE title.

        Returns
        -------
        list[str]
            Study Instance UIDs, oldest first.
        """
        with self.session() as s:
            rows = s.execute(
                select(Study.study_uid, Study.calling_ae, Study.last_received, Study.complete_after)
                .where(Study.state == StudyState.ARRIVING)
                .order_by(Study.last_received)
            ).all()
        due = []
        for uid, calling_ae, last, early in rows:
            quiet = datetime.timedelta(seconds=quiet_for(calling_ae))
            if last + quiet <= now or (early is not None and early <= now):
                due.append(uid)
        return due

    def series_inputs(self, study_uid: str) -> tuple[int, list[SeriesInputs]]:
        """Return a study's instance count and every series with its instances.

        Parameters
        ----------
        study_uid : str
            The study.

        Returns
        -------
        tuple[int, list[SeriesInputs]]
            The count (for :meth:`mark_study_complete`) and the series.
        """
        with self.session() as s:
            study = s.get(Study, study_uid)
            count = study.instance_count if study else 0
            series_rows = s.scalars(
                select(Series).where(Series.study_uid == study_uid).order_by(Series.series_uid)
            ).all()
            out = []
            for row in series_rows:
                instances = s.execute(
                    select(Instance.sop_instance_uid, Instance.path)
                    .where(Instance.series_uid == row.series_uid)
                    .order_by(Instance.sop_instance_uid)
                ).all()
                out.append(
                    SeriesInputs(
                        study_uid=study_uid,
                        series_uid=row.series_uid,
                        modality=row.modality,
                        attributes=dict(row.attributes or {}),
                        instance_uids=tuple(uid for uid, _ in instances),
                        paths=tuple(path for _, path in instances),
                    )
                )
        return count, out

    # -- jobs -------------------------------------------------------------------

    def complete_study(
        self,
        study_uid: str,
        seen_count: int,
        jobs: Iterable[NewJob],
        verdicts: Iterable[SeriesVerdict] = (),
    ) -> list[int]:
        """Mark a study complete, create its jobs and store why, in one transaction.

        Nothing happens if an instance arrived since the study was read (its
        count changed): the study stays ARRIVING and is routed again later, so
        no job ever runs on a partial input set. A job whose (series, pipeline,
        version, input set) already exists is not created again. The routing
        verdicts replace those of the study's previous routing; a selected
        verdict is linked to its job, new or existing. A new job
        supersedes older jobs of its series and pipeline over other input sets
        (:func:`dicom_node.state.supersession.supersede_older`).

        Parameters
        ----------
        study_uid : str
            The study.
        seen_count : int
            Its instance count when routing read it (:meth:`series_inputs`).
        jobs : Iterable[NewJob]
            The jobs routing chose.
        verdicts : Iterable[SeriesVerdict]
            Routing's verdict per (series, pipeline).

        Returns
        -------
        list[int]
            IDs of the jobs created; empty when the study changed or all existed.
        """
        created: list[int] = []
        job_of: dict[tuple[str, str], tuple[int, bool]] = {}
        with self.session() as s:
            result = s.execute(
                update(Study)
                .where(Study.study_uid == study_uid)
                .where(Study.instance_count == seen_count)
                .where(Study.state == StudyState.ARRIVING)
                .values(state=StudyState.COMPLETE, complete_after=None)
            )
            if not getattr(result, "rowcount", 0):
                return []
            for new in jobs:
                digest = input_hash(new.series.instance_uids)
                key = (new.series.series_uid, new.pipeline)
                existing = s.scalar(
                    select(Job.id)
                    .where(Job.series_uid == new.series.series_uid)
                    .where(Job.pipeline == new.pipeline)
                    .where(Job.pipeline_version == new.pipeline_version)
                    .where(Job.input_hash == digest)
                    .limit(1)
                )
                if existing is not None:
                    job_of[key] = (existing, False)
                    continue
                job = Job(
                    study_uid=study_uid,
                    series_uid=new.series.series_uid,
                    pipeline=new.pipeline,
                    pipeline_version=new.pipeline_version,
                    input_hash=digest,
                    inputs=list(new.series.paths),
                    queue=new.queue,
                    state=JobState.QUEUED,
                    reason="",
                )
                s.add(job)
                s.flush()
                s.add(JobEvent(job_id=job.id, state=JobState.QUEUED, detail=new.reason))
                supersede_older(s, job)
                created.append(job.id)
                job_of[key] = (job.id, True)
            s.execute(delete(RoutingVerdict).where(RoutingVerdict.study_uid == study_uid))
            now = utcnow()
            for verdict in verdicts:
                job_id, is_new = job_of.get((verdict.series_uid, verdict.pipeline), (None, False))
                if verdict.outcome is not Outcome.SELECTED:
                    job_id, is_new = None, False
                s.add(
                    RoutingVerdict(
                        study_uid=study_uid,
                        series_uid=verdict.series_uid,
                        pipeline=verdict.pipeline,
                        pipeline_version=verdict.pipeline_version,
                        outcome=verdict.outcome.value,
                        rule=verdict.rule,
                        job_id=job_id,
                        new_job=is_new,
                        routed_at=now,
                        rules=verdict.rules_json(),
                    )
                )
        return created

    def set_job_state(
        self,
        job_id: int,
        state: JobState,
        *,
        reason: str = "",
        measurements: dict[str, float] | None = None,
    ) -> None:
        """Move a job to a state and log the change as an event row.

        A terminal job (DONE, SKIPPED, FAILED) is only moved by an explicit
        retry, which goes through :meth:`requeue_job`.
        """
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise ValueError(f"job {job_id} does not exist")
            if job.state == state or JobState(job.state) in TERMINAL_JOB_STATES:
                return
            job.state = state
            job.reason = reason
            job.updated_at = utcnow()
            if measurements is not None:
                job.measurements = measurements
            s.add(JobEvent(job_id=job_id, state=state, detail=reason))
            for listener in self._job_listeners:
                listener(s, job, state)

    def record_dispatch(self, job_id: int, task_id: str) -> None:
        """Note that a job was handed to the broker (the outbox is drained)."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise ValueError(f"job {job_id} does not exist")
            job.task_id = task_id
            job.attempts += 1
            job.dispatched_at = utcnow()

    def retry_exports(self, job_id: int, detail: str) -> int:
        """Give a job's FAILED exports a fresh budget and move the job back to EXPORTING.

        Rows already SENT stay sent: a destination never receives an object twice.

        Returns
        -------
        int
            How many export rows were reset.
        """
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise ValueError(f"job {job_id} does not exist")
            result = s.execute(
                update(Export)
                .where(Export.job_id == job_id)
                .where(Export.state == ExportState.FAILED)
                .values(state=ExportState.PENDING, attempts=0, next_attempt_at=utcnow())
            )
            job.state = JobState.EXPORTING
            job.reason = ""
            job.updated_at = utcnow()
            s.add(JobEvent(job_id=job_id, state=JobState.EXPORTING, detail=detail))
            return int(getattr(result, "rowcount", 0))

    def requeue_job(self, job_id: int, detail: str) -> None:
        """Run a job again from the start: QUEUED, not sent, attempts reset."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise ValueError(f"job {job_id} does not exist")
            job.state = JobState.QUEUED
            job.reason = ""
            job.attempts = 0
            job.dispatched_at = None
            job.updated_at = utcnow()
            s.add(JobEvent(job_id=job_id, state=JobState.QUEUED, detail=detail))

    def mark_undispatched(self, job_id: int, detail: str) -> None:
        """Put a job back in the outbox (QUEUED, not sent) so the next pass sends it."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise ValueError(f"job {job_id} does not exist")
            job.state = JobState.QUEUED
            job.dispatched_at = None
            job.updated_at = utcnow()
            s.add(JobEvent(job_id=job_id, state=JobState.QUEUED, detail=detail))

    def jobs(self, states: Iterable[JobState]) -> list[JobView]:
        """Return jobs in the given states, oldest first."""
        with self.session() as s:
            rows = s.scalars(
                select(Job).where(Job.state.in_([str(x) for x in states])).order_by(Job.id)
            ).all()
            return [job_view(job) for job in rows]

    def removed_by_retention(self, job_id: int) -> tuple[bool, bool]:
        """Whether retention removed a job's input instances, and its results."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return False, False
            inputs = s.scalar(
                select(func.count(Instance.sop_instance_uid))
                .where(Instance.path.in_(list(job.inputs)))
                .where(Instance.purged_at.is_not(None))
            )
            return bool(inputs), job.results_purged_at is not None

    def job(self, job_id: int) -> JobView | None:
        """Return one job, or None."""
        with self.session() as s:
            job = s.get(Job, job_id)
            return job_view(job) if job else None

    # -- exports ----------------------------------------------------------------

    def create_exports(
        self,
        job_id: int,
        deliveries: Iterable[tuple[str, str, str]],
        measurements: dict[str, float],
    ) -> None:
        """Create PENDING export rows and move the job to EXPORTING, in one transaction.

        Parameters
        ----------
        job_id : int
            The job.
        deliveries : Iterable[tuple[str, str, str]]
            (destination name, spool-relative path, SOP Instance UID) of each
            object a destination is to receive.
        measurements : dict[str, float]
            The job's measurements from its manifest.
        """
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise ValueError(f"job {job_id} does not exist")
            for dest, path, sop_uid in deliveries:
                s.add(Export(job_id=job_id, destination=dest, path=path, sop_instance_uid=sop_uid))
            job.state = JobState.EXPORTING
            job.measurements = measurements
            job.updated_at = utcnow()
            s.add(JobEvent(job_id=job_id, state=JobState.EXPORTING, detail=""))

    def due_exports(self, now: datetime.datetime) -> list[ExportView]:
        """Return PENDING exports whose next attempt is due, grouped by job."""
        with self.session() as s:
            rows = s.scalars(
                select(Export)
                .where(Export.state == ExportState.PENDING)
                .where(Export.next_attempt_at <= now)
                .order_by(Export.job_id, Export.id)
            ).all()
            return [_export_view(row) for row in rows]

    def exports_of(self, job_id: int) -> list[ExportView]:
        """Return every export row of a job."""
        with self.session() as s:
            rows = s.scalars(select(Export).where(Export.job_id == job_id).order_by(Export.id))
            return [_export_view(row) for row in rows.all()]

    def mark_export_sent(self, export_id: int) -> None:
        """Record a successful delivery."""
        with self.session() as s:
            row = s.get(Export, export_id)
            if row is not None:
                row.state = ExportState.SENT
                row.attempts += 1
                row.sent_at = utcnow()
                row.last_error = ""

    def mark_export_failed(
        self, export_id: int, error: str, next_attempt_at: datetime.datetime | None
    ) -> None:
        """Record a failed attempt; ``next_attempt_at=None`` makes it terminal."""
        with self.session() as s:
            row = s.get(Export, export_id)
            if row is not None:
                row.attempts += 1
                row.last_error = error
                if next_attempt_at is None:
                    row.state = ExportState.FAILED
                else:
                    row.next_attempt_at = next_attempt_at
