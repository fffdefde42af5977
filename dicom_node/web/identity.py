"""Identifying values on the pages: who may see them, and masking for the rest.

The state DB holds the accession number and nothing more personal. The job
and study pages show the patient's name, read from the header of one stored
instance, to admins, and to viewers only when ``web.show_patient_names`` is
set; everyone else sees a mask. The REST API never returns a patient's name.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

__all__ = ["PatientNames", "mask"]


def mask(value: str, *, initials: bool = True) -> str:
    """Hide a value but its first letter (of each part, for names).

    Parameters
    ----------
    value : str
        A Person Name (``DOE^JANE``) or an identifier (an accession number).
    initials : bool
        Keep the first letter of each part (names); False keeps only the first
        character (identifiers, where a part's first digit tells too much).

    Returns
    -------
    str
        The masked value; separators (``^``, space, ``-``, ``=``) stay.

    Examples
    --------
    >>> mask("DOE^JANE")
    'D**^J***'
    >>> mask("ACC-1001", initials=False)
    'A**-****'
    >>> mask("")
    ''
    """
    out = []
    first = True
    for char in value:
        if char in "^ -=":
            out.append(char)
            first = first or initials
        elif first:
            out.append(char)
            first = False
        else:
            out.append("*")
    return "".join(out)


class PatientNames:
    """Patient's Name of a study, read once from a stored header and kept (LRU).

    Parameters
    ----------
    size : int
        Studies to remember.
    """

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, study_uid: str, instance_path: Path | None) -> str:
        """The Patient's Name in ``instance_path``, or ``""`` when it cannot be read."""
        with self._lock:
            if study_uid in self._cache:
                self._cache.move_to_end(study_uid)
                return self._cache[study_uid]
        name = ""
        if instance_path is not None:
            try:
                header = dcmread(
                    instance_path, stop_before_pixels=True, specific_tags=["PatientName"]
                )
                name = str(header.get("PatientName", "") or "")
            except (InvalidDicomError, OSError, ValueError):
                name = ""
        with self._lock:
            self._cache[study_uid] = name
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return name
