"""The dashboard's data: state DB rows, broker answers and manifests made into ``*Public`` models.

The pages and the REST API call the same functions here, so they always show
the same thing.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dicom_node.phi import study_tag
from dicom_node.routing_reasons import (
    Audience,
    condition_text,
    is_news,
    shows_value,
    verdict_text,
)
from dicom_node.settings import WebRole, WebUser
from dicom_node.state import JobView
from dicom_node.state.queries import (
    CANCELLABLE_STATES,
    CANCELLED_PREFIX,
    RETRYABLE_STATES,
    AssociationRow,
    JobDetail,
    RoutingRow,
    StateQueries,
    StudyRow,
    UnroutedStudy,
)
from dicom_node.state.schema import TERMINAL_JOB_STATES, ExportState, JobState, utcnow
from dicom_node.state.supersession import notes_of, superseded_by
from dicom_node.web.context import WebContext
from dicom_node.web.identity import mask
from dicom_node.web.models import (
    ActivityPublic,
    AssociationPagePublic,
    AssociationPublic,
    DiskPublic,
    ExportPublic,
    JobDetailPublic,
    JobPagePublic,
    JobPublic,
    LogLinePublic,
    ManifestPublic,
    OutputPublic,
    OverviewPublic,
    QueuePublic,
    RejectionNotePublic,
    RoutingConditionPublic,
    RoutingRulePublic,
    RoutingVerdictPublic,
    StagePublic,
    StudyDetailPublic,
    StudyPagePublic,
    StudyPublic,
    UnroutedStudyPublic,
    WorkerPublic,
)
from dicom_node.web.overlay import OverlayError, render_overlay
from dicom_node.web.probe import BrokerProbe
from pipelines.manifest import MANIFEST_NAME, JobManifest, read_manifest

__all__ = [
    "ATTEMPT_MANIFEST_GLOB",
    "associations",
    "build_overview",
    "config_public",
    "failures",
    "job_detail",
    "job_public",
    "jobs_public",
    "overlay_png",
    "overview",
    "sees_identities",
    "studies",
    "study",
]

#: Manifests of earlier attempts, set aside by a retry (:mod:`dicom_node.retry`).
ATTEMPT_MANIFEST_GLOB = "manifest.json.before-retry-*"

_HIDDEN = "********"
_SECRET_KEYS = frozenset({"session_secret", "metrics_token", "password_hash", "password"})


def _utc(value: datetime.datetime) -> datetime.datetime:
    """Stored times are naive UTC; responses say so."""
    return value.replace(tzinfo=datetime.UTC) if value.tzinfo is None else value


def _utc_or_none(value: datetime.datetime | None) -> datetime.datetime | None:
    return None if value is None else _utc(value)


def sees_identities(ctx: WebContext, user: WebUser) -> bool:
    """Whether this user sees patient names and accession numbers unmasked."""
    return user.role is WebRole.ADMIN or ctx.settings.web.show_patient_names


# -- overview -------------------------------------------------------------------------


def build_overview(
    queries: StateQueries, probe: BrokerProbe, spool_root: Path, min_free_bytes: int
) -> OverviewPublic:
    """The first page: arrivals, queues, jobs, workers, failures and disk.

    It needs no web application: ``dicom-node status`` calls it on the node machine.

    Parameters
    ----------
    queries : StateQueries
        Reads over the state DB.
    probe : BrokerProbe
        Queue depths and workers (cached for a few seconds).
    spool_root : pathlib.Path
        The spool, for its disk use.
    min_free_bytes : int
        The spool's free-space watermark (``scp.min_free_bytes``).

    Returns
    -------
    OverviewPublic
        A snapshot.
    """
    now = utcnow()
    hour = queries.activity(now - datetime.timedelta(hours=1))
    day = queries.activity(now - datetime.timedelta(days=1))
    counts = queries.job_state_counts()
    depths = probe.queue_depths()
    seen = probe.workers()
    usage = shutil.disk_usage(spool_root)
    return OverviewPublic(
        generated_at=_utc(now),
        last_hour=ActivityPublic(instances=hour.instances, bytes=hour.bytes, studies=hour.studies),
        last_day=ActivityPublic(instances=day.instances, bytes=day.bytes, studies=day.studies),
        broker_ok=depths.ok,
        queues=[
            QueuePublic(name=name, depth=depths.depths.get(name) if depths.ok else None)
            for name in probe.queues
        ],
        jobs_by_state=counts,
        jobs_running=counts[JobState.RUNNING],
        workers_ok=seen.ok,
        workers=[
            WorkerPublic(hostname=w.hostname, device=w.device, processes=w.processes)
            for w in seen.workers
        ],
        failures_24h=queries.failures_since(now - datetime.timedelta(hours=24)),
        disk=DiskPublic(
            total_bytes=usage.total,
            used_bytes=usage.used,
            free_bytes=usage.free,
            min_free_bytes=min_free_bytes,
            below_watermark=bool(min_free_bytes) and usage.free < min_free_bytes,
        ),
        unrouted_24h=[
            _unrouted_public(item)
            for item in queries.studies_without_jobs(now - datetime.timedelta(hours=24))
        ],
    )


def _series_label(row: RoutingRow) -> str:
    """A series named without free text: its number, modality and size."""
    number = f"series {row.series_number}" if row.series_number else "series (no number)"
    return f"{number} ({row.modality or '?'}, {row.instances} instances)"


def _unrouted_public(item: UnroutedStudy) -> UnroutedStudyPublic:
    """A study without jobs, told for any user: no free-text value in the reasons."""
    ordered = sorted((row for row in item.rows if is_news(row.verdict)), key=_routing_order)
    return UnroutedStudyPublic(
        study_uid=item.study_uid,
        study_tag=study_tag(item.study_uid),
        routed_at=_utc(item.routed_at),
        instance_count=item.instance_count,
        series_count=len({row.verdict.series_uid for row in item.rows}),
        reasons=[
            f"{_series_label(row)} {row.verdict.pipeline}: "
            f"{verdict_text(row.verdict, Audience.VIEWER)}"
            for row in ordered
        ],
    )


def overview(ctx: WebContext) -> OverviewPublic:
    """The overview of the application's node (see :func:`build_overview`)."""
    return build_overview(ctx.queries, ctx.probe, ctx.spool_root, ctx.settings.scp.min_free_bytes)


