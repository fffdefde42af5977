"""Retrying a FAILED or SKIPPED job by hand (CLI and dashboard).

Where the job failed decides what runs again:

- its export failed: only the FAILED export rows get a fresh retry budget; what
  a destination already accepted is not sent again;
- it failed on the worker (or was skipped): its manifest and delivery count are
  set aside (renamed, kept for the record) and the job goes back to the outbox.

A retry that needs files retention already removed (the job's input images,
or the results to send again) is refused with that reason.
A job superseded by a newer one (its series' input set changed) never runs or
exports again; only its failed rejection notes can be sent again.
"""

from __future__ import annotations

import datetime
import logging

from dicom_node.errors import NodeError
from dicom_node.spool import Spool
from dicom_node.state import ExportState, JobState, StateDB
from dicom_node.state.supersession import retry_failed_notes, superseded_by

__all__ = ["RetryRefused", "retry_job"]

logger = logging.getLogger(__name__)


class RetryRefused(NodeError):
    """The job cannot be retried (it does not exist, or has not ended badly)."""


def retry_job(state: StateDB, spool: Spool, job_id: int, *, who: str = "cli") -> str:
    """Retry a job that ended FAILED or SKIPPED.

    Parameters
    ----------
    state : StateDB
        The state DB.
    spool : Spool
        The spool holding the job's folder.
    job_id : int
        The job.
    who : str
        Who asked (a user name, or "cli"), recorded in the job's history.

    Returns
    -------
    str
        What was done, for the person who asked.

    Raises
    ------
    RetryRefused
        If the job does not exist, is not FAILED or SKIPPED, or is superseded
        (and has no failed rejection note to send again).
    """
    job = state.job(job_id)
    if job is None:
        raise RetryRefused(f"job {job_id} does not exist")
    newer = superseded_by(state, [job_id]).get(job_id)
    if newer is not None:
        count = retry_failed_notes(state, job_id)
        if count:
            logger.info("job %d: %d rejection notes retried by %s", job_id, count, who)
            return f"job {job_id}: {count} failed rejection notes will be sent again"
        raise RetryRefused(f"job {job_id} is superseded by job {newer}; retry that one")
    if job.state not in (JobState.FAILED, JobState.SKIPPED):
        raise RetryRefused(f"job {job_id} is {job.state.value}; only FAILED or SKIPPED jobs retry")
    exports = state.exports_of(job_id)
    inputs_removed, results_removed = state.removed_by_retention(job_id)
    if any(row.state is ExportState.FAILED for row in exports):
        if results_removed:
            raise RetryRefused(f"job {job_id}: its results were removed by retention")
        count = state.retry_exports(job_id, f"export retried by {who}")
        logger.info("job %d: %d exports retried by %s", job_id, count, who)
        return f"job {job_id}: {count} failed exports will be sent again"
    if inputs_removed:
        raise RetryRefused(f"job {job_id}: its input images were removed by retention")
    job_dir = spool.job_dir(job_id)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    for name in ("manifest.json", "deliveries"):
        path = job_dir / name
        if path.exists():
            path.rename(job_dir / f"{name}.before-retry-{stamp}")
    state.requeue_job(job_id, f"retried by {who}")
    logger.info("job %d requeued by %s", job_id, who)
    return f"job {job_id}: queued to run again"
