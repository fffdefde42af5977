"""Flag the images that hold findings with a Key Object Selection document (PS3.3 A.35.4).

Which images are key (:func:`segmentation_key_images`,
:func:`classification_key_images`):

- segmentation: for each label the pipeline marks as a finding
  (``finding: true``), the slice where its cross-section is largest, the image
  its SR planar region points to. Anatomy is no finding, so an anatomy-only
  pipeline flags nothing and writes no KOS;
- classification: each radiograph on which a label is present (its probability
  reaches the label's threshold).

The document title is (113000, DCM, "Of Interest"); the description names the
findings; the observer is the algorithm as a device (its Device UID), and the
object carries the algorithm's Contributing Equipment item like every result.
The PDF report shows the same key images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.outline import Outlines
from pipelines.spec import PipelineSpec
from pipelines.uids import ResultUIDs
from pipelines.writers.seg import MANUFACTURER, contributing_equipment
from pipelines.writers.sr import device_observer

__all__ = [
    "KOS_SERIES_NUMBER",
    "KeyImage",
    "classification_key_images",
    "segmentation_key_images",
    "write_kos",
]

logger = logging.getLogger(__name__)

#: Series Number of the key object selection.
KOS_SERIES_NUMBER = 9006


@dataclass(frozen=True, slots=True)
class KeyImage:
    """One key image: which source image, and why.

    Attributes
    ----------
    index : int
        The slice index in the volume, or the radiograph's position in the series.
    header : pydicom.dataset.Dataset
        The source image's header.
    findings : tuple[str, ...]
        The labels (their display names) this image is key for.
    """

    index: int
    header: Dataset
    findings: tuple[str, ...]


def segmentation_key_images(
    spec: PipelineSpec, outlines: Outlines, headers: Sequence[Dataset]
) -> list[KeyImage]:
    """The key image of each finding of a segmentation: its largest cross-section.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline; its labels with ``finding: true`` are findings.
    outlines : Outlines
        The masks' outlines.
    headers : Sequence[pydicom.dataset.Dataset]
        The source header of each slice.

    Returns
    -------
    list[KeyImage]
        One per slice that is key for a finding, in slice order; empty when the
        pipeline marks no findings or none was found.
    """
    by_slice: dict[int, list[str]] = {}
    for label in spec.labels:
        k = outlines.representative_slice(label.name) if label.finding else None
        if k is not None:
            by_slice.setdefault(k, []).append(label.label)
    return [KeyImage(k, headers[k], tuple(names)) for k, names in sorted(by_slice.items())]


def classification_key_images(
    spec: PipelineSpec,
    probabilities: Sequence[Mapping[str, float]],
    headers: Sequence[Dataset],
) -> list[KeyImage]:
    """The radiographs on which a label is present.

    Parameters
    ----------
    spec : PipelineSpec
        The pipeline; each label's threshold decides presence.
    probabilities : Sequence[Mapping[str, float]]
        Per image, the probability of each label by name.
    headers : Sequence[pydicom.dataset.Dataset]
        Each image's header.

    Returns
    -------
    list[KeyImage]
        In series order; empty when nothing is present.
    """
    keys = []
    for index, (result, header) in enumerate(zip(probabilities, headers, strict=True)):
        present = tuple(
            label.label for label in spec.labels if result[label.name] >= label.threshold
        )
        if present:
            keys.append(KeyImage(index, header, present))
    return keys


def write_kos(
    keys: Sequence[KeyImage],
    spec: PipelineSpec,
    uids: ResultUIDs,
    *,
    series_number: int = KOS_SERIES_NUMBER,
) -> Dataset:
    """Build the Key Object Selection document of a job.

    Parameters
    ----------
    keys : Sequence[KeyImage]
        The key images (:func:`segmentation_key_images` or
        :func:`classification_key_images`).
    spec : PipelineSpec
        The pipeline (algorithm, version, series description).
    uids : ResultUIDs
        Where the UIDs come from (``kos-series``, ``kos``).
    series_number : int
        Series Number of the document.

    Returns
    -------
    pydicom.dataset.Dataset
        A ``highdicom.ko.KeyObjectSelectionDocument``.

    Raises
    ------
    ValueError
        If there is no key image (a KOS must select at least one object).
    """
    if not keys:
        raise ValueError("there is no key image to flag")
    images = list({str(key.header.SOPInstanceUID): key.header for key in keys}.values())
    findings = sorted({name for key in keys for name in key.findings})
    description = f"AI findings: {', '.join(findings)}"
    if not spec.cleared_for_clinical_use:
        description += " (not for diagnosis)"
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=images,
        observer_device_context=device_observer(spec, uids),
        description=description[:1024],
    )
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=images,
        content=content,
        series_instance_uid=uids.uid("kos-series"),
        series_number=series_number,
        sop_instance_uid=uids.uid("kos"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        contributing_equipment=[contributing_equipment(spec, uids)],
    )
    document.SeriesDescription = spec.series_description[:64]
    logger.info("kos images=%d", len(images))
    return document