# -- studies and jobs -----------------------------------------------------------------


def job_public(row: JobView, superseded: int | None = None) -> JobPublic:
    """A job row as the API shows it; ``superseded`` is the job that replaced it."""
    return JobPublic(
        id=row.id,
        study_uid=row.study_uid,
        study_tag=study_tag(row.study_uid),
        series_uid=row.series_uid,
        pipeline=row.pipeline,
        pipeline_version=row.pipeline_version,
        queue=row.queue,
        state=row.state,
        reason=row.reason,
        cancelled=row.state is JobState.SKIPPED and row.reason.startswith(CANCELLED_PREFIX),
        attempts=row.attempts,
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
        superseded_by=superseded,
    )


def jobs_public(ctx: WebContext, rows: list[JobView]) -> list[JobPublic]:
    """Job rows as the API shows them, each with the job that superseded it, if any."""
    newer = superseded_by(ctx.state, [row.id for row in rows])
    return [job_public(row, newer.get(row.id)) for row in rows]


def _study_public(ctx: WebContext, row: StudyRow, unmasked: bool) -> StudyPublic:
    return StudyPublic(
        study_uid=row.study_uid,
        study_tag=study_tag(row.study_uid),
        calling_ae=row.calling_ae,
        state=row.state,
        accession_number=(
            row.accession_number if unmasked else mask(row.accession_number, initials=False)
        ),
        study_date=row.study_date,
        modalities=list(row.modalities),
        instance_count=row.instance_count,
        first_received=_utc(row.first_received),
        last_received=_utc(row.last_received),
        jobs=jobs_public(ctx, list(row.jobs)),
    )


def studies(
    ctx: WebContext,
    user: WebUser,
    *,
    text: str = "",
    modality: str = "",
    calling_ae: str = "",
    date_from: str = "",
    date_to: str = "",
    limit: int = 50,
    offset: int = 0,
) -> StudyPagePublic:
    """A page of the study search (see :meth:`StateQueries.search_studies`)."""
    total, rows = ctx.queries.search_studies(
        text=text,
        modality=modality,
        calling_ae=calling_ae,
        date_from=date_from,
        date_to=date_to,
        limit=limit,
        offset=offset,
    )
    unmasked = sees_identities(ctx, user)
    return StudyPagePublic(total=total, items=[_study_public(ctx, row, unmasked) for row in rows])


