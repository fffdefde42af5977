"""``dicom-node db upgrade|current``: the state DB's schema migrations, run by hand.

``serve`` and ``web serve`` upgrade the schema themselves at start unless
``database_auto_upgrade`` is off; a site that wants schema changes only in a
maintenance window (or a Kubernetes Job before the rollout) turns it off and
runs ``dicom-node db upgrade``.
"""

from __future__ import annotations

from pathlib import Path

import click

from dicom_node.cli.options import build_settings, common_options, configure_logging
from dicom_node.state import migrate
from dicom_node.state.db import make_engine


@click.group(name="db")
def db_group() -> None:
    """The state database's schema."""


@db_group.command()
@common_options
def upgrade(config: Path | None, verbose: int, quiet: bool) -> int:
    """Bring the state DB's schema to this version (safe while nodes run)."""
    settings = build_settings(config)
    configure_logging(verbose, quiet, default=settings.log_level)
    engine = make_engine(settings.state_db_url, writer=True)
    try:
        before, after = migrate.upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"state DB already at revision {after}")
    else:
        click.echo(f"state DB upgraded from revision {before or 'none'} to {after}")
    return 0


@db_group.command()
@common_options
def current(config: Path | None, verbose: int, quiet: bool) -> int:
    """Print the schema revision; exit 1 if it is not the one this version needs."""
    settings = build_settings(config)
    configure_logging(verbose, quiet, default="WARNING")
    engine = make_engine(settings.state_db_url, writer=False)
    try:
        revision = migrate.current_revision(engine)
    finally:
        engine.dispose()
    head = migrate.head_revision()
    click.echo(f"revision {revision or 'none'} (this version needs {head})")
    return 0 if revision == head else 1
