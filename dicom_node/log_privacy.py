"""No PHI in any log, from any library (DESIGN.md promise 5).

The node's own messages name studies by tag and never quote attribute values.
Libraries are not so careful: pydicom warns "Invalid value for VR DA:
'1961-07-23'", highdicom warns that "DOE JOHN" is an unlikely person name and
logs it again at WARNING, and an exception's text (highdicom's "Unable to
convert '1961-07-23' to 'DA' object") lands in the log with its traceback.

:func:`keep_values_out_of_logs` closes every way in, for the whole process, by
installing a log record factory (so it holds whichever handlers Celery, uvicorn
or a later ``basicConfig`` set up) and routing Python warnings into logging
(``logging.captureWarnings``):

- **Warnings** (logger ``py.warnings``) keep their category and where they were
  raised, never their text: "UserWarning at highdicom/base.py:199 (text
  withheld)".
- **Records of other libraries** keep their logger, level and location, never
  their text, except for the infrastructure that never sees DICOM data
  (:data:`TRUSTED_LOGGERS`: Celery's own workings, kombu, Redis, uvicorn's
  server messages), pynetdicom from WARNING up (association, TLS and network
  errors: :data:`TRUSTED_FROM_LEVEL`) and the node's own packages.
- **Exceptions** in any record are rendered with their types and frames
  (file, line, function, code), never their messages; only the node's own
  refusals (:class:`~dicom_node.errors.NodeError`,
  :class:`~pipelines.errors.PipelineError`), whose reasons are written to be
  shown, and the infrastructure's (Celery's "worker lost", kombu's "connection
  refused") keep their text. An exception passed as a ``%s`` argument is told the
  same way; an ``OSError`` keeps its error text, not its file name.

Uncaught exceptions (``sys.excepthook``, ``threading.excepthook``) are logged
the same way instead of printed raw. Every CLI entry point calls it
(:func:`dicom_node.cli.options.configure_logging`), so ``serve``, ``worker``
(the Celery main process and its pool children, which inherit it), the
dashboard and every other command are covered.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from dicom_node.errors import NodeError
from pipelines.errors import PipelineError

__all__ = [
    "OWN_LOGGERS",
    "TRUSTED_LOGGERS",
    "keep_values_out_of_logs",
    "safe_exception",
    "safe_traceback",
]

#: The node's own packages: their messages are written without values.
OWN_LOGGERS = ("dicom_node", "pipelines", "worker", "__main__")
#: Infrastructure that never sees DICOM data: its messages are kept. Celery's
#: ``celery.redirected`` (whatever a library prints) is not among them.
TRUSTED_LOGGERS = (
    "celery.app",
    "celery.apps",
    "celery.beat",
    "celery.bootsteps",
    "celery.concurrency",
    "celery.pool",
    "celery.utils",
    "celery.worker",
    "celery.task",
    "kombu",
    "amqp",
    "redis",
    "billiard",
    "uvicorn.error",
    "multiprocessing",
)
#: Libraries that do see DICOM data but speak of the protocol from this level up
#: (pynetdicom's association and TLS errors); below it (-vvv) they dump data sets.
TRUSTED_FROM_LEVEL = {"pynetdicom": logging.WARNING}
#: Packages whose exceptions describe infrastructure (a worker lost, a time limit, a
#: broker connection), never attribute values: their text is kept.
_INFRASTRUCTURE_ERRORS = ("celery.", "billiard.", "kombu.", "redis.", "amqp.")
_WARNINGS_LOGGER = "py.warnings"
#: logging.captureWarnings formats "file:line: Category: text"; only the first three stay.
_WARNING_HEAD = re.compile(r"^(?P<file>.*?):(?P<line>\d+): (?P<category>[A-Za-z_][\w.]*):")
#: Exception types whose text is written to be shown (reasons without PHI).
_SHOWN = (NodeError, PipelineError)
_WITHHELD = "(text withheld)"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _short_path(path: str) -> str:
    """A source file from its package down: ``highdicom/base.py``, not the venv's path."""
    parts = Path(path).parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    for index, part in enumerate(parts):
        if part in ("dicom_node", "pipelines", "worker", "tests"):
            return "/".join(parts[index:])
    return Path(path).name