def study(ctx: WebContext, user: WebUser, study_uid: str) -> StudyDetailPublic | None:
    """One study with its jobs and why each series got each pipeline or not, or None.

    Values seen by routing are shown by the user's role
    (:mod:`dicom_node.routing_reasons`): free text, such as a Series
    Description, to those who see identities only.
    """
    row = ctx.queries.study(study_uid)
    if row is None:
        return None
    unmasked = sees_identities(ctx, user)
    audience = Audience.ADMIN if unmasked else Audience.VIEWER
    routing = sorted(ctx.queries.routing(study_uid), key=_routing_order)
    public = _study_public(ctx, row, unmasked)
    return StudyDetailPublic(
        **public.model_dump(),
        routed_at=_utc(routing[0].routed_at) if routing else None,
        routing=[_routing_public(item, audience) for item in routing],
    )


def _routing_order(row: RoutingRow) -> tuple[int, str, str, str]:
    number = row.series_number
    return (
        int(number) if number.lstrip("-").isdigit() else 1 << 31,
        row.verdict.series_uid,
        row.verdict.pipeline,
        row.verdict.pipeline_version,
    )


def _routing_public(row: RoutingRow, audience: Audience) -> RoutingVerdictPublic:
    verdict = row.verdict
    description = row.series_description
    return RoutingVerdictPublic(
        series_uid=verdict.series_uid,
        series_number=row.series_number,
        series_description=(
            description if audience is Audience.ADMIN else mask(description, initials=False)
        ),
        modality=row.modality,
        instances=row.instances,
        pipeline=verdict.pipeline,
        pipeline_version=verdict.pipeline_version,
        outcome=verdict.outcome,
        rule=verdict.rule,
        job_id=verdict.job_id,
        new_job=verdict.new_job,
        why=verdict_text(verdict, audience),
        rules=[
            RoutingRulePublic(
                rule=rule.rule,
                match=rule.match,
                holds=rule.holds,
                conditions=[
                    RoutingConditionPublic(
                        keyword=c.keyword,
                        expected=c.expected
                        if isinstance(c.expected, str)
                        else json.dumps(c.expected),
                        holds=c.holds,
                        presence=c.presence,
                        seen=(
                            _seen_text(c.seen)
                            if c.seen is not None and shows_value(c.keyword, audience)
                            else None
                        ),
                        hidden=c.seen is not None and not shows_value(c.keyword, audience),
                        text=condition_text(c, audience),
                    )
                    for c in rule.conditions
                ],
            )
            for rule in verdict.rules
        ],
    )


def _seen_text(value: object) -> str:
    return "\\".join(str(v) for v in value) if isinstance(value, list) else str(value)


def patient_name(ctx: WebContext, user: WebUser, study_uid: str) -> str:
    """The study's Patient's Name for the pages: masked unless the user may see it."""
    relative = ctx.queries.first_instance_path(study_uid)
    path = None
    if relative is not None:
        try:
            path = ctx.spool_path(relative)
        except ValueError:
            path = None
    name = ctx.names.of(study_uid, path)
    return name if sees_identities(ctx, user) else mask(name)


def failures(ctx: WebContext, *, limit: int = 100, offset: int = 0) -> JobPagePublic:
    """FAILED jobs, most recent first."""
    total, rows = ctx.queries.jobs(states=[JobState.FAILED], limit=limit, offset=offset)
    return JobPagePublic(total=total, items=jobs_public(ctx, rows))


def _manifest_public(attempt: str, manifest: JobManifest) -> ManifestPublic:
    return ManifestPublic(
        attempt=attempt,
        status=manifest.status.value,
        reason=manifest.reason,
        worker=manifest.worker,
        timings_s=dict(manifest.timings_s),
    )


def _mtime(path: Path) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromtimestamp(os.stat(path).st_mtime, datetime.UTC)
    except OSError:
        return None


def previous_manifests(job_dir: Path) -> list[tuple[int, Path, JobManifest]]:
    """Manifests of earlier attempts a retry set aside, oldest first, numbered from 1."""
    out: list[tuple[int, Path, JobManifest]] = []
    # The names end in a UTC time stamp (YYYYMMDDTHHMMSS): sorted by name is oldest first.
    for path in sorted(job_dir.glob(ATTEMPT_MANIFEST_GLOB)):
        try:
            out.append((len(out) + 1, path, JobManifest.model_validate_json(path.read_bytes())))
        except (OSError, ValueError):
            continue
    return out


