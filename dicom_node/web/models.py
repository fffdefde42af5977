"""What leaves the server: the ``*Public`` response models of the REST API.

They carry study tags and UIDs, never a patient's name or ID. Accession
numbers are shown to admins, and masked for viewers unless
``web.show_patient_names`` is set (the state DB holds nothing more personal).
Times are UTC.
"""

from __future__ import annotations

import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dicom_node.routing_reasons import Outcome, Presence
from dicom_node.settings import WebRole
from dicom_node.state.schema import ExportState, JobState

__all__ = [
    "ActivityPublic",
    "AssociationPagePublic",
    "AssociationPublic",
    "DiskPublic",
    "ExportPublic",
    "JobDetailPublic",
    "JobPagePublic",
    "JobPublic",
    "LogLinePublic",
    "LoginRequest",
    "ManifestPublic",
    "OutputPublic",
    "OverviewPublic",
    "QueuePublic",
    "RejectionNotePublic",
    "RevokePublic",
    "RevokeRequest",
    "RoutingConditionPublic",
    "RoutingRulePublic",
    "RoutingVerdictPublic",
    "SessionInfoPublic",
    "SessionPublic",
    "StagePublic",
    "StudyDetailPublic",
    "StudyPagePublic",
    "StudyPublic",
    "UnroutedStudyPublic",
    "WorkerPublic",
]


class _Public(BaseModel):
    model_config = ConfigDict(frozen=True)


class ActivityPublic(_Public):
    """What arrived in a time window."""

    instances: int
    bytes: int
    studies: int


class QueuePublic(_Public):
    """A Celery queue and the messages waiting in it (None: Redis did not answer)."""

    name: str
    depth: int | None


class WorkerPublic(_Public):
    """A worker that answered the broadcast."""

    hostname: str
    device: str
    processes: int | None


class DiskPublic(_Public):
    """The spool's disk against its free-space watermark (``scp.min_free_bytes``)."""

    total_bytes: int
    used_bytes: int
    free_bytes: int
    min_free_bytes: int
    below_watermark: bool


class UnroutedStudyPublic(_Public):
    """A complete study that got no job, with why for each series and pipeline."""

    study_uid: str
    study_tag: str
    routed_at: datetime.datetime
    instance_count: int
    series_count: int
    reasons: list[str] = Field(
        description="One line per (series, pipeline); values of free-text attributes hidden."
    )


class OverviewPublic(_Public):
    """The dashboard's first page, and ``dicom-node status``."""

    generated_at: datetime.datetime
    last_hour: ActivityPublic
    last_day: ActivityPublic
    broker_ok: bool
    queues: list[QueuePublic]
    jobs_by_state: dict[JobState, int]
    jobs_running: int
    workers_ok: bool
    workers: list[WorkerPublic]
    failures_24h: int
    disk: DiskPublic
    unrouted_24h: list[UnroutedStudyPublic] = Field(
        default=[], description="Studies completed in the last 24 h without any job, and why."
    )


class JobPublic(_Public):
    """A job in a list."""

    id: int
    study_uid: str
    study_tag: str
    series_uid: str
    pipeline: str
    pipeline_version: str
    queue: str
    state: JobState
    reason: str
    cancelled: bool = Field(description="SKIPPED because an admin cancelled it.")
    attempts: int
    created_at: datetime.datetime
    updated_at: datetime.datetime
    superseded_by: int | None = Field(
        default=None,
        description="The newest job of the same series and pipeline over another input set "
        "(the study changed): this job's results are replaced, and withdrawn from the "
        "archives that have the new ones.",
    )


class JobPagePublic(_Public):
    """A page of jobs."""

    total: int
    items: list[JobPublic]


class StudyPublic(_Public):
    """A study with its jobs."""

    study_uid: str
    study_tag: str
    calling_ae: str
    state: str
    accession_number: str
    study_date: str
    modalities: list[str]
    instance_count: int
    first_received: datetime.datetime
    last_received: datetime.datetime
    jobs: list[JobPublic]


class RoutingConditionPublic(_Public):
    """One condition of a rule, as evaluated on the series."""

    keyword: str
    expected: str = Field(description="The condition as configured.")
    holds: bool
    presence: Presence
    seen: str | None = Field(
        description="The value seen; None when absent, empty or hidden from this user."
    )
    hidden: bool = Field(description="A value was seen, but it is free text this user may not see.")
    text: str = Field(description="The condition's outcome in words, for this user.")


class RoutingRulePublic(_Public):
    """One rule of a pipeline, as evaluated on the series."""

    rule: str
    match: str
    holds: bool
    conditions: list[RoutingConditionPublic]


class RoutingVerdictPublic(_Public):
    """Why a series was or was not selected by a pipeline."""

    series_uid: str
    series_number: str
    series_description: str = Field(description="Masked unless the user sees identities.")
    modality: str
    instances: int
    pipeline: str
    pipeline_version: str
    outcome: Outcome
    rule: str = Field(description="The rule that matched; empty when none did.")
    job_id: int | None
    new_job: bool = Field(description="False: the same input set had run before.")
    why: str = Field(description="The verdict in one line, for this user.")
    rules: list[RoutingRulePublic]


