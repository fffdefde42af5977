"""``dicom-node health [serve|web|worker]``: liveness of a local process (container probes)."""

from __future__ import annotations

from pathlib import Path

import click

from dicom_node.cli.options import build_settings, common_options, configure_logging
from dicom_node.health import Role, check_health, role_of_container

ROLES: dict[str, Role] = {"serve": "serve", "web": "web", "worker": "worker"}


@click.command()
@common_options
@click.argument("role", type=click.Choice(["serve", "web", "worker", "auto"]), default="auto")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait.")
def health(config: Path | None, verbose: int, quiet: bool, role: str, timeout: float) -> int:
    """Exit 0 if the local ROLE process answers; auto takes the container's command."""
    configure_logging(verbose, quiet, default="CRITICAL")
    settings = build_settings(config)
    chosen: Role | None = role_of_container() if role == "auto" else ROLES[role]
    if chosen is None:
        raise click.UsageError("no dicom-node command runs as PID 1: name the role")
    ok, reason = check_health(settings, chosen, timeout)
    click.echo(f"{chosen}: {'healthy' if ok else 'unhealthy'}: {reason}")
    return 0 if ok else 1
