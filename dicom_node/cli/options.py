"""Options shared by the subcommands: configuration file and verbosity.

Where a command finds its configuration, first found wins:

1. ``--config FILE`` (``-c``);
2. the ``DICOM_NODE_CONFIG`` environment variable;
3. ``config/node.yaml`` under the current directory (a checkout or ``/opt/dicom-node``);
4. ``/etc/dicom-node/node.yaml``, the system-wide file of an installed node.

A file named by 1 or 2 must exist. When none is found the defaults apply, and a
command that reads the node's state (``status``, ``retry``) says
which places it looked in instead of failing on a database it cannot open.
Relative paths inside a configuration file (``spool_dir``, ``pipelines_dir``)
are taken from the current directory, so a system-wide file should use
absolute paths.
"""

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

from dicom_node.log_privacy import keep_values_out_of_logs
from dicom_node.logs import LogFormat, setup_logging
from dicom_node.settings import Settings, load_settings

__all__ = [
    "DEFAULT_CONFIG",
    "SYSTEM_CONFIG",
    "build_settings",
    "common_options",
    "configure_logging",
    "find_config",
    "require_spool",
    "stop_on_signals",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: The configuration of a checkout (or an installation folder), under the current directory.
DEFAULT_CONFIG = Path("config/node.yaml")
#: The system-wide configuration, the last place looked in.
SYSTEM_CONFIG = Path("/etc/dicom-node/node.yaml")


def common_options(func: F) -> F:
    """Add ``--config``, ``-v`` and ``-q`` to a subcommand."""
    func = click.option(
        "-c",
        "--config",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="DICOM_NODE_CONFIG",
        default=None,
        help="YAML configuration (else $DICOM_NODE_CONFIG, ./config/node.yaml, "
        "/etc/dicom-node/node.yaml).",
    )(func)
    func = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")(func)
    return click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")(func)


def configure_logging(
    verbose: int, quiet: bool, default: str = "INFO", log_format: LogFormat = "text"
) -> None:
    """Log to stderr at ``default`` (``log_level``), without values; ``-q``/``-v`` override it.

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
        else logging.INFO
        if verbose == 1
        else logging.getLevelName(default)
    )
    setup_logging(level, log_format, debug_libraries=verbose >= 3)
    # pydicom logs each invalid value it reads at WARNING and warns about it too
    # (warn_and_log): the warning alone reaches the log, once per place, as a category.
    logging.getLogger("pydicom").setLevel(logging.DEBUG if verbose >= 3 else logging.ERROR)


def find_config(config: Path | None) -> Path | None:
    """The configuration file to use, in the order of the module docstring.

    Parameters
    ----------
    config : pathlib.Path or None
        The file named by ``--config`` or ``DICOM_NODE_CONFIG`` (click reads both).

    Returns
    -------
    pathlib.Path or None
        The file, or None when there is none anywhere (defaults apply).
    """
    if config is not None:
        return config
    for candidate in (DEFAULT_CONFIG, SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def build_settings(config: Path | None, **overrides: Any) -> Settings:
    """Load settings once for a subcommand; turn errors into a usage-style message.

    Parameters
    ----------
    config : pathlib.Path or None
        The file named by ``--config`` or ``DICOM_NODE_CONFIG``; None looks
        in ``./config/node.yaml``, then ``/etc/dicom-node/node.yaml``.
    **overrides : Any
        Values of command-line flags (None: not given).

    Returns
    -------
    Settings
        The configuration.

    Raises
    ------
    click.ClickException
        If the named file is missing or a value is invalid.
    """
    found = find_config(config)
    logger.info("configuration: %s", found if found is not None else "none found, defaults")
    try:
        return load_settings(found, **{k: v for k, v in overrides.items() if v is not None})
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    except ValidationError as exc:
        raise click.ClickException(f"invalid configuration:\n{exc}") from exc


def require_spool(settings: Settings, config: Path | None) -> None:
    """Refuse, with where to look, when the node's spool is not where the settings say.

    Parameters
    ----------
    settings : Settings
        The loaded settings.
    config : pathlib.Path or None
        What ``--config`` / ``DICOM_NODE_CONFIG`` named.

    Raises
    ------
    click.ClickException
        If the spool folder does not exist.
    """
    if settings.spool_dir.is_dir():
        return
    found = find_config(config)
    used = (
        f"the configuration {found}"
        if found is not None
        else f"no configuration (looked for ./{DEFAULT_CONFIG} and {SYSTEM_CONFIG})"
    )
    raise click.ClickException(
        f"no spool at {settings.spool_dir.resolve()} (from {used}): run this on the node "
        "machine from its folder, or name its configuration with --config or "
        "DICOM_NODE_CONFIG"
    )


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets: a long-running command's way to stop cleanly."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop
