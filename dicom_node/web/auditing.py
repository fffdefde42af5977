"""What the dashboard and the API put in the audit trail (:mod:`dicom_node.audit`).

Every look at one study's data (its page, its jobs, the picture of a result),
every search, every login and logout, every retry and cancel, every read of
the audit trail or of the de-identification map. The requestor is the
logged-in user with the client's address.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Request

from dicom_node.audit import (
    Code,
    EventAction,
    EventId,
    EventType,
    Outcome,
    Participant,
    StudyObject,
)
from dicom_node.settings import WebUser
from dicom_node.web.context import WebContext

__all__ = [
    "audit_log_read",
    "authentication",
    "job_action",
    "mapping_read",
    "studies_searched",
    "study_accessed",
]


def _requestor(request: Request, name: str) -> Participant:
    address = request.client.host if request.client is not None else ""
    return Participant(name, True, address)


def study_accessed(
    ctx: WebContext,
    request: Request,
    user: WebUser,
    study_uid: str,
    what: str,
    *,
    event_id: Code = EventId.PATIENT_RECORD,
) -> None:
    """A user read a study's data (its page, a job of it, a picture of its images).

    Parameters
    ----------
    ctx : WebContext
        The application's dependencies.
    request : fastapi.Request
        The request (the client's address).
    user : WebUser
        Who read it.
    study_uid : str
        The study.
    what : str
        What was read, e.g. ``study page`` or ``job 12 (api)``.
    event_id : Code
        Patient Record for pages, DICOM Instances Accessed for pixel data.
    """
    ctx.audit.record(
        event_id,
        EventAction.READ,
        participants=[_requestor(request, user.name)],
        studies=[StudyObject(study_uid, {"Viewed": what})],
        description=f"{user.name} read {what}",
    )


def studies_searched(ctx: WebContext, request: Request, user: WebUser, results: int) -> None:
    """A user searched the studies (the query's text is not kept: it may be PHI)."""
    ctx.audit.record(
        EventId.QUERY,
        EventAction.EXECUTE,
        participants=[_requestor(request, user.name)],
        description=f"{user.name} searched the studies: {results} matched",
    )


def job_action(
    ctx: WebContext,
    request: Request,
    user: WebUser,
    *,
    job_id: int,
    study_uids: Sequence[str],
    action: str,
    ok: bool,
    detail: str,
) -> None:
    """An admin retried or cancelled a job (or tried to)."""
    ctx.audit.record(
        EventId.APPLICATION_ACTIVITY,
        EventAction.EXECUTE if action == "retry" else EventAction.UPDATE,
        Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
        participants=[_requestor(request, user.name)],
        studies=[StudyObject(uid, {"JobID": str(job_id)}) for uid in study_uids],
        event_type=EventType.JOB_RETRY if action == "retry" else EventType.JOB_CANCEL,
        description=f"{user.name} {action} job {job_id}: {detail}",
    )


def authentication(
    ctx: WebContext, request: Request, name: str, *, ok: bool, logout: bool = False
) -> None:
    """A login (successful or not) or a logout."""
    ctx.audit.record(
        EventId.USER_AUTHENTICATION,
        EventAction.EXECUTE,
        Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
        participants=[_requestor(request, name[:64])],
        event_type=EventType.LOGOUT if logout else EventType.LOGIN,
        description=f"{'logout' if logout else 'login'} of {name[:64]!r}"
        + ("" if ok else " refused"),
    )


def audit_log_read(ctx: WebContext, request: Request, user: WebUser) -> None:
    """An admin read the audit trail."""
    ctx.audit.record(
        EventId.AUDIT_LOG_USED,
        EventAction.READ,
        participants=[_requestor(request, user.name)],
        description=f"{user.name} read the audit trail",
    )


def mapping_read(
    ctx: WebContext, request: Request, user: WebUser, tag: str, destination: str
) -> None:
    """An admin resolved a de-identified UID back to the study it stands for."""
    ctx.audit.record(
        EventId.INSTANCES_ACCESSED,
        EventAction.READ,
        participants=[_requestor(request, user.name)],
        studies=[StudyObject("", {"Viewed": f"de-identification map of {destination}"}, tag)],
        event_type=EventType.UID_MAPPING_READ,
        description=f"{user.name} re-identified a de-identified UID",
    )
