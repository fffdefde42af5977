"""``dicom-node retry JOB``: run a FAILED or SKIPPED job again, or resend its exports."""

from __future__ import annotations

from pathlib import Path

import click

from dicom_node.cli.options import build_settings, common_options, configure_logging
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
    state = StateDB(settings.state_db_url, upgrade=settings.database_auto_upgrade)
    try:
        message = retry_job(state, Spool(settings.spool_dir), job_id)
    except RetryRefused as exc:
        raise click.ClickException(exc.reason) from exc
    finally:
        state.close()
    click.echo(message)
    return 0
