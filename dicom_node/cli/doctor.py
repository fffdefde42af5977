"""``dicom-node doctor``: check a site after install and before go-live, one line per check."""

from __future__ import annotations

from pathlib import Path

import click

from dicom_node.cli.options import DEFAULT_CONFIG, common_options, configure_logging
from dicom_node.doctor import run_checks
from dicom_node.settings import Settings, load_settings


@click.command()
@common_options
@click.option(
    "--worker-timeout", type=float, default=5.0, show_default=True,
    help="Seconds workers may take to answer the broadcast.",
)  # fmt: skip
@click.option(
    "--model-timeout", type=float, default=120.0, show_default=True,
    help="Seconds a worker may take to load a queue's models.",
)  # fmt: skip
def doctor(
    config: Path | None, verbose: int, quiet: bool, worker_timeout: float, model_timeout: float
) -> int:
    """Check configuration, spool, state DB, broker, clock, workers, models, archives, port.

    Prints PASS or FAIL with a reason for each; exits 1 if any check fails.
    """
    configure_logging(verbose, quiet, default="ERROR")
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG

    def load() -> Settings:
        return load_settings(config)

    failed = 0
    for check in run_checks(load, worker_timeout, model_timeout):
        click.echo(check.line())
        failed += not check.ok
    click.echo(f"{failed} check(s) failed" if failed else "all checks passed")
    return 1 if failed else 0
