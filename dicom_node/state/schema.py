"""Tables of the state database (SQLAlchemy 2 declarative).

The state DB and the spool are the truth (DESIGN.md promise 2); Redis only
carries messages. Only :mod:`dicom_node` writes these tables.

Every change here needs a migration in ``migrations/versions`` (a test compares
the migrated schema with these models, on SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Association",
    "Base",
    "Export",
    "ExportState",
    "Instance",
    "DeidUid",
    "Job",
    "JobEvent",
    "JobState",
    "RoutingVerdict",
    "Notification",
    "NotificationState",
    "Rejection",
    "Series",
    "Study",
    "StudyState",
    "WebSession",
    "utcnow",
]


def utcnow() -> datetime.datetime:
    """Naive UTC now, the one clock every row uses."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class StudyState(StrEnum):
    """Whether a study is still arriving or has been routed."""

    ARRIVING = "ARRIVING"
    COMPLETE = "COMPLETE"


class JobState(StrEnum):
    """Life of a job (DESIGN.md): QUEUED → RUNNING → EXPORTING → DONE, or SKIPPED / FAILED."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    EXPORTING = "EXPORTING"
    DONE = "DONE"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"


#: States a job never leaves on its own.
TERMINAL_JOB_STATES = frozenset({JobState.DONE, JobState.SKIPPED, JobState.FAILED})


class ExportState(StrEnum):
    """Life of one object's delivery to one destination."""

    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    #: Never sent: a newer job over a changed input set replaced its job first.
    SUPERSEDED = "SUPERSEDED"


class NotificationState(StrEnum):
    """Life of one notification to one channel (the notification outbox)."""

    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"


class Base(DeclarativeBase):
    """Declarative base of the state DB."""


class Study(Base):
    """A study as received: when it started and stopped arriving."""

    __tablename__ = "studies"

    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=StudyState.ARRIVING)
    first_received: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    last_received: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    # Set when the sender's association is released and the source completes early.
    complete_after: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    # Shown to logged-in admins only; never logged.
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    # Retention: when the received instances were removed, and how many bytes that freed.
    purged_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)
    purged_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (Index("ix_studies_state", "state"),)


class Series(Base):
    """A series and the header attributes the routing rules look at."""

    __tablename__ = "series"

    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    attributes: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)


class Instance(Base):
    """One stored instance: where its bytes are and how they arrived."""

    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    series_uid: Mapped[str] = mapped_column(ForeignKey("series.series_uid"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    # 64-bit (migration 0002): PostgreSQL's integer stops at 2 GiB.
    size: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    association_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Retention removed the file; the row stays for the history and the counters.
    purged_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)


class Association(Base):
    """The association log: who sent what, when, and what failed."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str] = mapped_column(String(16), default="open")


class Job(Base):
    """A (study, series, pipeline) job over one exact set of input instances."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    pipeline: Mapped[str] = mapped_column(String(64))
    pipeline_version: Mapped[str] = mapped_column(String(32))
    # SHA-256 of the sorted input SOP Instance UIDs: a changed input set is a new job.
    input_hash: Mapped[str] = mapped_column(String(64))
    inputs: Mapped[list[str]] = mapped_column(JSON)
    queue: Mapped[str] = mapped_column(String(16), default="cpu")
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dispatched_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    measurements: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # Retention removed the result objects (the manifest stays).
    results_purged_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (UniqueConstraint("series_uid", "pipeline", "pipeline_version", "input_hash"),)


class JobEvent(Base):
    """One state change of a job, so the dashboard can show where the time went."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    detail: Mapped[str] = mapped_column(Text, default="")


class Export(Base):
    """Delivery of one result object to one destination, retried with backoff."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=ExportState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)

    __table_args__ = (UniqueConstraint("job_id", "destination", "sop_instance_uid"),)


class RoutingVerdict(Base):
    """Why one series was or was not selected by one pipeline, at the study's last routing.

    Written in the transaction that completes the study; a study routed again
    (late instances re-opened it) replaces its rows. ``rules`` holds every
    rule's evaluation (:meth:`dicom_node.routing_reasons.SeriesVerdict.rules_json`),
    with the values seen: like the series attributes it comes from, it is shown
    to logged-in users according to their role and never logged.
    """

    __tablename__ = "routing_verdicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    pipeline: Mapped[str] = mapped_column(String(64))
    pipeline_version: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    new_job: Mapped[bool] = mapped_column(Boolean, default=False)
    routed_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    rules: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)


class Notification(Base):
    """One notification (webhook or e-mail) of a job's event: the durable outbox."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    event: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(80))
    payload: Mapped[dict[str, object]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=NotificationState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)


class DeidUid(Base):
    """A de-identified UID and the original it replaced, encrypted (Fernet), per destination.

    The original is never stored in clear: ``original_digest`` (an HMAC keyed
    like the pseudonyms) finds a row without decrypting, and only an admin's
    look-up in the dashboard decrypts ``original``.
    """

    __tablename__ = "deid_uids"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    destination: Mapped[str] = mapped_column(String(64))
    pseudonym: Mapped[str] = mapped_column(String(64), index=True)
    original_digest: Mapped[str] = mapped_column(String(64))
    original: Mapped[str] = mapped_column(Text)
    study_tag: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("destination", "original_digest"),)


class Rejection(Base):
    """A delivered result withdrawn by an IOCM rejection note (:mod:`dicom_node.withdrawal`).

    Both ends are export rows: the withdrawn object's delivery (SENT) and the
    delivery of the note that withdraws it, to the same destination.
    """

    __tablename__ = "rejections"

    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id"), primary_key=True)
    note_export_id: Mapped[int] = mapped_column(ForeignKey("exports.id"), index=True)
    # The job whose complete result replaced the withdrawn one.
    superseded_by: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


class WebSession(Base):
    """A dashboard login, kept on the server so that it can be ended there.

    The cookie carries a random token; only its SHA-256 is stored, so reading
    this table does not give anyone a working cookie.
    """

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    # SHA-256 of the user's password hash at login: a new password ends the session.
    credential: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime.datetime] = mapped_column(DateTime)
