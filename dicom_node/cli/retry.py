"""``dicom-node retry JOB``: run a FAILED or SKIPPED job again, or resend its exports."""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from dicom_node.audit import (
    EventAction,
    EventId,
    EventType,
    Outcome,
    Participant,
    StudyObject,
    open_audit,
)
from dicom_node.cli.options import (
    build_settings,
    common_options,
    configure_logging,
    require_spool,
)
from dicom_node.retry import RetryRefused, retry_job
from dicom_node.spool import Spool
from dicom_node.state import StateDB


@click.command()
@common_options
@click.argument("job_id", type=int)
def retry(config: Path | None, verbose: int, quiet: bool, job_id: int) -> int:
    """Retry job JOB_ID; the running node picks it up on its next pass."""
    configure_logging(verbose, quiet, default="WARNING")
    settings = build_settings(config)
    require_spool(settings, config)
    state = StateDB(settings.state_db_url, upgrade=settings.database_auto_upgrade)
    audit = open_audit(settings)
    who = f"{getpass.getuser()} (cli)"
    job = state.job(job_id)

    def _audit(ok: bool, detail: str) -> None:
        audit.record(
            EventId.APPLICATION_ACTIVITY,
            EventAction.EXECUTE,
            Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
            participants=[Participant(who, True)],
            studies=[StudyObject(job.study_uid, {"JobID": str(job_id)})] if job else [],
            event_type=EventType.JOB_RETRY,
            description=f"{who} retry job {job_id}: {detail}",
        )

    try:
        message = retry_job(state, Spool(settings.spool_dir), job_id, who=who)
    except RetryRefused as exc:
        _audit(False, exc.reason)
        raise click.ClickException(exc.reason) from exc
    finally:
        state.close()
    _audit(True, message)
    click.echo(message)
    return 0
