"""Routing: which pipelines run on which series of a complete study.

Rules live in each pipeline's YAML (``selection``), in a shape a user of the
MONAI Deploy App SDK's series selector can read. A rule is a set of conditions
on DICOM keywords of the series; a series is selected when any rule matches.

A condition's expected value means:

- a string: a regular expression searched in the attribute (``re.search``, so
  anchor with ``^...$``); a leading ``!`` negates it. A multi-valued attribute
  matches when any value matches.
- a number: equality.
- a list of two numbers: an inclusive range ``[low, high]``.
- a list of strings: every listed value must be among the attribute's values
  (case-insensitive); a value with a leading ``!`` must not be.
- the pseudo-keyword ``Orientation`` takes ``Axial``, ``Coronal`` or
  ``Sagittal``, computed from Image Orientation (Patient).

Example (from ``config/pipelines/ct-body-lung.yaml``)::

    selection:
      mode: all            # or "best": only the series with the most instances
      rules:
        - name: axial CT
          match: all       # or "any"
          conditions:
            Modality: "(?i)^CT$"
            ImageType: [ORIGINAL, "!LOCALIZER"]
            SliceThickness: [0.5, 5]
            Orientation: Axial

Every rule looks at every series of the study, not only the first file's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dicom_node.state import SeriesInputs
from pipelines.spec import ConditionValue, PipelineSpec, SelectionMode, SelectionRule

__all__ = ["RouteDecision", "orientation_of", "route_study", "rule_matches"]


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """One job to create: a series, the pipeline chosen for it and why."""

    series: SeriesInputs
    pipeline: PipelineSpec
    rule: str


def orientation_of(iop: object) -> str | None:
    """Name the plane of an Image Orientation (Patient) value.

    Parameters
    ----------
    iop : object
        Six direction cosines (row, then column), as stored in the state DB.

    Returns
    -------
    str or None
        ``"Axial"``, ``"Coronal"`` or ``"Sagittal"`` by the dominant axis of the
        slice normal; None when the value is missing or malformed.

    Examples
    --------
    >>> orientation_of([1, 0, 0, 0, 1, 0])
    'Axial'
    >>> orientation_of([0, 1, 0, 0, 0, -1])
    'Sagittal'
    """
    if not isinstance(iop, list | tuple) or len(iop) != 6:
        return None
    try:
        r = [float(v) for v in iop[:3]]
        c = [float(v) for v in iop[3:]]
    except (TypeError, ValueError):
        return None
    normal = (
        r[1] * c[2] - r[2] * c[1],
        r[2] * c[0] - r[0] * c[2],
        r[0] * c[1] - r[1] * c[0],
    )
    if not any(math.isfinite(v) and v for v in normal):
        return None
    axis = max(range(3), key=lambda i: abs(normal[i]))
    return ("Sagittal", "Coronal", "Axial")[axis]


def _values(actual: object) -> list[object]:
    return list(actual) if isinstance(actual, list | tuple) else [actual]


def _as_float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _condition_holds(actual: object, expected: ConditionValue) -> bool:
    if actual is None:
        return isinstance(expected, str) and expected.startswith("!")
    if isinstance(expected, str):
        negate = expected.startswith("!")
        pattern = re.compile(expected.removeprefix("!"))
        found = any(pattern.search(str(v)) for v in _values(actual))
        return found != negate
    if isinstance(expected, bool):
        return False
    if isinstance(expected, int | float):
        value = _as_float(actual)
        return value is not None and math.isclose(value, float(expected))
    if len(expected) == 2 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in expected
    ):
        value = _as_float(actual)
        low, high = (float(v) for v in expected)
        return value is not None and low <= value <= high
    have = {str(v).strip().upper() for v in _values(actual)}
    for item in expected:
        text = str(item)
        if text.startswith("!"):
            if text[1:].strip().upper() in have:
                return False
        elif text.strip().upper() not in have:
            return False
    return True


def rule_matches(rule: SelectionRule, attributes: Mapping[str, object]) -> bool:
    """Whether a series' attributes satisfy a rule.

    Parameters
    ----------
    rule : SelectionRule
        The rule.
    attributes : Mapping[str, object]
        Header attributes of the series by keyword, as the SCP stored them.

    Returns
    -------
    bool
        True when all (``match: all``) or any (``match: any``) conditions hold.
    """
    results = []
    for keyword, expected in rule.conditions.items():
        if keyword == "Orientation":
            actual: object = orientation_of(attributes.get("ImageOrientationPatient"))
        else:
            actual = attributes.get(keyword)
        results.append(_condition_holds(actual, expected))
    return all(results) if rule.match == "all" else any(results)


def route_study(
    series: Iterable[SeriesInputs], pipelines: Mapping[str, PipelineSpec]
) -> list[RouteDecision]:
    """Choose the pipelines for every series of a complete study.

    Parameters
    ----------
    series : Iterable[SeriesInputs]
        All series of the study.
    pipelines : Mapping[str, PipelineSpec]
        Enabled and disabled definitions; disabled ones are ignored.

    Returns
    -------
    list[RouteDecision]
        One decision per (series, pipeline) to run.
    """
    series = list(series)
    decisions: list[RouteDecision] = []
    for spec in pipelines.values():
        if not spec.enabled:
            continue
        matched: list[RouteDecision] = []
        for item in series:
            for rule in spec.selection.rules:
                if rule_matches(rule, item.attributes):
                    matched.append(RouteDecision(series=item, pipeline=spec, rule=rule.name))
                    break
        if spec.selection.mode is SelectionMode.BEST and matched:
            matched = [max(matched, key=lambda d: len(d.series.instance_uids))]
        decisions.extend(matched)
    return decisions
