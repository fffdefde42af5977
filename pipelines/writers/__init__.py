"""Writers that turn a pipeline's masks and measurements into DICOM datasets.

- :func:`write_seg`: BINARY Segmentation, one segment per non-empty label.
- :func:`write_sr`: Comprehensive 3D SR, TID 1500, one TID 1411 group per segment.

Writers return datasets and never write files or choose UIDs themselves: the
UIDs come from :mod:`pipelines.uids`, the files are written by
:mod:`pipelines.run`.
"""

from __future__ import annotations

from pipelines.writers.seg import segment_numbers, write_seg
from pipelines.writers.sr import write_sr

__all__ = ["segment_numbers", "write_seg", "write_sr"]