def safe_exception(exc: BaseException) -> str:
    """An exception as one line that holds no value from its message.

    Parameters
    ----------
    exc : BaseException
        Any exception.

    Returns
    -------
    str
        ``Type: reason`` for the node's own refusals, ``OSError: [Errno 28] No
        space left on device`` for system errors (no file name), else ``Type
        (text withheld)``.

    Examples
    --------
    >>> safe_exception(ValueError("Unable to convert '1961-07-23' to 'DA' object"))
    'ValueError (text withheld)'
    >>> safe_exception(NodeError("the spool is full"))
    'NodeError: the spool is full'
    """
    name = type(exc).__qualname__
    if isinstance(exc, _SHOWN) or type(exc).__module__.startswith(_INFRASTRUCTURE_ERRORS):
        return f"{name}: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        errno = f"[Errno {exc.errno}] " if exc.errno is not None else ""
        return f"{name}: {errno}{exc.strerror}"
    return f"{name} {_WITHHELD}"


def safe_traceback(exc_info: ExcInfo) -> str:
    """A traceback with every frame (file, line, function, code) and no exception text.

    Chained exceptions (``raise ... from``, or raised while handling) are shown
    as Python shows them, each told by :func:`safe_exception`.

    Parameters
    ----------
    exc_info : tuple
        ``(type, value, traceback)`` as ``sys.exc_info()`` returns it.

    Returns
    -------
    str
        The traceback's text.
    """
    chain: list[tuple[BaseException, str]] = []
    exc: BaseException | None = exc_info[1]
    link = ""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append((exc, link))
        if exc.__cause__ is not None:
            exc, link = exc.__cause__, "The above exception was the direct cause of the following"
        elif exc.__context__ is not None and not exc.__suppress_context__:
            exc, link = exc.__context__, "During handling of the above exception, another occurred"
        else:
            exc = None
    lines: list[str] = []
    for exc, link in reversed(chain):
        lines.append("Traceback (most recent call last):")
        for frame in traceback.extract_tb(exc.__traceback__):
            lines.append(
                f'  File "{_short_path(frame.filename)}", line {frame.lineno}, in {frame.name}'
            )
            if frame.line:
                lines.append(f"    {frame.line.strip()}")
        lines.append(safe_exception(exc))
        if link:
            lines.append(f"\n{link} exception:\n")
    return "\n".join(lines).rstrip()


def _safe_arg(value: object) -> object:
    return safe_exception(value) if isinstance(value, BaseException) else value


def _sanitise(record: logging.LogRecord) -> None:
    """Take every value out of a record, in place (see the module docstring)."""
    name = record.name
    where = f"{_short_path(record.pathname)}:{record.lineno}"
    if name == _WARNINGS_LOGGER:
        text = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
        head = _WARNING_HEAD.match(text or str(record.msg))
        if head:
            where = f"{_short_path(head['file'])}:{head['line']}"
            record.msg = f"{head['category']} at {where} {_WITHHELD}"
        else:
            record.msg = f"a warning {_WITHHELD}"
        record.args = None
    elif not (
        _under(name, OWN_LOGGERS)
        or _under(name, TRUSTED_LOGGERS)
        or any(
            _under(name, (p,)) and record.levelno >= lvl for p, lvl in TRUSTED_FROM_LEVEL.items()
        )
    ):
        record.msg = f"{record.levelname} record of {name} at {where} {_WITHHELD}"
        record.args = None
    elif isinstance(record.msg, BaseException):
        # logger.exception(exc): the message is the exception itself.
        record.msg, record.args = safe_exception(record.msg), None
    elif isinstance(record.args, tuple):
        record.args = tuple(_safe_arg(a) for a in record.args)
    elif isinstance(record.args, Mapping):
        # Celery's task log lines pass a mapping; its "exc" is the exception's repr.
        record.args = {
            k: (_WITHHELD if k == "exc" else _safe_arg(v)) for k, v in record.args.items()
        }
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = safe_traceback(record.exc_info)
    record.exc_info = None


_installed: Callable[..., logging.LogRecord] | None = None


def keep_values_out_of_logs() -> None:
    """Make every log record of this process free of attribute values (idempotent).

    Installs a record factory that applies the rules of the module docstring to
    each record as it is made, and routes Python warnings into logging.
    """
    global _installed
    logging.captureWarnings(True)
    current = logging.getLogRecordFactory()
    if current is _installed:
        return
    make = current

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            _sanitise(record)
        except Exception:  # a log call must never fail; nothing of the record survives
            record.msg, record.args, record.exc_info = "log record withheld", None, None
        return record

    logging.setLogRecordFactory(factory)
    _installed = factory
    # An exception nobody caught would be printed raw to stderr (the service's log).
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    logging.getLogger("dicom_node").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    logging.getLogger("dicom_node").critical(
        "uncaught exception in thread %s",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
