"""``dicom-node serve``: receive studies, route them, dispatch jobs, export results.

With ``web.enabled`` it also runs the dashboard, in a child process by default
(``web.mode``); ``dicom-node web serve`` runs the dashboard on its own instead.
"""

from __future__ import annotations

from pathlib import Path

import click

from dicom_node.cli.options import (
    build_settings,
    common_options,
    configure_logging,
    stop_on_signals,
)
from dicom_node.errors import NodeError
from dicom_node.node import Node
from pipelines.errors import PipelineConfigError


@click.command()
@common_options
@click.option("--port", type=int, default=None, help="Override scp.port.")
def serve(config: Path | None, verbose: int, quiet: bool, port: int | None) -> int:
    """Run the node until SIGTERM or SIGINT."""
    settings = build_settings(config)
    configure_logging(verbose, quiet, settings.log_level, settings.log_format)
    if port is not None:
        settings.scp.port = port
    try:
        node = Node(settings)
    except (PipelineConfigError, NodeError) as exc:
        raise click.ClickException(exc.reason) from exc
    stop = stop_on_signals()
    handle = node.start()
    # A line on stdout tells a supervisor (or a test) the port actually bound.
    click.echo(f"listening {handle.host}:{handle.port}", nl=True)
    if node.web is not None:
        click.echo(f"dashboard {node.web.url}", nl=True)
    try:
        while not stop.wait(5.0):
            node.check()
    finally:
        node.stop()
    return 0
