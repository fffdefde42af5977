"""``dicom-node echo DEST``: check an export destination with C-ECHO."""

from __future__ import annotations

from pathlib import Path

import click

from dicom_node.cli.options import build_settings, common_options, configure_logging
from dicom_node.export import echo


@click.command(name="echo")
@common_options
@click.argument("destination")
def echo_cmd(config: Path | None, verbose: int, quiet: bool, destination: str) -> int:
    """C-ECHO the export destination named DESTINATION in the configuration."""
    configure_logging(verbose, quiet, default="WARNING")
    settings = build_settings(config)
    by_name = {d.name: d for d in settings.export.destinations}
    if destination not in by_name:
        raise click.UsageError(f"no destination {destination!r}; configured: {', '.join(by_name)}")
    ok, reason = echo(settings.scp.ae_title, by_name[destination])
    click.echo(f"{destination}: {'ok' if ok else reason}")
    return 0 if ok else 1
