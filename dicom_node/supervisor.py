"""The node's control loop: studies complete, jobs go out, results come back, exports run.

Each pass does, in order (export in a thread of its own):

1. **stability**: studies quiet for their period are routed; the study is
   marked complete and its jobs created in one transaction;
2. **dispatch**: QUEUED jobs never sent to the broker are sent (the outbox);
3. **collect**: a job's ``manifest.json`` on the spool says how it ended; the
   Celery state tells when it started running;
4. **recover lost**: jobs neither the broker nor a live worker holds are sent again;
5. **export**: due export rows are sent to their destinations, with backoff;
   each destination has rows for the result kinds it receives only
   (:mod:`dicom_node.profiles`); a research destination (``deidentify``) gets
   de-identified copies of the job's source series and results
   (:mod:`dicom_node.deidentify`), and every attempt is put in the audit
   trail (:mod:`dicom_node.audit`).
6. **withdraw**: where a job's new result has reached a destination, the
   results it supersedes there are withdrawn with IOCM rejection notes
   (:mod:`dicom_node.withdrawal`), sent by the next export pass.

Other loops (notifications, retention) run in threads of their own, added by
:meth:`Supervisor.add_loop`. Every step reads its work from the state DB, so a
restarted node resumes where the previous one stopped.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from celery import Celery

from dicom_node.audit import AuditLog, EventAction, EventId, Outcome, Participant, Role, StudyObject
from dicom_node.broker import broker_holdings, send_job, task_state, tasks_on_live_workers
from dicom_node.deidentify import DeidentifyError, Prepared, ResearchExport
from dicom_node.export import DeliveryResult, next_attempt, send_files
from dicom_node.phi import study_tag
from dicom_node.profiles import job_outputs, receives
from dicom_node.routing import route_study
from dicom_node.routing_reasons import Audience, is_news, verdict_text
from dicom_node.settings import DestinationSettings, Settings
from dicom_node.spool import Spool
from dicom_node.state import ExportState, ExportView, JobState, JobView, NewJob, StateDB
from dicom_node.state.schema import TERMINAL_JOB_STATES, utcnow
from dicom_node.state.supersession import jobs_with_superseded_elders
from dicom_node.withdrawal import NoteNotWritten, withdraw_superseded
from pipelines.manifest import JobManifest, JobRequest, ManifestStatus, read_manifest
from pipelines.spec import PipelineSpec

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)


class Supervisor:
    """Drives studies and jobs through their states.

    Parameters
    ----------
    settings : Settings
        Node settings.
    spool : Spool
        The spool.
    state : StateDB
        The state DB.
    pipelines : dict[str, PipelineSpec]
        Pipeline definitions by name.
    producer : celery.Celery
        App used to send tasks and read their states.
    audit : AuditLog or None
        The audit trail, where every export attempt is recorded.
    """

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        state: StateDB,
        pipelines: dict[str, PipelineSpec],
        producer: Celery,
        audit: AuditLog | None = None,
    ) -> None:
        self.settings = settings
        self.audit = audit
        self.research = ResearchExport(state, spool.tmp_dir)
        self._extra_loops: list[tuple[str, tuple[Callable[[], object], ...]]] = []
        self.spool = spool
        self.state = state
        self.pipelines = pipelines
        self.producer = producer
        self._stop = threading.Event()
        self._next_lost_check = 0.0
        #: Jobs seen missing from the broker once; re-sent when seen missing twice.
        self._suspects: set[int] = set()
        self._threads: list[threading.Thread] = []
        #: Jobs whose exports settled, to look at in the withdraw step (from when,
        #: monotonic); None before the first step, which looks at every job (what a
        #: crash may have left).
        self._settled: dict[int, float] | None = None

    # -- the loop -----------------------------------------------------------------

    def _control_steps(self) -> tuple[Callable[[], object], ...]:
        return (self.complete_studies, self.dispatch, self.collect, self.recover_lost)

    def _export_steps(self) -> tuple[Callable[[], object], ...]:
        return (self.export, self.withdraw)

    @staticmethod
    def _pass(steps: tuple[Callable[[], object], ...]) -> None:
        for step in steps:
            try:
                step()
            except Exception:
                logger.exception("supervisor step %s failed", step.__name__)

    def add_loop(self, name: str, steps: tuple[Callable[[], object], ...]) -> None:
        """Run ``steps`` in a thread of their own too (call before :meth:`start`)."""
        self._extra_loops.append((name, steps))

    def start(self) -> None:
        """Run the steps in background threads until :meth:`stop`.

        Export runs in a thread of its own: an archive that drops packets holds
        an association attempt for its whole timeout, and studies must still
        complete and jobs still be sent meanwhile.
        """
        self._threads = [
            threading.Thread(
                target=self._run, args=(steps,), name=f"supervisor-{name}", daemon=True
            )
            for name, steps in (
                ("control", self._control_steps()),
                ("export", self._export_steps()),
                *self._extra_loops,
            )
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the loops and wait for their current passes to end."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, steps: tuple[Callable[[], object], ...]) -> None:
        period = min(self.settings.stability.poll_seconds, self.settings.job_poll_seconds)
        while not self._stop.is_set():
            self._pass(steps)
            self._stop.wait(period)

    # -- steps --------------------------------------------------------------------

    def complete_studies(self) -> None:
        """Route every study that has been quiet long enough, and record why.

        The jobs and a verdict per (series, pipeline) are committed with the
        study's completion. The log line says how many jobs were created and,
        when none was, why for each pipeline, without attribute values (the
        dashboard's study page shows them to those allowed to see them).
        """
        for study_uid in self.state.studies_due(utcnow(), self.settings.stability.quiet_for):
            count, series = self.state.series_inputs(study_uid)
            routing = route_study(series, self.pipelines)
            jobs = [
                NewJob(
                    series=d.series,
                    pipeline=d.pipeline.name,
                    pipeline_version=d.pipeline.version,
                    queue=d.pipeline.queue,
                    reason=f"rule '{d.rule}' of {d.pipeline.name}",
                )
                for d in routing.decisions
            ]
            created = self.state.complete_study(study_uid, count, jobs, routing.verdicts)
            tag = study_tag(study_uid)
            logger.info(
                "study=%s complete: %d instances, %d series, %d new jobs (%d selected)",
                tag,
                count,
                len(series),
                len(created),
                len(routing.decisions),
            )
            if routing.decisions:
                continue
            numbers = {item.series_uid: n for n, item in enumerate(series, start=1)}
            for verdict in filter(is_news, routing.verdicts):
                logger.info(
                    "study=%s series %d of %d (%d instances): %s %s",
                    tag,
                    numbers[verdict.series_uid],
                    len(series),
                    len(series[numbers[verdict.series_uid] - 1].instance_uids),
                    verdict.pipeline,
                    verdict_text(verdict, Audience.LOG),
                )

    def dispatch(self) -> None:
        """Send QUEUED jobs that were never handed to the broker."""
        for job in self.state.jobs([JobState.QUEUED]):
            if job.dispatched_at is not None:
                continue
            spec = self.pipelines.get(job.pipeline)
            if spec is None or spec.version != job.pipeline_version:
                self.state.set_job_state(
                    job.id,
                    JobState.FAILED,
                    reason=f"dispatch: pipeline {job.pipeline} {job.pipeline_version} "
                    "is not configured",
                )
                continue
            request = JobRequest(
                node_id=self.spool.node_id,
                job_id=job.id,
                attempt=job.attempts + 1,
                pipeline=job.pipeline,
                pipeline_version=job.pipeline_version,
                inputs=list(job.inputs),
                output_dir=self.spool.relative(self.spool.job_dir(job.id)),
                study_tag=study_tag(job.study_uid),
                outputs=job_outputs(spec, self.settings.export.destinations),
            )
            try:
                task_id = send_job(
                    self.producer,
                    request,
                    queue=spec.queue,
                    soft_time_limit=spec.soft_time_limit_s,
                    time_limit=spec.time_limit_s,
                )
            except Exception as exc:  # kombu raises several types when Redis is away
                logger.warning("broker unreachable, job %d stays queued (%s)", job.id, exc)
                return
            self.state.record_dispatch(job.id, task_id)
            logger.info("job %d (%s) sent to queue %s", job.id, job.pipeline, spec.queue)

    def collect(self) -> None:
        """Learn how dispatched jobs ended from their manifests and Celery states."""
        for job in self.state.jobs([JobState.QUEUED, JobState.RUNNING]):
            if job.dispatched_at is None:
                continue
            job_dir = self.spool.job_dir(job.id)
            try:
                manifest = read_manifest(job_dir)
            except ValueError:
                self.state.set_job_state(
                    job.id, JobState.FAILED, reason="collect: the worker's manifest is unreadable"
                )
                continue
            if manifest is not None and manifest.node_id != self.spool.node_id:
                logger.error("job %d: ignoring a manifest written for another node", job.id)
                manifest = None
            if manifest is not None:
                self._finish(job, job_dir, manifest)
                continue
            if job.state is JobState.QUEUED and job.task_id:
                try:
                    celery_state = task_state(self.producer, job.task_id)
                except Exception:  # the result backend is only a hint
                    continue
                if celery_state == "STARTED":
                    self.state.set_job_state(job.id, JobState.RUNNING)

    def recover_lost(self) -> None:
        """Re-send jobs the broker no longer holds and no worker finished.

        Celery reports a task it does not know as PENDING, so a job lost with a
        flushed or restarted Redis would wait forever; and a task reserved by a
        worker that was killed whole stays reserved until the visibility timeout.
        Every ``jobs.lost_check_seconds`` the node lists what the broker holds and
        what the live workers run; a dispatched job with no manifest that is held
        by neither, twice in a row, is sent again, or FAILED once it used up
        ``jobs.max_attempts``. A stale copy delivered later finds the manifest DONE
        and does nothing (result UIDs are deterministic in any case).
        """
        now = time.monotonic()
        if now < self._next_lost_check:
            return
        self._next_lost_check = now + self.settings.jobs.lost_check_seconds
        grace = datetime.timedelta(seconds=self.settings.jobs.lost_grace_seconds)
        candidates = [
            job
            for job in self.state.jobs([JobState.QUEUED, JobState.RUNNING])
            if job.dispatched_at is not None
            and job.dispatched_at + grace <= utcnow()
            and read_manifest(self.spool.job_dir(job.id)) is None
        ]
        if not candidates:
            self._suspects.clear()
            return
        queues = sorted({job.queue for job in candidates})
        try:
            held = broker_holdings(self.settings.broker.url, queues)
        except Exception as exc:  # broker away: nothing can be concluded now
            logger.warning("cannot list the broker's tasks (%s)", exc)
            return
        orphans: set[str] = set()
        reserved = {job.task_id for job in candidates if job.task_id in held.reserved}
        if reserved:
            live = tasks_on_live_workers(self.producer)
            # Reserved by a worker that no longer answers: killed whole, its message
            # would sit in Redis until the visibility timeout.
            orphans = set() if live is None else {t for t in reserved if t and t not in live}
        missing = {
            job.id
            for job in candidates
            if (job.task_id not in held.queued and job.task_id not in held.reserved)
            or job.task_id in orphans
        }
        for job in candidates:
            if job.id not in missing or job.id not in self._suspects:
                continue
            if job.attempts >= self.settings.jobs.max_attempts:
                self.state.set_job_state(
                    job.id,
                    JobState.FAILED,
                    reason=f"dispatch: lost by the broker after {job.attempts} attempts",
                )
                continue
            logger.warning("job %d is not held by the broker; sending it again", job.id)
            self.state.mark_undispatched(job.id, "lost by the broker; sent again")
        self._suspects = missing

    def _finish(self, job: JobView, job_dir: Path, manifest: JobManifest) -> None:
        if manifest.status is not ManifestStatus.DONE:
            state = (
                JobState.SKIPPED if manifest.status is ManifestStatus.SKIPPED else JobState.FAILED
            )
            self.state.set_job_state(job.id, state, reason=manifest.reason)
            logger.info("job %d %s: %s", job.id, state.value, manifest.reason)
            return
        if job.state is JobState.QUEUED:
            self.state.set_job_state(job.id, JobState.RUNNING)
        # Each destination gets only the kinds it receives (dicom_node.profiles).
        spec = self.pipelines.get(job.pipeline)
        deliveries = [
            (dest.name, self.spool.relative(job_dir / out.file), out.sop_instance_uid)
            for dest in self.settings.export.destinations
            for out in manifest.outputs
            if out.kind in receives(dest, spec)
        ]
        # A research destination gets the images the results were made from, too.
        sources = [
            (dest.name, path, Path(path).stem)
            for dest in self.settings.export.destinations
            if dest.deidentify.enabled and dest.deidentify.send_sources
            for path in job.inputs
        ]
        deliveries = [*sources, *deliveries]
        if deliveries:
            self.state.create_exports(job.id, deliveries, manifest.measurements)
        else:
            self.state.set_job_state(job.id, JobState.DONE, measurements=manifest.measurements)
        logger.info(
            "job %d finished on the worker: %d objects, %d deliveries",
            job.id,
            len(manifest.outputs),
            len(deliveries),
        )

    def export(self) -> None:
        """Send due exports, one association per (job, destination)."""
        groups = defaultdict(list)
        for row in self.state.due_exports(utcnow()):
            groups[(row.job_id, row.destination)].append(row)
        touched: set[int] = set()
        by_name = {d.name: d for d in self.settings.export.destinations}
        for (job_id, dest_name), rows in groups.items():
            touched.add(job_id)
            dest = by_name.get(dest_name)
            if dest is None:
                for row in rows:
                    self.state.mark_export_failed(row.id, "destination not configured", None)
                continue
            self._send_group(job_id, dest, rows)
        for job_id in touched:
            self._settle_export(job_id)
        if self._settled is not None:
            self._settled.update(dict.fromkeys(touched, 0.0))

    def withdraw(self) -> None:
        """Queue rejection notes for results superseded where the new ones arrived.

        A note that cannot be written (an old result gone from the spool) is
        tried again every ``jobs.lost_check_seconds``, logged each time.
        """
        if self._settled is None:
            self._settled = dict.fromkeys(jobs_with_superseded_elders(self.state), 0.0)
        now = time.monotonic()
        for job_id, not_before in sorted(self._settled.items()):
            if now < not_before:
                continue
            try:
                withdraw_superseded(self.state, self.spool, [job_id])
            except NoteNotWritten as exc:
                logger.warning("job %d: %s", job_id, exc.reason)
                self._settled[job_id] = now + self.settings.jobs.lost_check_seconds
                continue
            del self._settled[job_id]

    def _send_group(self, job_id: int, dest: DestinationSettings, rows: list[ExportView]) -> None:
        paths = [self.spool.resolve(row.path) for row in rows]
        prepared: Prepared | None = None
        if dest.deidentify.enabled:
            job = self.state.job(job_id)
            try:
                prepared = self.research.prepare(
                    dest.name, dest.deidentify, job.study_uid if job else "", paths
                )
            except DeidentifyError as exc:
                for row in rows:
                    self.state.mark_export_failed(row.id, exc.reason, None)
                logger.error("job %d: research export to %s: %s", job_id, dest.name, exc.reason)
                return
            for index, reason in prepared.refusals.items():
                self.state.mark_export_failed(rows[index].id, reason, None)
            rows = [row for i, row in enumerate(rows) if i not in prepared.refusals]
            paths = [p for p in prepared.paths if p is not None]
        try:
            results = send_files(self.settings.scp.ae_title, dest, paths) if paths else []
        finally:
            if prepared is not None:
                prepared.cleanup()
        self._audit_export(job_id, dest, results)
        for row, result in zip(rows, results, strict=True):
            if result.ok:
                self.state.mark_export_sent(row.id)
                continue
            retry_at = next_attempt(self.settings.export, row.attempts + 1)
            self.state.mark_export_failed(row.id, result.error, retry_at)
            logger.warning(
                "job %d export to %s failed (attempt %d): %s",
                job_id,
                dest.name,
                row.attempts + 1,
                result.error,
            )

    def _audit_export(
        self, job_id: int, dest: DestinationSettings, results: list[DeliveryResult]
    ) -> None:
        """Record what went where: DICOM Instances Transferred (PS3.15 A.5.3.10)."""
        if self.audit is None or not results:
            return
        job = self.state.job(job_id)
        sent = sum(1 for r in results if r.ok)
        outcome = (
            Outcome.SUCCESS
            if sent == len(results)
            else Outcome.MINOR_FAILURE
            if sent
            else Outcome.SERIOUS_FAILURE
        )
        where = dest.url if dest.kind == "dicomweb" else f"{dest.ae_title}@{dest.host}:{dest.port}"
        details = {
            "JobID": str(job_id),
            "Destination": dest.name,
            "Instances": str(len(results)),
            "Delivered": str(sent),
            "Deidentified": "YES" if dest.deidentify.enabled else "NO",
        }
        self.audit.record(
            EventId.INSTANCES_TRANSFERRED,
            EventAction.READ,
            outcome,
            participants=[
                Participant(self.settings.scp.ae_title, True, role=Role.SOURCE),
                Participant(
                    where, False, dest.host if dest.kind == "dimse" else "", Role.DESTINATION
                ),
            ],
            studies=[StudyObject(job.study_uid, details)] if job is not None else [],
            description=f"job {job_id}: {sent} of {len(results)} objects to {dest.name}",
        )

    def _settle_export(self, job_id: int) -> None:
        job = self.state.job(job_id)
        if job is None or job.state in TERMINAL_JOB_STATES:
            # A job that has ended (a superseded one sending its rejection note) stays as it is.
            return
        rows = self.state.exports_of(job_id)
        failed = [row for row in rows if row.state is ExportState.FAILED]
        if failed:
            row = failed[0]
            self.state.set_job_state(
                job_id,
                JobState.FAILED,
                reason=f"export: delivery to {row.destination} failed after {row.attempts} "
                f"attempts: {row.last_error}",
            )
        elif rows and all(row.state is ExportState.SENT for row in rows):
            self.state.set_job_state(job_id, JobState.DONE)
            logger.info("job %d done: %d objects delivered", job_id, len(rows))
