"""``dicom-node web hash-password``: make the argon2 hash a ``web.users`` entry needs."""

from __future__ import annotations

import sys

import click


@click.group(name="web")
def web_group() -> None:
    """Dashboard helpers."""


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
