"""``dicom-node config check``: validate the configuration and every pipeline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from dicom_node.cli.options import build_settings, common_options, configure_logging
from dicom_node.profiles import delivered, job_outputs
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

    # A node's own install has no compute side: the bundles' packages and versions are
    # then checked where they run, by each worker at start (and by dicom-node doctor).
    compute_side = all(_importable(name) for name in ("torch", "monai"))
    if not compute_side:
        click.echo(
            "note: no torch/MONAI here (a node without the worker extra): bundle packages and "
            "versions are checked by each worker at start and by 'dicom-node doctor'"
        )
    destinations = settings.export.destinations
    failed = False
    for spec in specs.values():
        state = "enabled" if spec.enabled else "disabled"
        writes = ", ".join(job_outputs(spec, destinations))
        click.echo(
            f"pipeline {spec.name} {spec.version} ({state}, queue {spec.queue}) writes {writes}"
        )
        for dest in destinations:
            click.echo(f"  to {dest.name}: {', '.join(delivered(dest, spec)) or 'nothing'}")
        for warning in rule_warnings(spec):
            click.echo(f"  warning: {warning}")
        for result in check_pipeline(spec, environment=compute_side):
            click.echo(f"  {result.level.value}: {result.message}")
            failed = failed or (spec.enabled and result.level is CheckLevel.ERROR)
    if failed:
        raise click.ClickException("an enabled pipeline cannot run here (errors above)")
    return 0


def _importable(module: str) -> bool:
    """Whether a top-level module could be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
