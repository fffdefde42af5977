"""The small phantom of the pipeline tests, and a way to derive broken series from it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicom_node.phantom import ChestPhantom, PhantomStudy
from pipelines.manifest import JobManifest

__all__ = ["SENTINEL_NAME", "SMALL", "PipelineResult", "rewrite_series"]

#: A patient name that must never reach a log.
SENTINEL_NAME = "SENTINEL^PHI^DO-NOT-LOG"

#: A small but sane chest: 40 slices of 128x128, 2.8 mm pixels, 5 mm slices.
SMALL = ChestPhantom(slices=40, size=128, pixel_spacing_mm=2.8, slice_thickness_mm=5.0)


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """One run of ``ct-body-lung`` on the small phantom."""

    study: PhantomStudy
    manifest: JobManifest
    output_dir: Path


def rewrite_series(
    paths: Sequence[Path], folder: Path, edit: Callable[[Dataset, int], None]
) -> list[Path]:
    """Copy a series into ``folder``, letting ``edit(dataset, index)`` change each slice.

    Parameters
    ----------
    paths : Sequence[pathlib.Path]
        Source files.
    folder : pathlib.Path
        Destination (created).
    edit : Callable[[pydicom.dataset.Dataset, int], None]
        Called on each full dataset (with Pixel Data) before it is written.

    Returns
    -------
    list[pathlib.Path]
        The new files, in the order of ``paths``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for index, path in enumerate(paths):
        dataset = pydicom.dcmread(path)
        edit(dataset, index)
        target = folder / path.name
        dataset.save_as(target, enforce_file_format=True)
        out.append(target)
    return out
