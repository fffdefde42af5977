"""``dicom-node config check``: validate the configuration and every pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from dicom_node.cli.options import build_settings, common_options, configure_logging
from dicom_node.profiles import delivered, job_outputs
from pipelines.errors import PipelineConfigError
from pipelines.spec import load_pipeline_specs


@click.group(name="config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command()
@common_options
def check(config: Path | None, verbose: int, quiet: bool) -> int:
    """Validate the node configuration and the pipeline definitions."""
    configure_logging(verbose, quiet, default="WARNING")
    settings = build_settings(config)
    try:
        specs = load_pipeline_specs(settings.pipelines_dir)
    except PipelineConfigError as exc:
        raise click.ClickException(exc.reason) from exc
    click.echo(f"configuration ok: AE {settings.scp.ae_title} on port {settings.scp.port}")
    destinations = settings.export.destinations
    for spec in specs.values():
        state = "enabled" if spec.enabled else "disabled"
        writes = ", ".join(job_outputs(spec, destinations))
        click.echo(
            f"pipeline {spec.name} {spec.version} ({state}, queue {spec.queue}) writes {writes}"
        )
        for dest in destinations:
            click.echo(f"  to {dest.name}: {', '.join(delivered(dest, spec)) or 'nothing'}")
    return 0
