"""Masks backed by one label map: 104 labels without 104 full-size boolean arrays.

A segmentation bundle gives one integer label per voxel (the argmax over its
channels). Writers and measurements take a mask per label name; building all of
them at once costs one byte per voxel per label (8 GB for 104 labels over 300
slices of 512x512). :class:`LabelMapMasks` is a read-only mapping that builds a
mask only when asked for it and answers the questions asked of every label
(present? how many voxels? what mean value?) from one pass over the label map.
The SEG writer hands the label map itself to highdicom
(:func:`pipelines.writers.seg.write_seg`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import numpy.typing as npt

from pipelines.volume import RegionStats, Volume

__all__ = ["LabelMapMasks"]


class LabelMapMasks(Mapping[str, npt.NDArray[np.bool_]]):
    """Boolean masks by label name, computed on access from one label map.

    Parameters
    ----------
    labelmap : numpy.ndarray
        Integer label per voxel, ``[slice, row, column]``.
    values : Mapping[str, int]
        Label name to its value in the label map.

    Raises
    ------
    ValueError
        If the label map is not of an integer type.
    """

    def __init__(self, labelmap: npt.NDArray[np.integer], values: Mapping[str, int]) -> None:
        if not np.issubdtype(labelmap.dtype, np.integer):
            raise ValueError(f"labelmap must hold integers, got {labelmap.dtype}")
        self.labelmap = labelmap
        self.label_values = dict(values)
        top = max([*self.label_values.values(), int(labelmap.max(initial=0))])
        self._counts = np.bincount(labelmap.reshape(-1), minlength=top + 1)

    def __getitem__(self, name: str) -> npt.NDArray[np.bool_]:
        return np.asarray(self.labelmap == self.label_values[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.label_values)

    def __len__(self) -> int:
        return len(self.label_values)

    def voxels(self, name: str) -> int:
        """Voxels of a label."""
        return int(self._counts[self.label_values[name]])

    def present(self, name: str) -> bool:
        """Whether a label has at least one voxel."""
        return self.voxels(name) > 0

    def measure(self, volume: Volume) -> dict[str, RegionStats]:
        """Volume and mean value of every label in one pass.

        Parameters
        ----------
        volume : Volume
            The volume the label map lies on.

        Returns
        -------
        dict[str, RegionStats]
            By label name; the same numbers :meth:`Volume.measure` gives per mask.

        Raises
        ------
        ValueError
            If the shapes differ.
        """
        if self.labelmap.shape != volume.shape:
            raise ValueError(f"labelmap has shape {self.labelmap.shape}, expected {volume.shape}")
        sums = np.bincount(
            self.labelmap.reshape(-1),
            weights=volume.array.reshape(-1).astype(np.float64),
            minlength=len(self._counts),
        )
        stats: dict[str, RegionStats] = {}
        for name, value in self.label_values.items():
            count = int(self._counts[value])
            mean = float(sums[value] / count) if count else None
            stats[name] = RegionStats(
                voxels=count, volume_ml=count * volume.voxel_volume_ml, mean_hu=mean
            )
        return stats

    def segment_map(self, numbers: Mapping[str, int]) -> npt.NDArray[np.integer]:
        """The label map renumbered to segment numbers (0 where no listed label).

        Parameters
        ----------
        numbers : Mapping[str, int]
            Label name to segment number.

        Returns
        -------
        numpy.ndarray
            uint8 (or uint16 beyond 255 segments), shape of the label map.
        """
        dtype = np.uint8 if max(numbers.values(), default=0) < 256 else np.uint16
        lut = np.zeros(len(self._counts), dtype=dtype)
        for name, number in numbers.items():
            lut[self.label_values[name]] = number
        mapped: npt.NDArray[np.integer] = lut[self.labelmap]
        return mapped
