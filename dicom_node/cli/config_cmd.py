"""``dicom-node config check``: validate the configuration and every pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from dicom_node.cli.options import build_settings, common_options, configure_logging
from pipelines.bundle_check import CheckLevel, check_pipeline
from pipelines.errors import PipelineConfigError
from pipelines.spec import load_pipeline_specs


@click.group(name="config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command()
@common_options
def check(config: Path | None, verbose: int, quiet: bool) -> int:
    """Validate the node configuration and the pipeline definitions.

    Each bundle pipeline is checked against this environment (MONAI and torch
    versions, the packages the bundle imports, its input channels, its weights,
    codes for its labels; :func:`pipelines.bundle_check.check_pipeline`). An error
    in an enabled pipeline fails the check (exit 1); warnings are printed.
    """
    configure_logging(verbose, quiet, default="WARNING")
    settings = build_settings(config)
    try:
        specs = load_pipeline_specs(settings.pipelines_dir)
    except PipelineConfigError as exc:
        raise click.ClickException(exc.reason) from exc
    click.echo(f"configuration ok: AE {settings.scp.ae_title} on port {settings.scp.port}")
    from dicom_node.routing import rule_warnings  # the receiver's modules: only here

    failed = False
    for spec in specs.values():
        state = "enabled" if spec.enabled else "disabled"
        click.echo(f"pipeline {spec.name} {spec.version} ({state}, queue {spec.queue})")
        for warning in rule_warnings(spec):
            click.echo(f"  warning: {warning}")
        for result in check_pipeline(spec):
            click.echo(f"  {result.level.value}: {result.message}")
            failed = failed or (spec.enabled and result.level is CheckLevel.ERROR)
    if failed:
        raise click.ClickException("an enabled pipeline cannot run here (errors above)")
    return 0
