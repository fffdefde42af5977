"""Options shared by the subcommands: configuration file and verbosity."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from dicom_node.logs import LogFormat, setup_logging
from dicom_node.settings import Settings, load_settings

__all__ = ["build_settings", "common_options", "configure_logging", "stop_on_signals"]

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


def configure_logging(
    verbose: int, quiet: bool, default: str = "INFO", log_format: LogFormat = "text"
) -> None:
    """Log to stderr at ``default`` (usually ``log_level``); ``-q``/``-v`` override it."""
    level = (
        logging.WARNING
        if quiet
        else logging.DEBUG
        if verbose >= 2
        else logging.INFO
        if verbose == 1
        else logging.getLevelName(default)
    )
    setup_logging(level, log_format, debug_libraries=verbose >= 3)


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


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets: a long-running command's way to stop cleanly."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop
