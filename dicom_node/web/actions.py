"""An admin's two actions on a job: retry and cancel.

**Retry** is :func:`dicom_node.retry.retry_job`, the same as ``dicom-node
retry``: a job whose export failed sends its undelivered objects again; any
other job has its manifest set aside (kept, and shown as an earlier attempt on
the job page) and goes back to the outbox as QUEUED, never sent.

**Cancel** makes the job SKIPPED with the reason "cancelled by <user>" (no new
state: every part of the node already treats SKIPPED as an end), gives up its
pending exports, and revokes its Celery task: a worker that has not started it
drops it, and the pool process already running it is terminated (the worker
starts a fresh one), so a runaway model stops holding its GPU or CPU. Whatever
it wrote is never exported: the node ignores the result of a SKIPPED job.
"""

from __future__ import annotations

import logging

from dicom_node.errors import NodeError
from dicom_node.retry import RetryRefused, retry_job
from dicom_node.settings import WebUser
from dicom_node.state.queries import CANCELLABLE_STATES
from dicom_node.state.supersession import superseded_by
from dicom_node.web.context import WebContext

__all__ = ["ActionRefused", "cancel", "retry"]

logger = logging.getLogger(__name__)


class ActionRefused(NodeError):
    """The job cannot be retried or cancelled in its present state."""


def retry(ctx: WebContext, user: WebUser, job_id: int) -> str:
    """Retry a FAILED or SKIPPED job.

    Parameters
    ----------
    ctx : WebContext
        The application's dependencies.
    user : WebUser
        The admin who asked; named in the job's history.
    job_id : int
        The job.

    Returns
    -------
    str
        What was done, for the page.

    Raises
    ------
    ActionRefused
        If the job does not exist or is not FAILED or SKIPPED.
    """
    try:
        return retry_job(ctx.state, ctx.spool, job_id, who=user.name)
    except RetryRefused as exc:
        raise ActionRefused(exc.reason) from exc


def cancel(ctx: WebContext, user: WebUser, job_id: int) -> str:
    """Cancel a job that has not ended well: SKIPPED, "cancelled by <user>".

    Parameters
    ----------
    ctx : WebContext
        The application's dependencies.
    user : WebUser
        The admin who asked.
    job_id : int
        The job.

    Returns
    -------
    str
        What was done, for the page.

    Raises
    ------
    ActionRefused
        If the job does not exist, has already ended (DONE or SKIPPED), or is
        superseded by a newer job.
    """
    detail = ctx.queries.job_detail(job_id)
    if detail is None:
        raise ActionRefused(f"job {job_id} does not exist")
    if detail.job.state not in CANCELLABLE_STATES:
        raise ActionRefused(f"job {job_id} is {detail.job.state.value}; it cannot be cancelled")
    newer = superseded_by(ctx.state, [job_id]).get(job_id)
    if newer is not None:
        # Its work stopped when job ``newer`` was created; what is left are rejection notes.
        raise ActionRefused(f"job {job_id} is superseded by job {newer}; nothing to cancel")
    if not ctx.queries.cancel_job(job_id, user.name):
        raise ActionRefused(f"job {job_id} changed state meanwhile; reload and try again")
    logger.info("job %d cancelled by %s", job_id, user.name)
    if detail.task_id:
        ctx.probe.revoke(detail.task_id, terminate=True)
    return f"job {job_id}: cancelled"