def _timeline(detail: JobDetail, now: datetime.datetime) -> list[StagePublic]:
    job = detail.job
    stages: list[StagePublic] = []
    if detail.study_first_received is not None:
        stages.append(
            StagePublic(
                state="WAITING",
                started_at=_utc(detail.study_first_received),
                ended_at=_utc(job.created_at),
                seconds=max((job.created_at - detail.study_first_received).total_seconds(), 0.0),
                detail="study arriving until complete, then routed",
            )
        )
    events = detail.events
    for index, ev in enumerate(events):
        following = events[index + 1] if index + 1 < len(events) else None
        if following is not None:
            ended: datetime.datetime | None = following.at
            seconds = (following.at - ev.at).total_seconds()
        elif ev.state in TERMINAL_JOB_STATES:
            ended, seconds = ev.at, 0.0
        else:
            ended, seconds = None, (now - ev.at).total_seconds()
        stages.append(
            StagePublic(
                state=ev.state.value,
                started_at=_utc(ev.at),
                ended_at=_utc_or_none(ended),
                seconds=max(seconds, 0.0),
                detail=ev.detail,
            )
        )
    return stages


def _log(
    detail: JobDetail,
    manifest: JobManifest | None,
    manifest_at: datetime.datetime | None,
    previous: list[tuple[int, Path, JobManifest]],
) -> list[LogLinePublic]:
    lines: list[LogLinePublic] = []
    for ev in detail.events:
        text = ev.state.value + (f": {ev.detail}" if ev.detail else "")
        lines.append(LogLinePublic(at=_utc(ev.at), source="node", text=text))
    if detail.dispatched_at is not None:
        lines.append(
            LogLinePublic(
                at=_utc(detail.dispatched_at),
                source="node",
                text=f"sent to queue {detail.job.queue} as task {detail.task_id}",
            )
        )

    def _manifest_lines(label: str, m: JobManifest, at: datetime.datetime | None) -> None:
        who = f"worker {m.worker}" if m.worker else "worker"
        text = f"{label}: {m.status.value}" + (f": {m.reason}" if m.reason else "")
        lines.append(LogLinePublic(at=at, source=who, text=text))
        if m.timings_s:
            timings = ", ".join(f"{k} {v:.2f} s" for k, v in m.timings_s.items())
            lines.append(LogLinePublic(at=at, source=who, text=f"{label} timings: {timings}"))

    for number, path, m in previous:
        _manifest_lines(f"attempt {number}", m, _mtime(path))
    if manifest is not None:
        _manifest_lines("manifest", manifest, manifest_at)
    for row in detail.exports:
        text = f"export of {row.sop_instance_uid} to {row.destination}: {row.state.value}"
        text += f" after {row.attempts} attempt(s)"
        if row.last_error:
            text += f"; last error: {row.last_error}"
        lines.append(LogLinePublic(at=_utc_or_none(row.sent_at), source="export", text=text))
    far = datetime.datetime.max.replace(tzinfo=datetime.UTC)
    return sorted(lines, key=lambda line: line.at or far)


def _seg_path(ctx: WebContext, job_id: int, manifest: JobManifest | None) -> Path | None:
    if manifest is None:
        return None
    for out in manifest.outputs:
        if out.kind.value == "seg":
            path = ctx.job_dir(job_id) / out.file
            if path.resolve().is_relative_to(ctx.job_dir(job_id).resolve()) and path.is_file():
                return path
    return None


def _read_manifest(job_dir: Path) -> JobManifest | None:
    try:
        return read_manifest(job_dir)
    except (OSError, ValueError):
        return None


