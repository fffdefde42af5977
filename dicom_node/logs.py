"""Logging of every dicom-node process: text or JSON lines, with job and study as fields.

``log_level`` and ``log_format`` (settings) apply to ``serve``, ``web serve`` and
``worker`` alike. A JSON line carries time, level, logger, message, process and
thread, plus ``job`` and ``study`` (the study's short tag, never its UID) when
the line was logged while a job was handled, so a log shipper can follow one
job across the node and its workers. The messages are the same PHI-free
messages as the text format.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

__all__ = [
    "CONTEXT_FIELDS",
    "ContextFilter",
    "JsonFormatter",
    "LogFormat",
    "decorate_handlers",
    "log_context",
    "setup_logging",
]

#: The text or JSON form of log lines.
LogFormat = Literal["text", "json"]

#: Fields a line may carry beside its message.
CONTEXT_FIELDS = ("job", "study")

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: ContextVar[dict[str, object] | None] = ContextVar("dicom_node_log_context", default=None)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Attach fields (``job``, ``study``) to every line logged inside the block.

    Parameters
    ----------
    **fields : object
        Values without PHI: a job ID, a study tag.
    """
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copy the fields of :func:`log_context` onto each record (a handler's filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; never drops a record."""
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, process, thread."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            # Rendered without exception text by dicom_node.log_privacy.
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def decorate_handlers(logger: logging.Logger, log_format: LogFormat) -> None:
    """Give every handler of ``logger`` the context filter and, for JSON, the formatter.

    Celery installs its own handlers in a worker; this is applied to them too.
    """
    for handler in logger.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())


def setup_logging(
    level: int | str, log_format: LogFormat = "text", debug_libraries: bool = False
) -> None:
    """Log to stderr at ``level``, as text or JSON lines.

    Libraries that say too much stay at WARNING unless ``debug_libraries``:
    pynetdicom's DIMSE dumps, highdicom (it logs source UIDs at INFO; logs name
    a study only by its tag), Alembic's per-connection chatter.

    Parameters
    ----------
    level : int or str
        A logging level or its name.
    log_format : {"text", "json"}
        The line format.
    debug_libraries : bool
        Let those libraries log at DEBUG too (``-vvv``).
    """
    logging.basicConfig(level=level, stream=sys.stderr, format=_TEXT, force=True)
    decorate_handlers(logging.getLogger(), log_format)
    library_level = logging.DEBUG if debug_libraries else logging.WARNING
    for name in ("pynetdicom", "highdicom", "alembic"):
        logging.getLogger(name).setLevel(library_level)
