"""Synthetic series as scanners send them, made from the chest phantom.

- :func:`tilted_uneven_ct`: a head-first CT taken with a tilted gantry, in two
  runs of different spacing (the phantom sampled on sheared planes, so its
  structures are known on every source plane);
- :func:`enhanced_ct`: the phantom's slices converted into Legacy Converted
  Enhanced CT images (PS3.3 A.70) by highdicom's own converter, optionally
  split over several multi-frame files of one series, their frames out of
  spatial order.

There is no real Enhanced CT in the corpus; the Legacy Converted Enhanced CT
is the standard's own multi-frame form of a CT series (Shared and Per-frame
Functional Groups: Plane Position, Plane Orientation, Pixel Measures, Pixel
Value Transformation), which is what the node's geometry reads.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from dicom_node.phantom import ChestPhantom, PhantomStudy, SlicePlane

__all__ = ["TiltedStudy", "enhanced_ct", "frame_positions", "tilted_uneven_ct"]


@dataclass(frozen=True, slots=True)
class TiltedStudy:
    """A tilted, unevenly spaced phantom series on disk.

    Attributes
    ----------
    phantom : ChestPhantom
        The anatomy (sampled at any patient point with ``labels_at``).
    study : PhantomStudy
        UIDs and paths of the written slices, feet to head.
    planes : tuple[SlicePlane, ...]
        Where each written slice lies, in the order of ``study.paths``.
    tilt_deg : float
        The gantry tilt.
    steps_mm : tuple[float, ...]
        Table travel between neighbouring slices.
    """

    phantom: ChestPhantom
    study: PhantomStudy
    planes: tuple[SlicePlane, ...]
    tilt_deg: float
    steps_mm: tuple[float, ...]


def tilted_uneven_ct(
    folder: Path,
    phantom: ChestPhantom,
    *,
    tilt_deg: float = 18.0,
    runs: Sequence[tuple[int, float]] = ((10, 4.0), (12, 7.0)),
    patient_name: str = "PHANTOM^TILTED",
) -> TiltedStudy:
    """Write the phantom as a tilted-gantry CT made of runs of different spacing.

    Parameters
    ----------
    folder : pathlib.Path
        Where the slices go.
    phantom : ChestPhantom
        The anatomy and in-plane sampling.
    tilt_deg : float
        Gantry/Detector Tilt.
    runs : Sequence[tuple[int, float]]
        ``(steps, table travel in mm)`` per run, feet to head: the default is
        ten 4 mm steps, then twelve 7 mm steps (as a head CT of the posterior
        fossa, then the cerebrum).
    patient_name : str
        Patient's Name.

    Returns
    -------
    TiltedStudy
        The study, its planes and how they were made.
    """
    steps = tuple(float(step) for count, step in runs for _ in range(count))
    planes = phantom.tilted_planes(tilt_deg, steps)
    study = phantom.write(folder, patient_name=patient_name, planes=planes)
    return TiltedStudy(phantom, study, planes, tilt_deg, steps)


def enhanced_ct(
    paths: Sequence[Path], folder: Path, *, files: int = 1, seed: int = 3
) -> list[Path]:
    """Convert single-frame CT slices into Legacy Converted Enhanced CT images.

    Parameters
    ----------
    paths : Sequence[pathlib.Path]
        The slices of one series.
    folder : pathlib.Path
        Where the multi-frame files go (created).
    files : int
        How many multi-frame files share the series; slices are dealt out in
        turn (file ``i`` holds slices ``i, i + files, ...``), so each file's
        frames are spread over the whole volume.
    seed : int
        Each file's frames are shuffled with this seed, so that frame order is
        not slice order.

    Returns
    -------
    list[pathlib.Path]
        The written files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    datasets = [pydicom.dcmread(path) for path in paths]
    series_uid = str(datasets[0].SeriesInstanceUID)
    shuffle = random.Random(seed)
    written = []
    for index in range(files):
        part = datasets[index::files]
        shuffle.shuffle(part)
        image = hd.legacy.LegacyConvertedEnhancedCTImage(
            part,
            series_instance_uid=series_uid,
            series_number=int(datasets[0].SeriesNumber),
            sop_instance_uid=generate_uid(),
            instance_number=index + 1,
            include_dimension_index=False,
        )
        path = folder / f"enhanced-{index + 1}.dcm"
        image.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def frame_positions(path: Path) -> dict[int, np.ndarray]:
    """Image Position (Patient) of every frame of a multi-frame file, by frame number."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return {
        number: np.array([float(v) for v in groups.PlanePositionSequence[0].ImagePositionPatient])
        for number, groups in enumerate(header.PerFrameFunctionalGroupsSequence, start=1)
    }