def job_detail(ctx: WebContext, user: WebUser, job_id: int) -> JobDetailPublic | None:
    """Everything about one job, or None when it does not exist.

    Parameters
    ----------
    ctx : WebContext
        The application's dependencies.
    user : WebUser
        Who asks (decides whether retry and cancel are offered).
    job_id : int
        The job.

    Returns
    -------
    JobDetailPublic or None
        The job, its timeline, log lines, outputs and exports.
    """
    detail = ctx.queries.job_detail(job_id)
    if detail is None:
        return None
    job_dir = ctx.job_dir(job_id)
    manifest = _read_manifest(job_dir)
    previous = previous_manifests(job_dir)
    now = utcnow()
    timeline = _timeline(detail, now)
    total = sum(stage.seconds for stage in timeline)
    admin = user.role is WebRole.ADMIN
    newer = superseded_by(ctx.state, [job_id]).get(job_id)
    notes = notes_of(ctx.state, job_id)
    base = job_public(detail.job, newer)
    return JobDetailPublic(
        **base.model_dump(),
        task_id=detail.task_id,
        input_count=len(detail.inputs),
        measurements=detail.measurements,
        timeline=timeline,
        total_seconds=total,
        outputs=[
            OutputPublic(
                kind=out.kind.value,
                file=out.file,
                sop_class_uid=out.sop_class_uid,
                series_instance_uid=out.series_instance_uid,
                sop_instance_uid=out.sop_instance_uid,
            )
            for out in (manifest.outputs if manifest else [])
        ],
        exports=[
            ExportPublic(
                destination=row.destination,
                sop_instance_uid=row.sop_instance_uid,
                state=row.state,
                attempts=row.attempts,
                last_error=row.last_error,
                sent_at=_utc_or_none(row.sent_at),
            )
            for row in detail.exports
        ],
        manifest=_manifest_public("latest", manifest) if manifest else None,
        previous_attempts=[_manifest_public(str(n), m) for n, _, m in previous],
        log=_log(detail, manifest, _mtime(job_dir / MANIFEST_NAME), previous),
        rejection_notes=[
            RejectionNotePublic(
                destination=note.destination,
                sop_instance_uid=note.sop_instance_uid,
                superseded_by=note.superseded_by,
                rejected=note.rejected,
                state=note.state,
                attempts=note.attempts,
                last_error=note.last_error,
                sent_at=_utc_or_none(note.sent_at),
            )
            for note in notes
        ],
        has_seg=_seg_path(ctx, job_id, manifest) is not None,
        can_retry=admin
        and (
            any(note.state is ExportState.FAILED for note in notes)
            if newer is not None
            else detail.job.state in RETRYABLE_STATES
        ),
        can_cancel=admin and newer is None and detail.job.state in CANCELLABLE_STATES,
    )


def overlay_png(ctx: WebContext, job_id: int) -> tuple[bytes, str]:
    """The job's segmentation over a few source slices, as a PNG (cached), and its study.

    Raises
    ------
    OverlayError
        If the job does not exist, has no SEG, its source images were removed
        by retention, or the picture cannot be drawn.
    """
    detail = ctx.queries.job_detail(job_id)
    if detail is None:
        raise OverlayError("no such job")
    seg = _seg_path(ctx, job_id, _read_manifest(ctx.job_dir(job_id)))
    if seg is None:
        raise OverlayError("the job has no SEG on the spool")
    key = (job_id, seg.stat().st_mtime_ns)
    cached = ctx.overlays.get(key)
    if cached is not None:
        return cached, detail.job.study_uid
    sources = []
    for relative in detail.inputs:
        try:
            path = ctx.spool_path(relative)
        except ValueError:
            continue
        if path.is_file():  # retention removes received instances before results
            sources.append(path)
    if not sources:
        raise OverlayError("the source images are no longer on the spool (retention)")
    png = render_overlay(seg, sources)
    ctx.overlays.put(key, png)
    return png, detail.job.study_uid


# -- associations and configuration ----------------------------------------------------


def _association_public(row: AssociationRow) -> AssociationPublic:
    seconds = (row.ended_at - row.started_at).total_seconds() if row.ended_at else None
    return AssociationPublic(
        id=row.id,
        calling_ae=row.calling_ae,
        called_ae=row.called_ae,
        address=row.address,
        started_at=_utc(row.started_at),
        ended_at=_utc_or_none(row.ended_at),
        seconds=seconds,
        instances=row.instances,
        bytes=row.bytes,
        failures=row.failures,
        outcome=row.outcome,
    )


def associations(ctx: WebContext, *, limit: int = 100, offset: int = 0) -> AssociationPagePublic:
    """A page of the association log, newest first."""
    total, rows = ctx.queries.associations(limit=limit, offset=offset)
    return AssociationPagePublic(total=total, items=[_association_public(r) for r in rows])


def _hide_url_password(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if not parts.scheme or parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", f":{_HIDDEN}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _hide(value: Any, key: str = "") -> Any:
    if key in _SECRET_KEYS:
        return _HIDDEN if value else ""
    if isinstance(value, dict):
        return {k: _hide(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide(v) for v in value]
    if isinstance(value, str):
        return _hide_url_password(value)
    return value


def config_public(ctx: WebContext) -> dict[str, Any]:
    """The running configuration, with secrets (and passwords in URLs) hidden."""
    dumped = ctx.settings.model_dump(mode="json")
    hidden: dict[str, Any] = _hide(dumped)
    return hidden
