"""Codes for a bundle's label names, from published tables instead of hand-written YAML.

A Model Zoo bundle names its output channels in ``channel_def`` (``"1": "spleen"``,
``"17": "Right-Hippocampus"``); a SEG needs each segment's Segmented Property
Category and Type as coded concepts (PS3.3 C.8.20.2). :func:`resolve_labels`
finds them, in this order:

1. the pipeline YAML's own ``labels`` entry of that name (an override);
2. TotalSegmentator's SNOMED CT mapping (``labels_data/totalsegmentator_snomed_mapping.csv``,
   copied unchanged from ``wasserth/TotalSegmentator``, Apache-2.0, see
   ``labels_data/SOURCES.md``), whose structure names are the ``channel_def`` names
   of MONAI's ``wholeBody_ct_segmentation``: category, type, type modifier (left /
   right) and colour;
3. DICOM PS3.16 itself, as pydicom ships it: a name whose words (laterality taken
   out as a modifier, a FreeSurfer-style abbreviation before ``--`` dropped) are the
   meaning of a SNOMED CT concept of CID 7151 "Segmentation Property Types" or
   CID 7140 "Brain Structures for Volumetric Measurements" (``Right-Hippocampus``
   becomes Hippocampus, modifier Right).

A name none of them knows still gets a segment, coded in the node's private scheme
``99DCMNODE`` (PS3.16 8.2: a ``99`` prefix marks a private coding scheme) with the
name as its meaning, and is listed in :attr:`LabelResolution.unmapped` so that
``dicom-node config check`` and the job's manifest say so. It is never dropped.

This module imports no torch: the node uses it at ``config check``.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydicom.sr._concepts_dict import concepts

from pipelines.spec import CodeSpec, LabelSpec

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "PRIVATE_SCHEME",
    "LabelResolution",
    "lookup",
    "resolve_labels",
    "table_entries",
]

#: Segmented Property Category of every anatomy code (CID 7150).
ANATOMICAL_STRUCTURE = CodeSpec(value="123037004", scheme="SCT", meaning="Anatomical Structure")
#: Coding scheme of names no published table knows (PS3.16 8.2, private scheme).
PRIVATE_SCHEME = "99DCMNODE"
_LEFT = CodeSpec(value="7771000", scheme="SCT", meaning="Left")
_RIGHT = CodeSpec(value="24028007", scheme="SCT", meaning="Right")
_TABLE = Path(__file__).resolve().parent / "labels_data" / "totalsegmentator_snomed_mapping.csv"
# CID 7151 Segmentation Property Types, CID 7140 Brain Structures for Volumetric Measurements.
_ANATOMY_CIDS = frozenset({7151, 7140})
_BACKGROUND = re.compile(r"^(background|bg|_background_|clear label)$", re.IGNORECASE)
# Long String (LO) holds 64 characters: Code Meaning and Segment Label.
_LO_MAX = 64


@dataclass(frozen=True, slots=True)
class LabelResolution:
    """The labels of a pipeline after the table look-up.

    Attributes
    ----------
    labels : tuple[LabelSpec, ...]
        One per label to write, ``value`` set to the bundle's channel.
    unmapped : tuple[str, ...]
        Names that no table knows (coded in :data:`PRIVATE_SCHEME`).
    sources : Mapping[str, str]
        Where each label's codes came from: ``yaml``, ``totalsegmentator``,
        ``dicom`` (PS3.16) or ``none``.
    """

    labels: tuple[LabelSpec, ...]
    unmapped: tuple[str, ...]
    sources: Mapping[str, str]


def is_background(name: str) -> bool:
    """Whether a ``channel_def`` name is the background, which gets no segment."""
    return bool(_BACKGROUND.match(name.strip()))


@functools.cache
def table_entries() -> dict[str, LabelSpec]:
    """TotalSegmentator's SNOMED CT mapping, by structure name (without values).

    Returns
    -------
    dict[str, LabelSpec]
        Category, type, modifier and colour per structure name.
    """
    entries: dict[str, LabelSpec] = {}
    with _TABLE.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["Structure"]
            modifier = None
            if row.get("SegmentedPropertyTypeModifierCodeSequence.CodeValue"):
                modifier = CodeSpec(
                    value=row["SegmentedPropertyTypeModifierCodeSequence.CodeValue"],
                    scheme=row["SegmentedPropertyTypeModifierCodeSequence.CodingSchemeDesignator"],
                    meaning=row["SegmentedPropertyTypeModifierCodeSequence.CodeMeaning"],
                )
            color = None
            if row.get("DicomRGBColor"):
                r, g, b = (int(v) for v in row["DicomRGBColor"].split(","))
                color = (r, g, b)
            entries[name] = LabelSpec(
                name=name,
                label=_display_name(name),
                category=CodeSpec(
                    value=row["SegmentedPropertyCategoryCodeSequence.CodeValue"],
                    scheme=row["SegmentedPropertyCategoryCodeSequence.CodingSchemeDesignator"],
                    meaning=row["SegmentedPropertyCategoryCodeSequence.CodeMeaning"],
                ),
                type=CodeSpec(
                    value=row["SegmentedPropertyTypeCodeSequence.CodeValue"],
                    scheme=row["SegmentedPropertyTypeCodeSequence.CodingSchemeDesignator"],
                    meaning=row["SegmentedPropertyTypeCodeSequence.CodeMeaning"],
                ),
                modifier=modifier,
                color=color,
            )
    return entries


@functools.cache
def _dicom_anatomy() -> dict[str, CodeSpec]:
    """SNOMED CT anatomy concepts of PS3.16 by normalised meaning."""
    index: dict[str, CodeSpec] = {}
    for by_code in concepts["SCT"].values():
        for value, (meaning, cids) in by_code.items():  # type: ignore[attr-defined]
            if _ANATOMY_CIDS.intersection(cids):
                index.setdefault(_normalise(meaning), CodeSpec(value=value, meaning=meaning))
    return index


def lookup(name: str) -> tuple[LabelSpec, str] | None:
    """Codes for one ``channel_def`` name from the published tables.

    Parameters
    ----------
    name : str
        e.g. ``"kidney_right"`` or ``"Left-Hippocampus"``.

    Returns
    -------
    tuple[LabelSpec, str] or None
        The label (without a value) and its source (``totalsegmentator`` or
        ``dicom``), or None when no table knows the name.

    Examples
    --------
    >>> label, source = lookup("Left-Hippocampus")
    >>> (label.type.meaning, label.modifier.meaning, source)
    ('Hippocampus', 'Left', 'dicom')
    """
    entry = table_entries().get(name.strip())
    if entry is not None:
        return entry, "totalsegmentator"
    words = _words(name)
    modifier = None
    if words and words[0] in ("left", "right"):
        modifier = _LEFT if words[0] == "left" else _RIGHT
        words = words[1:]
    elif words and words[-1] in ("left", "right"):
        modifier = _LEFT if words[-1] == "left" else _RIGHT
        words = words[:-1]
    code = _dicom_anatomy().get(" ".join(words))
    if code is None:
        return None
    label = LabelSpec(
        name=name,
        label=_display_name(name),
        category=ANATOMICAL_STRUCTURE,
        type=code,
        modifier=modifier,
    )
    return label, "dicom"


def resolve_labels(
    channel_def: Mapping[int, str],
    overrides: Iterable[LabelSpec],
    *,
    all_labels: bool,
    skip_background: bool = True,
) -> LabelResolution:
    """The labels a bundle pipeline writes, with codes, by channel.

    Parameters
    ----------
    channel_def : Mapping[int, str]
        The bundle's channel (label value) to name.
    overrides : Iterable[LabelSpec]
        The pipeline YAML's labels; matched by name, they win over the tables.
    all_labels : bool
        Write every channel (True) or only the YAML's labels (False).
    skip_background : bool
        Leave out channel 0 and channels named background (a segmentation's label
        map has no segment for them); False for a classifier, whose every class counts.

    Returns
    -------
    LabelResolution
        Labels in channel order, each ``value`` the channel.

    Raises
    ------
    ValueError
        If a YAML label names no channel of the bundle.
    """
    by_name = {name: channel for channel, name in channel_def.items()}
    listed = {label.name: label for label in overrides}
    missing = [name for name in listed if name not in by_name]
    if missing:
        raise ValueError(
            f"no channel for label(s) {', '.join(missing)} (channel_def names: "
            f"{', '.join(sorted(by_name))})"
        )
    labels: list[LabelSpec] = []
    unmapped: list[str] = []
    sources: dict[str, str] = {}
    for channel in sorted(channel_def):
        name = channel_def[channel]
        if name in listed:
            labels.append(listed[name].model_copy(update={"value": channel}))
            sources[name] = "yaml"
            continue
        if not all_labels:
            continue
        if skip_background and (channel == 0 or is_background(name)):
            continue
        found = lookup(name)
        if found is None:
            unmapped.append(name)
            sources[name] = "none"
            labels.append(_private(name, channel))
        else:
            label, source = found
            labels.append(label.model_copy(update={"value": channel, "name": name}))
            sources[name] = source
    return LabelResolution(labels=tuple(labels), unmapped=tuple(unmapped), sources=sources)


def _private(name: str, channel: int) -> LabelSpec:
    """A label no table knows, coded in the node's private scheme under its own name."""
    meaning = _display_name(name)
    return LabelSpec(
        value=channel,
        name=name,
        label=meaning,
        category=CodeSpec(value="85756007", scheme="SCT", meaning="Tissue"),
        type=CodeSpec(value=_private_value(name), scheme=PRIVATE_SCHEME, meaning=meaning),
    )


def _private_value(name: str) -> str:
    # Code Value is a Short String (16 characters): keep it readable and unique enough.
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper()
    return cleaned[:16] or "UNNAMED"


def _words(name: str) -> list[str]:
    # FreeSurfer/Neuromorphometrics names: "Right-ACgG--anterior-cingulate-gyrus" keeps
    # laterality and the spelled-out name after the abbreviation.
    parts = re.split(r"-{2,}", name.strip(), maxsplit=1)
    words = re.split(r"[-_\s]+", parts[0].strip().lower())
    if len(parts) == 2:
        words = [w for w in words if w in ("left", "right")] + re.split(
            r"[-_\s]+", parts[1].strip().lower()
        )
    return [w for w in words if w]


def _normalise(meaning: str) -> str:
    return " ".join(re.split(r"[^a-z0-9]+", meaning.lower())).strip()


def _display_name(name: str) -> str:
    """``kidney_right`` -> ``Kidney right``: a Segment Label for the viewer."""
    text = re.sub(r"[-_\s]+", " ", name).strip()
    text = text[:1].upper() + text[1:]
    return text[:_LO_MAX]
