"""Names for studies that are safe to log.

Logs name a study by :func:`study_tag`, a short hash of its Study Instance UID,
never by patient name, patient ID or accession number (DESIGN.md promise 5).
The same tag is shown in the dashboard, so an admin can match a log line to a
study without the log holding PHI.
"""

from __future__ import annotations

import hashlib

__all__ = ["study_tag"]


def study_tag(study_uid: str) -> str:
    """Return a short, stable, non-reversible tag for a Study Instance UID.

    Parameters
    ----------
    study_uid : str
        Study Instance UID.

    Returns
    -------
    str
        ``"s-"`` followed by 10 hex digits of the SHA-256 of the UID.

    Examples
    --------
    >>> study_tag("1.2.3")
    's-c47f5b18b8'
    """
    return "s-" + hashlib.sha256(study_uid.encode("ascii", "replace")).hexdigest()[:10]
