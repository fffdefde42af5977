"""Judges of the DICOM objects the node writes, shared by every test that writes one.

DESIGN.md: ``dciodvfy`` (dicom3tools) judges every object. It exits 0 even when
it reports errors, so the judge reads its output.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["dciodvfy_errors", "dciodvfy_report"]


def dciodvfy_report(path: Path) -> list[str]:
    """Run ``dciodvfy`` on a file and return every line it prints.

    Parameters
    ----------
    path : pathlib.Path
        A DICOM Part 10 file.

    Returns
    -------
    list[str]
        Its stdout and stderr lines, stripped, without blank lines.

    Raises
    ------
    FileNotFoundError
        If ``dciodvfy`` is not installed (a missing judge fails the test, never skips it).
    RuntimeError
        If ``dciodvfy`` ends abnormally or prints nothing at all.
    """
    done = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode not in (0, 1) or not lines:
        raise RuntimeError(f"dciodvfy exited {done.returncode} on {path}: {lines[:5]}")
    return lines


def dciodvfy_errors(path: Path) -> list[str]:
    """Return the lines of ``dciodvfy``'s report that start with "Error".

    Parameters
    ----------
    path : pathlib.Path
        A DICOM Part 10 file.

    Returns
    -------
    list[str]
        The error lines; empty when the object is valid.
    """
    return [line for line in dciodvfy_report(path) if line.startswith("Error")]
