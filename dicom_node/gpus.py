"""Which GPUs a worker machine has, found without initialising CUDA.

``dicom-node worker`` starts one Celery worker process per GPU and pins it with
``CUDA_VISIBLE_DEVICES`` *before* the child imports torch: CUDA must never be
initialised in a parent that forks (a forked child cannot use the parent's CUDA
context). So the parent asks ``nvidia-smi`` instead of torch.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["Gpu", "list_gpus", "select_gpus"]


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU as nvidia-smi lists it."""

    index: int
    name: str


def list_gpus() -> list[Gpu]:
    """GPUs listed by ``nvidia-smi``; empty when it is missing or fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        result = subprocess.run(
            [binary, "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    gpus = []
    for line in result.stdout.splitlines():
        index, _, name = line.partition(",")
        if index.strip().isdigit():
            gpus.append(Gpu(int(index), name.strip()))
    return gpus


def select_gpus(spec: str, available: list[Gpu]) -> list[Gpu]:
    """Resolve the ``worker.gpus`` setting against the GPUs present.

    Parameters
    ----------
    spec : str
        ``"auto"`` (all), ``"none"``, or comma-separated indices.
    available : list[Gpu]
        What :func:`list_gpus` found.

    Returns
    -------
    list[Gpu]
        The GPUs to start a worker process on.

    Raises
    ------
    ValueError
        If ``spec`` names an index that is not present, or is malformed.

    Examples
    --------
    >>> select_gpus("none", [Gpu(0, "A")])
    []
    >>> select_gpus("auto", [Gpu(0, "A"), Gpu(1, "B")])
    [Gpu(index=0, name='A'), Gpu(index=1, name='B')]
    """
    text = spec.strip().lower()
    if text == "none":
        return []
    if text == "auto":
        return list(available)
    by_index = {gpu.index: gpu for gpu in available}
    chosen = []
    for part in text.split(","):
        if not part.strip().isdigit():
            raise ValueError(f"worker.gpus must be 'auto', 'none' or indices, got {spec!r}")
        index = int(part)
        if index not in by_index:
            raise ValueError(f"GPU {index} is not present (found {sorted(by_index)})")
        chosen.append(by_index[index])
    return chosen
