"""What leaves the server: the ``*Public`` response models of the REST API.

They carry study tags and UIDs, never a patient's name or ID. Accession
numbers are shown to admins, and masked for viewers unless
``web.show_patient_names`` is set (the state DB holds nothing more personal).
Times are UTC.
"""

from __future__ import annotations

import datetime

from pydantic import BaseModel, ConfigDict, Field

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
    "SessionInfoPublic",
    "SessionPublic",
    "StagePublic",
    "StudyPagePublic",
    "StudyPublic",
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
