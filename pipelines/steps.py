"""The steps of a job, so that every refusal and failure says which one and what was wrong.

:func:`step` wraps one step of :func:`pipelines.run.run_pipeline` (``load``,
``model``, ``write SEG``, ``write SR``, ``write SC``). A deliberate refusal
(:class:`~pipelines.errors.PipelineError`) leaves it with its reason prefixed by
the step: "load: slice spacing is not uniform ...". Anything else a library
raises becomes a :class:`StepFailed` whose reason names the step and what was
wrong, in words an admin can act on, without the exception's text: library
messages quote attribute values ("Unable to convert '1961-07-23' to 'DA'
object" quotes a birth date), and a reason is shown on the dashboard and
written to logs. :func:`describe_failure` knows the failures real headers cause
(an invalid Specific Character Set, a date that is not DICOM, a missing
attribute, an over-long value) and says them that way; any other is named by
its type and the line of library code that raised it.

Examples
--------
>>> describe_failure(ValueError("'' is not a valid SpecificCharacterSetValues"))
"the source's Specific Character Set is not valid"
>>> describe_failure(ValueError("Unable to convert '1961-07-23' to 'DA' object"))
'a date (VR DA) in the source headers is not valid DICOM'
>>> describe_failure(AttributeError("'FileDataset' object has no attribute 'StudyID'"))
'the source has no StudyID'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from pipelines.errors import PipelineError

__all__ = ["Step", "StepFailed", "describe_failure", "step"]

logger = logging.getLogger(__name__)


class Step(StrEnum):
    """The steps of a job on the worker; export is the node's (``export: ...``)."""

    LOAD = "load"
    MODEL = "model"
    WRITE_SEG = "write SEG"
    WRITE_SR = "write SR"
    WRITE_SC = "write SC"
    WRITE_GSPS = "write GSPS"
    WRITE_RTSTRUCT = "write RTSTRUCT"
    WRITE_KOS = "write KOS"
    WRITE_PDF = "write PDF"


class StepFailed(PipelineError):
    """A step failed on something no pipeline refuses on purpose (job FAILED)."""


_VR_WORDS = {"DA": "a date", "TM": "a time", "DT": "a date-time"}

#: (exception type name, message pattern, what it means); the patterns only ever
#: pick keywords and VRs out of a message, never a value.
_KNOWN: list[tuple[str, re.Pattern[str], str]] = [
    (
        "ValueError",
        re.compile(r"is not a valid SpecificCharacterSetValues|SpecificCharacterSet"),
        "the source's Specific Character Set is not valid",
    ),
    (
        "ValueError",
        re.compile(r"is not a valid PatientSexValues"),
        "the source's Patient's Sex is not M, F, O or empty",
    ),
    (
        "ValueError",
        re.compile(r"to '(?P<vr>DA|TM|DT)' object"),
        "{vr_words} (VR {vr}) in the source headers is not valid DICOM",
    ),
    (
        "ValueError",
        re.compile(r"maximum length of \d+ allowed for VR (?P<vr>[A-Z]{2})"),
        "a value (VR {vr}) in the source headers is longer than its VR allows",
    ),
    (
        "ValueError",
        re.compile(r"Invalid value for VR (?P<vr>[A-Z]{2})"),
        "a value (VR {vr}) in the source headers is not valid for its VR",
    ),
    (
        "AttributeError",
        re.compile(r"has no attribute '(?P<keyword>[A-Za-z0-9]+)'"),
        "the source has no {keyword}",
    ),
]


def _innermost(exc: BaseException) -> str:
    """Where an exception was raised: the last frame's file (from its package) and line."""
    tb = exc.__traceback__
    if tb is None:
        return "an unknown place"
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename)
    parts = path.parts
    anchor = next(
        (i for i, part in enumerate(parts) if part in ("site-packages", "dist-packages")), None
    )
    shown = "/".join(parts[anchor + 1 :]) if anchor is not None else path.name
    return f"{shown}:{tb.tb_lineno}"


def describe_failure(exc: BaseException) -> str:
    """What went wrong, in words that hold no attribute value.

    Parameters
    ----------
    exc : BaseException
        What a library raised.

    Returns
    -------
    str
        A known failure told plainly ("the source has no StudyID"), else
        "unexpected <type> at <file>:<line>".
    """
    name = type(exc).__name__
    message = str(exc)
    for kind, pattern, meaning in _KNOWN:
        match = pattern.search(message)
        if name != kind or match is None:
            continue
        found = match.groupdict()
        keyword = found.get("keyword")
        if keyword is not None and tag_for_keyword(keyword) is None:
            continue  # not a DICOM keyword: the message is about something else
        vr = found.get("vr", "")
        return meaning.format(vr=vr, vr_words=_VR_WORDS.get(vr, "a value"), keyword=keyword)
    if isinstance(exc, KeyError) and exc.args:
        key = exc.args[0]
        keyword = keyword_for_tag(key) if isinstance(key, int) else ""
        if isinstance(key, str) and tag_for_keyword(key) is not None:
            keyword = key
        if keyword:
            return f"the source has no {keyword}"
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError":
        return "out of GPU memory" if name == "OutOfMemoryError" else "out of memory"
    if isinstance(exc, OSError) and exc.strerror:
        # strerror only: the file name may be a patient's folder on a user's disk.
        return f"{exc.strerror.lower()} ({name})"
    return f"unexpected {name} at {_innermost(exc)}"


@contextmanager
def step(name: Step) -> Iterator[None]:
    """Run one step of a job; a failure inside says which step and what was wrong.

    Parameters
    ----------
    name : Step
        The step.

    Yields
    ------
    None
        Run the step's code in the ``with`` block.

    Raises
    ------
    PipelineError
        A refusal raised inside, its reason prefixed with the step.
    StepFailed
        For any other exception (except ``KeyboardInterrupt`` and ``SystemExit``,
        which pass, and Celery's time limits, which are BaseExceptions too).
    """
    try:
        yield
    except PipelineError as exc:
        if not exc.reason.startswith(f"{name}: "):
            exc.reason = f"{name}: {exc.reason}"
            exc.args = (exc.reason,)
        raise
    except Exception as exc:
        reason = f"{name}: {describe_failure(exc)}"
        # The traceback's frames help whoever debugs it; the log keeps its text out.
        logger.exception("step failed: %s", reason)
        raise StepFailed(reason) from exc
