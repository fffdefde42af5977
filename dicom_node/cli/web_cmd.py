"""``dicom-node web``: the dashboard in its own process, and its users.

``serve`` runs the dashboard alone; ``hash-password`` prints the argon2 hash a
``web.users`` entry needs; ``logout`` ends dashboard sessions on the server (the
state DB), for an admin who cannot or would rather not log in: after a password
leak, or when a user leaves.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dicom_node.cli.options import (
    build_settings,
    common_options,
    configure_logging,
    stop_on_signals,
)
from dicom_node.errors import NodeError

if TYPE_CHECKING:
    from dicom_node.web.server import WebServerHandle


@click.group(name="web")
def web_group() -> None:
    """The dashboard: serve it, make password hashes."""


@web_group.command(name="serve")
@common_options
@click.option("--port", type=int, default=None, help="Override web.port.")
def serve_cmd(config: Path | None, verbose: int, quiet: bool, port: int | None) -> int:
    """Run the dashboard, REST API and /metrics in this process until SIGTERM or SIGINT.

    The receiver (dicom-node serve) runs apart, so nothing here can take it
    down. The web section is checked as when enabled: a real session secret
    and at least one user.
    """
    web: dict[str, object] = {"enabled": True}
    if port is not None:
        web["port"] = port
    settings = build_settings(config, web=web)
    configure_logging(verbose, quiet, settings.log_level, settings.log_format)
    from dicom_node.web.process import run_web  # FastAPI only where the dashboard runs

    stop = stop_on_signals()

    def _started(handle: WebServerHandle) -> None:
        click.echo(f"dashboard {handle.url}", nl=True)  # for a supervisor or a test

    try:
        run_web(settings, stop, _started)
    except NodeError as exc:  # a state DB whose schema is too old
        raise click.ClickException(exc.reason) from exc
    except OSError as exc:  # the port is in use
        raise click.ClickException(str(exc)) from exc
    return 0


@web_group.command(name="hash-password")
@click.option(
    "--stdin", "from_stdin", is_flag=True, help="Read the password from the first line of stdin."
)
def hash_password_cmd(from_stdin: bool) -> int:
    """Print the argon2id hash of a password (asked twice, not echoed)."""
    from dicom_node.web.auth import hash_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.UsageError("the password is empty")
    click.echo(hash_password(password))
    return 0


@web_group.command(name="logout")
@common_options
@click.option("--user", "user_name", default=None, help="The user to log out everywhere.")
@click.option("--all", "everyone", is_flag=True, help="Log every user out everywhere.")
def logout_cmd(
    config: Path | None, verbose: int, quiet: bool, user_name: str | None, everyone: bool
) -> int:
    """End dashboard sessions: one user's (--user NAME) or everyone's (--all)."""
    from dicom_node.state import StateDB
    from dicom_node.web.sessions import SessionStore

    if bool(user_name) == everyone:
        raise click.UsageError("give either --user NAME or --all")
    configure_logging(verbose, quiet, default="WARNING")
    settings = build_settings(config)
    state = StateDB(settings.state_db_url)
    try:
        store = SessionStore(
            state,
            max_age_s=settings.web.session_max_age_s,
            idle_s=settings.web.session_idle_timeout_s,
        )
        count = store.end_all(None if everyone else user_name)
    finally:
        state.close()
    click.echo(f"{count} sessions ended")
    return 0
