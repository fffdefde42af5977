"""Where the development corpus of real vendor series is (``shared/corpus``, see its SOURCES.md).

It lives beside the repository, not in it: ``$DICOM_NODE_CORPUS`` if set, else
the first ``shared/corpus`` found in the folders above the repository
(``../shared/corpus`` for a checkout beside it, ``../../shared/corpus`` for a
git worktree one level deeper). A test that needs it fails with this message
when it is missing; it is never skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["corpus_dir"]

REPO = Path(__file__).resolve().parents[1]


def corpus_dir() -> Path:
    """The corpus folder.

    Raises
    ------
    FileNotFoundError
        If neither ``$DICOM_NODE_CORPUS`` nor a ``shared/corpus`` above the
        repository exists.
    """
    configured = os.environ.get("DICOM_NODE_CORPUS")
    candidates = [Path(configured)] if configured else []
    candidates += [parent / "shared" / "corpus" for parent in REPO.parents]
    for candidate in candidates:
        if (candidate / "SOURCES.md").is_file():
            return candidate
    raise FileNotFoundError(
        "the development corpus is missing: set DICOM_NODE_CORPUS or put shared/corpus "
        f"beside the repository (looked in {', '.join(map(str, candidates))})"
    )
