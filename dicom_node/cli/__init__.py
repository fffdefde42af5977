"""The ``dicom-node`` command line: one entry point, one module per subcommand."""

from __future__ import annotations

import logging
import sys

import click

from dicom_node import __version__
from dicom_node.cli.config_cmd import config_group
from dicom_node.cli.db_cmd import db_group
from dicom_node.cli.demo import demo
from dicom_node.cli.doctor import doctor
from dicom_node.cli.echo import echo_cmd
from dicom_node.cli.health import health
from dicom_node.cli.retry import retry
from dicom_node.cli.send import send
from dicom_node.cli.serve import serve
from dicom_node.cli.status import status
from dicom_node.cli.web_cmd import web_group
from dicom_node.cli.worker import worker
from dicom_node.errors import NodeError
from dicom_node.log_privacy import keep_values_out_of_logs, safe_exception

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dicom-node")
def cli() -> None:
    """dicom-node: an AI node for hospital imaging."""


cli.add_command(serve)
cli.add_command(status)
cli.add_command(web_group)
cli.add_command(worker)
cli.add_command(demo)
cli.add_command(send)
cli.add_command(retry)
cli.add_command(echo_cmd)
cli.add_command(config_group)
cli.add_command(db_group)
cli.add_command(doctor)
cli.add_command(health)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return 0 ok, 1 failed, 2 usage error.

    Parameters
    ----------
    argv : list[str] or None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    int
        The exit code.
    """
    keep_values_out_of_logs()  # before anything can log or raise
    try:
        result = cli.main(args=argv, prog_name="dicom-node", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except click.ClickException as exc:
        exc.show()
        return 1
    except NodeError as exc:  # a deliberate refusal (e.g. a state DB schema too old)
        print(f"Error: {exc.reason}", file=sys.stderr)
        return 1
    except Exception as exc:  # the CLI is a process edge: a reason, never a raw traceback
        logging.getLogger("dicom_node.cli").exception("dicom-node failed")
        print(f"Error: {safe_exception(exc)} (the log above says where)", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
