"""Writers that turn a pipeline's results into DICOM datasets, one module per result kind.

- :func:`write_seg`: Segmentation (BINARY or LABELMAP), one segment per non-empty label.
- :func:`write_sr`: Comprehensive 3D SR, TID 1500: per segment a TID 1411 group
  (the segment, volume, mean) and a TID 1410 group (its outline on its key image).
- :func:`write_classification_sr`: Comprehensive 3D SR, TID 1500, one TID 1501
  group per image and label: the finding with its probability.
- :func:`write_detection_sr`: Comprehensive 3D SR, TID 1500, one TID 1411 group
  per detected box: its rectangle on the source slices, size and score.
- :func:`write_sc`: burned-in overlays as Secondary Capture images.
- :func:`write_gsps`: segment outlines as Grayscale Softcopy Presentation States.
- :func:`write_rtstruct`: segments as an RT Structure Set.
- :func:`write_kos`: the images that hold findings, as Key Object Selection.
- :func:`write_report_pdf`: the report a person reads, as Encapsulated PDF.

Writers return datasets and never write files or choose UIDs themselves: the
UIDs come from :mod:`pipelines.uids`, the files are written by
:mod:`pipelines.run`.
"""

from __future__ import annotations

from pipelines.writers.classification_sr import write_classification_sr
from pipelines.writers.detection_sr import write_detection_sr
from pipelines.writers.gsps import write_gsps
from pipelines.writers.kos import (
    KeyImage,
    classification_key_images,
    segmentation_key_images,
    write_kos,
)
from pipelines.writers.report_pdf import (
    classification_report,
    segmentation_report,
    write_report_pdf,
)
from pipelines.writers.rtstruct import write_rtstruct
from pipelines.writers.sc import write_sc
from pipelines.writers.seg import exclusive_masks, segment_numbers, write_seg
from pipelines.writers.sr import write_sr

__all__ = [
    "KeyImage",
    "classification_key_images",
    "classification_report",
    "exclusive_masks",
    "segment_numbers",
    "segmentation_key_images",
    "segmentation_report",
    "write_classification_sr",
    "write_detection_sr",
    "write_gsps",
    "write_kos",
    "write_report_pdf",
    "write_rtstruct",
    "write_sc",
    "write_seg",
    "write_sr",
]
