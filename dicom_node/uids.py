"""Validation of UIDs that arrive from the network before they name anything on disk."""

from __future__ import annotations

import re

from dicom_node.errors import InvalidUID

__all__ = ["validate_uid"]

# PS3.5 9.1: components of digits separated by ".", no leading zero in a
# multi-digit component, at most 64 characters. Only [0-9.] can pass, so a
# valid UID can never hold "/", "\\" or "..".
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def validate_uid(value: object, what: str) -> str:
    """Return ``value`` if it is a valid DICOM UID, else refuse it.

    Parameters
    ----------
    value : object
        The candidate, usually a ``str`` read from a data set.
    what : str
        The attribute's name, used in the reason (e.g. ``"SOPInstanceUID"``).

    Returns
    -------
    str
        The UID, stripped of the trailing NUL padding some senders leave.

    Raises
    ------
    InvalidUID
        If the value is missing, longer than 64 characters or not UID syntax.
        The bad value is not put into the reason: it could hold anything.
    """
    if value is None:
        raise InvalidUID(f"{what} is missing")
    text = str(value).rstrip("\x00 ")
    if not text:
        raise InvalidUID(f"{what} is empty")
    if len(text) > 64:
        raise InvalidUID(f"{what} is longer than 64 characters")
    if not _UID.match(text):
        raise InvalidUID(f"{what} is not a valid UID")
    return text
