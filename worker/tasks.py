"""Celery tasks: thin glue between a job request and :func:`pipelines.run.run_pipeline`.

A task is idempotent: result UIDs are deterministic, files are written to a
temporary name and renamed, and the manifest is written last. A redelivered
task whose manifest already says DONE returns it without running again.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.utils.log import get_task_logger

from dicom_node.broker import CHECK_PIPELINES_TASK, RUN_JOB_TASK
from dicom_node.logs import log_context
from dicom_node.settings import Settings
from pipelines.errors import PipelineError
from pipelines.manifest import (
    JobManifest,
    JobRequest,
    ManifestStatus,
    read_manifest,
    read_node_id,
    write_manifest,
)
from pipelines.spec import PipelineSpec, load_pipeline_specs
from pipelines.steps import describe_failure

__all__ = ["check_pipelines", "execute_job", "register_tasks"]

logger = get_task_logger(__name__)


@cache
def _specs(pipelines_dir: Path) -> dict[str, PipelineSpec]:
    return load_pipeline_specs(pipelines_dir)


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise PipelineError("job refers to a path outside the spool")
    return path


def _record_delivery(out_dir: Path) -> int:
    """Count this delivery of a job durably in its folder and return its number.

    The count lives on the spool, not in the worker, so it survives the worker
    process dying mid-job: that is exactly the case it must count.
    """
    folder = out_dir / "deliveries"
    folder.mkdir(exist_ok=True)
    number = len(list(folder.iterdir())) + 1
    while True:
        try:
            fd = os.open(folder / str(number), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            number += 1
            continue
        os.fsync(fd)
        os.close(fd)
        break
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return number


def execute_job(settings: Settings, request: JobRequest) -> JobManifest:
    """Run one job and write its manifest; never raises for a bad job.

    Parameters
    ----------
    settings : Settings
        Spool and pipeline folders.
    request : JobRequest
        What to run.

    Returns
    -------
    JobManifest
        What was written to ``manifest.json``.
    """
    from pipelines.run import run_pipeline  # imports torch and MONAI: workers only

    root = settings.spool_dir.resolve()
    manifest: JobManifest
    if read_node_id(root) != request.node_id:
        # Another node's job on a shared broker: its IDs mean nothing in this spool,
        # and writing here could overwrite one of our own jobs' results.
        logger.error("job %d belongs to another node's spool; dropped", request.job_id)
        return JobManifest(
            job_id=request.job_id,
            node_id=request.node_id,
            status=ManifestStatus.FAILED,
            reason="job sent to a worker of another node",
        )
    out_dir = _inside(root, request.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(out_dir)
    if previous is not None and previous.status is ManifestStatus.DONE:
        logger.info("job %d already done; redelivery ignored", request.job_id)
        return previous
    delivery = _record_delivery(out_dir)
    limit = settings.jobs.max_attempts
    if delivery > limit:
        # Celery requeues a task whose worker process died, without limit: a study
        # that kills the worker every time must end, not loop (issue: attempt limit).
        logger.error(
            "job %d: delivery %d exceeds %d attempts; failing it", request.job_id, delivery, limit
        )
        manifest = JobManifest(
            job_id=request.job_id,
            status=ManifestStatus.FAILED,
            reason=f"started {delivery - 1} times without finishing (the worker died each "
            f"time); gave up after {limit} attempts",
        )
        manifest.node_id = request.node_id
        write_manifest(out_dir, manifest)
        return manifest
    try:
        spec = _specs(settings.pipelines_dir.resolve()).get(request.pipeline)
        if spec is None:
            raise PipelineError(f"pipeline {request.pipeline!r} is not configured on this worker")
        if spec.version != request.pipeline_version:
            raise PipelineError(
                f"worker has {spec.name} {spec.version}, job wants {request.pipeline_version}"
            )
        inputs = [_inside(root, p) for p in request.inputs]
        manifest = run_pipeline(spec, inputs, out_dir, request.job_id, request.outputs)
    except PipelineError as exc:
        status = ManifestStatus.SKIPPED if exc.skip else ManifestStatus.FAILED
        logger.warning("job %d %s: %s", request.job_id, status.value, exc.reason)
        manifest = JobManifest(job_id=request.job_id, status=status, reason=exc.reason)
    except Exception as exc:  # the Celery task is a process edge: report, never crash
        logger.exception("job %d failed", request.job_id)
        manifest = JobManifest(
            job_id=request.job_id,
            status=ManifestStatus.FAILED,
            reason=f"worker: {describe_failure(exc)}",
        )
    manifest.worker = socket.gethostname()
    manifest.node_id = request.node_id
    write_manifest(out_dir, manifest)
    return manifest


def check_pipelines(settings: Settings, names: list[str]) -> dict[str, Any]:
    """Load each named pipeline's model as a job would; say which load (``dicom-node doctor``).

    Parameters
    ----------
    settings : Settings
        Pipeline folder and this worker's device.
    names : list[str]
        Pipelines whose queue this worker consumes.

    Returns
    -------
    dict[str, Any]
        ``device`` (e.g. ``cpu``, ``cuda:0``), ``gpu`` (the GPU's name or ""), and
        ``pipelines``: name to ``[loaded, reason]``.
    """
    import torch  # workers only

    from pipelines.models import classifier, segmenter
    from pipelines.spec import TaskKind

    results: dict[str, list[object]] = {}
    try:
        specs = _specs(settings.pipelines_dir.resolve())
    except PipelineError as exc:
        specs, failure = {}, exc.reason
    else:
        failure = "not configured on this worker"
    for name in names:
        spec = specs.get(name)
        if spec is None:
            results[name] = [False, failure]
            continue
        try:
            if spec.task is TaskKind.CLASSIFICATION:
                classifier(spec)
            else:
                segmenter(spec)
        except PipelineError as exc:
            results[name] = [False, exc.reason]
        except Exception as exc:  # a task is a process edge: a model that does not load
            results[name] = [False, f"model did not load: {type(exc).__name__}: {exc}"[:300]]
        else:
            results[name] = [True, f"{spec.name} {spec.version} loaded"]
    cuda = torch.cuda.is_available()
    return {
        "device": settings.worker.device,
        "gpu": torch.cuda.get_device_name(0) if cuda else "",
        "pipelines": results,
    }


def register_tasks(app: Celery) -> None:
    """Register the worker's tasks on an app built by :func:`worker.app.make_celery`."""

    @app.task(name=RUN_JOB_TASK, bind=True)  # type: ignore[untyped-decorator]
    def run_job(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
        request = JobRequest.model_validate(payload)
        settings: Settings = self.app.conf.dicom_node_settings
        with log_context(job=request.job_id, study=request.study_tag or None):
            manifest = execute_job(settings, request)
        return manifest.model_dump(mode="json", include={"job_id", "status", "reason"})

    @app.task(name=CHECK_PIPELINES_TASK, bind=True)  # type: ignore[untyped-decorator]
    def check_pipelines_task(self: Task, names: list[str]) -> dict[str, Any]:
        answer = check_pipelines(self.app.conf.dicom_node_settings, names)
        answer["worker"] = str(self.request.hostname or socket.gethostname())
        return answer
