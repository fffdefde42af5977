"""Options shared by the subcommands: configuration file and verbosity."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from dicom_node.log_privacy import keep_values_out_of_logs
from dicom_node.settings import Settings, load_settings

__all__ = ["build_settings", "common_options", "configure_logging"]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = Path("config/node.yaml")


def common_options(func: F) -> F:
    """Add ``--config``, ``-v`` and ``-q`` to a subcommand."""
    func = click.option(
        "-c",
        "--config",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="DICOM_NODE_CONFIG",
        default=None,
        help="YAML configuration (default: config/node.yaml if present).",
    )(func)
    func = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")(func)
    return click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")(func)


def configure_logging(verbose: int, quiet: bool, default: str = "INFO") -> None:
    """Log to stderr without values; pynetdicom's chatter stays at WARNING unless -vvv.

    Every record of the process, from any library, goes through
    :func:`dicom_node.log_privacy.keep_values_out_of_logs`: warnings and
    third-party records keep their category and location, never their text.
    """
    keep_values_out_of_logs()
    level = (
        logging.WARNING
        if quiet
        else logging.DEBUG
        if verbose >= 2
        else logging.getLevelName(default)
    )
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose >= 3 else logging.WARNING)
    # highdicom logs the UIDs of the source images it copies from at INFO: UIDs name
    # studies, and logs name a study only by its tag (DESIGN.md promise 5).
    logging.getLogger("highdicom").setLevel(logging.DEBUG if verbose >= 3 else logging.WARNING)
    # pydicom logs each invalid value it reads at WARNING and warns about it too
    # (warn_and_log): the warning alone reaches the log, once per place, as a category.
    logging.getLogger("pydicom").setLevel(logging.DEBUG if verbose >= 3 else logging.ERROR)


def build_settings(config: Path | None, **overrides: Any) -> Settings:
    """Load settings once for a subcommand; turn errors into a usage-style message.

    Raises
    ------
    click.ClickException
        If the file is missing or a value is invalid.
    """
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    except ValidationError as exc:
        raise click.ClickException(f"invalid configuration:\n{exc}") from exc