class StudyDetailPublic(StudyPublic):
    """A study with its jobs and why each series got (or did not get) each pipeline."""

    routed_at: datetime.datetime | None = Field(description="Its last routing; None before.")
    routing: list[RoutingVerdictPublic]


class StudyPagePublic(_Public):
    """A page of studies."""

    total: int
    items: list[StudyPublic]


class StagePublic(_Public):
    """A stretch of a job's life: waiting for its study, or one state until the next."""

    state: str
    started_at: datetime.datetime
    ended_at: datetime.datetime | None
    seconds: float = Field(description="Time in this stage; up to now if it is under way.")
    detail: str


class ExportPublic(_Public):
    """Delivery of one result object to one destination."""

    destination: str
    sop_instance_uid: str
    state: ExportState
    attempts: int
    last_error: str
    sent_at: datetime.datetime | None


class RejectionNotePublic(_Public):
    """An IOCM rejection note that withdraws this job's results from one destination."""

    destination: str
    sop_instance_uid: str
    superseded_by: int = Field(description="The job whose result replaced the withdrawn one.")
    rejected: int = Field(description="How many objects the note withdraws there.")
    state: ExportState
    attempts: int
    last_error: str
    sent_at: datetime.datetime | None


class OutputPublic(_Public):
    """One object the worker wrote."""

    kind: str
    file: str
    sop_class_uid: str
    series_instance_uid: str
    sop_instance_uid: str


class ManifestPublic(_Public):
    """What the worker reported for one attempt."""

    attempt: str
    status: str
    reason: str
    worker: str
    timings_s: dict[str, float]


class LogLinePublic(_Public):
    """A line of the job's log, gathered from job events, the manifest and exports."""

    at: datetime.datetime | None
    source: str
    text: str


class JobDetailPublic(JobPublic):
    """Everything the job page shows."""

    task_id: str | None
    input_count: int
    measurements: dict[str, float]
    timeline: list[StagePublic]
    total_seconds: float
    outputs: list[OutputPublic]
    exports: list[ExportPublic]
    rejection_notes: list[RejectionNotePublic]
    manifest: ManifestPublic | None
    previous_attempts: list[ManifestPublic]
    log: list[LogLinePublic]
    has_seg: bool
    can_retry: bool
    can_cancel: bool


class AssociationPublic(_Public):
    """One line of the association log."""

    id: int
    calling_ae: str
    called_ae: str
    address: str
    started_at: datetime.datetime
    ended_at: datetime.datetime | None
    seconds: float | None
    instances: int
    bytes: int
    failures: int
    outcome: str


class AssociationPagePublic(_Public):
    """A page of the association log."""

    total: int
    items: list[AssociationPublic]


class LoginRequest(BaseModel):
    """Credentials for ``POST /api/session``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class SessionPublic(_Public):
    """Who is logged in, and the CSRF token every POST must carry."""

    name: str | None
    role: WebRole | None
    csrf_token: str


class AuditRecordPublic(_Public):
    """One audit record: the flat fields, and the whole PS3.15 A.5 record."""

    seq: int
    time: datetime.datetime
    event: str
    action: str = Field(description="EventActionCode: C, R, U, D or E.")
    outcome: str = Field(description="EventOutcomeIndicator: 0 success, 4, 8, 12 failures.")
    user: str
    study_tags: list[str]
    summary: str
    record: dict[str, Any]


class AuditPagePublic(_Public):
    """A page of the audit trail, newest first."""

    total: int | None = Field(description="Records in all; null when filtered.")
    items: list[AuditRecordPublic]


class UsageBucketPublic(_Public):
    """Spool bytes within an age range."""

    label: str
    instance_bytes: int
    result_bytes: int


class RetentionCandidatePublic(_Public):
    """Files the clean-up will remove."""

    kind: str = Field(description="instances (a study's) or results (a job's).")
    study_tag: str
    job_id: int | None
    calling_ae: str
    outcome: str
    due_at: datetime.datetime
    bytes: int


class RetentionPublic(_Public):
    """Disk use by age and what the next clean-up will free."""

    enabled: bool
    interval_s: float
    last_run: str | None
    next_run: str | None
    usage: list[UsageBucketPublic]
    due_now_bytes: int
    next_cleanup_bytes: int = Field(description="Due by the next scheduled run.")
    candidates: list[RetentionCandidatePublic]


class DeidLookupPublic(_Public):
    """A de-identified UID resolved to its original (admins only; audited)."""

    destination: str
    pseudonym: str
    original: str
    study_tag: str


class SessionInfoPublic(_Public):
    """An open dashboard session, as an admin sees it (no token)."""

    user: str
    address: str
    created_at: datetime.datetime
    last_seen_at: datetime.datetime
    expires_at: datetime.datetime


class RevokeRequest(BaseModel):
    """Whom ``POST /api/session/revoke`` logs out everywhere."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(
        default=None, max_length=64, description="A user name; none logs everyone out."
    )


class RevokePublic(_Public):
    """How many sessions ended."""

    revoked: int
