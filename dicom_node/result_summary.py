"""Read back what a pipeline delivered: SEG segment labels and TID 1500 measurements.

Used by the demo's summary and by the end-to-end tests to check the objects
that actually arrived in the archive, not what the worker meant to write.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset

__all__ = ["segment_labels", "sr_measurements"]


def segment_labels(seg: Dataset) -> dict[int, str]:
    """Segment Number to Segment Label of a Segmentation (PS3.3 C.8.20.4)."""
    return {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}


def _items(ds: Dataset) -> Iterator[Dataset]:
    yield from ds.get("ContentSequence", [])


def _meaning(item: Dataset) -> str:
    codes = item.get("ConceptNameCodeSequence")
    return str(codes[0].CodeMeaning) if codes else ""


def _referenced_segment(group: Dataset) -> int | None:
    for item in _items(group):
        if item.get("ValueType") == "IMAGE":
            for ref in item.get("ReferencedSOPSequence", []):
                numbers = ref.get("ReferencedSegmentNumber")
                if numbers is not None:
                    return int(numbers[0] if isinstance(numbers, list) else numbers)
    return None


def _groups(ds: Dataset) -> Iterator[Dataset]:
    for item in _items(ds):
        if item.get("ValueType") == "CONTAINER":
            if _meaning(item) == "Measurement Group":
                yield item
            else:
                yield from _groups(item)


def sr_measurements(sr: Dataset) -> dict[int, dict[str, float]]:
    """Numeric measurements of a TID 1500 report, per referenced SEG segment.

    Parameters
    ----------
    sr : pydicom.dataset.Dataset
        A Comprehensive 3D SR holding a Measurement Report.

    Returns
    -------
    dict[int, dict[str, float]]
        Segment Number to {concept meaning (e.g. "Volume"): numeric value}.
    """
    out: dict[int, dict[str, float]] = {}
    for group in _groups(sr):
        segment = _referenced_segment(group)
        if segment is None:
            continue
        values = out.setdefault(segment, {})
        for item in _items(group):
            if item.get("ValueType") == "NUM" and "MeasuredValueSequence" in item:
                values[_meaning(item)] = float(item.MeasuredValueSequence[0].NumericValue)
    return out
