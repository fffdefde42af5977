"""Writers that turn a pipeline's results into DICOM datasets.

- :func:`write_seg`: Segmentation (BINARY or LABELMAP), one segment per non-empty label.
- :func:`write_sr`: Comprehensive 3D SR, TID 1500, one TID 1411 group per segment.
- :func:`write_classification_sr`: Comprehensive 3D SR, TID 1500, one TID 1501
  group per image and label: the finding with its probability.
- :func:`write_detection_sr`: Comprehensive 3D SR, TID 1500, one TID 1411 group
  per detected box: its rectangle on the source slices, size and score.
- :func:`write_sc`: burned-in overlays as Secondary Capture images.
- :func:`write_rejection_note`: an IHE IOCM rejection note (Key Object
  Selection) that withdraws superseded results; the node decides when.

Writers return datasets and never write files or choose UIDs themselves: the
UIDs come from :mod:`pipelines.uids`, the files are written by
:mod:`pipelines.run`.
"""

from __future__ import annotations

from pipelines.writers.classification_sr import write_classification_sr
from pipelines.writers.detection_sr import write_detection_sr
from pipelines.writers.kos import write_rejection_note
from pipelines.writers.sc import write_sc
from pipelines.writers.seg import exclusive_masks, segment_numbers, write_seg
from pipelines.writers.sr import write_sr

__all__ = [
    "exclusive_masks",
    "segment_numbers",
    "write_classification_sr",
    "write_rejection_note",
    "write_detection_sr",
    "write_sc",
    "write_seg",
    "write_sr",
]
