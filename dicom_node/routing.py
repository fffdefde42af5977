"""Routing: which pipelines run on which series of a complete study, and why.

Rules live in each pipeline's YAML (``selection``), in a shape a user of the
MONAI Deploy App SDK's series selector can read. A rule is a set of conditions
on DICOM keywords of the series; a series is selected when any rule matches.

A condition's expected value means:

- a string: a regular expression searched in the attribute (``re.search``, so
  anchor with ``^...$``); a leading ``!`` negates it ("no value matches"). A
  multi-valued attribute matches when any value matches.
- a number: equality (any value, for a multi-valued attribute).
- a list of two numbers: an inclusive range ``[low, high]``.
- a list of strings: every listed value must be among the attribute's values
  (case-insensitive); a value with a leading ``!`` must not be. Each item is a
  condition of its own.
- the pseudo-keyword ``Orientation`` takes a regex over ``Axial``, ``Coronal``
  or ``Sagittal``, computed from Image Orientation (Patient).

**Absent or empty attributes.** Many real series lack attributes (no Series
Description on older GE scanners, research exports, Enhanced objects), and a
Type 2 attribute may be present but empty. Both mean "unknown", and a condition
on an unknown value holds exactly when it only *excludes* something:

============================  ==========================================
condition                     on an absent or empty attribute
============================  ==========================================
regex ``"^CT$"``              does not hold (nothing to match)
negated regex ``"!scout"``    holds (no value is a scout)
number ``2.5``                does not hold
range ``[0.5, 5]``            does not hold
list ``[ORIGINAL, "!LOC"]``   does not hold (ORIGINAL is not there)
list ``["!LOCALIZER"]``       holds (LOCALIZER is not there)
``Orientation: Axial``        does not hold (no Image Orientation)
``Orientation: "!Sagittal"``  holds
============================  ==========================================

So write "not a scout" as ``SeriesDescription: "!(?i)scout"``, never as a
negative lookahead (``"^(?!.*scout)"``), which is a positive regex and fails
on every series without a description. A regex that can match the empty
string does not make an absent attribute match either: there is no value to
search. Empty components of a multi-valued attribute are ignored. A present
value that a number or range cannot read ("abc") does not hold. The receiver
keeps only the attributes of :data:`dicom_node.scp.storage.ROUTING_KEYWORDS`;
a condition on any other keyword always sees it absent.

Example (from ``config/pipelines/ct-body-lung.yaml``)::

    selection:
      mode: all            # or "best": only the series with the most instances
      rules:
        - name: axial CT
          match: all       # or "any"
          conditions:
            Modality: "(?i)^CT$"
            ImageType: ["!LOCALIZER"]
            SeriesDescription: "!(?i)(scout|topo|localizer|dose)"
            SliceThickness: [0.5, 5]
            Orientation: Axial

Every rule looks at every series of the study, not only the first file's. For
every (series, pipeline) routing keeps the evaluation of every rule as a
:class:`~dicom_node.routing_reasons.SeriesVerdict`, which the state DB stores
with the study's completion and the dashboard, the REST API and ``dicom-node
status`` show (:mod:`dicom_node.routing_reasons` says who sees which values).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dicom_node.routing_reasons import (
    ConditionResult,
    Outcome,
    Presence,
    RuleResult,
    SeriesVerdict,
)
from dicom_node.scp.storage import ROUTING_KEYWORDS
from dicom_node.state import SeriesInputs
from pipelines.spec import ConditionValue, PipelineSpec, SelectionMode, SelectionRule

__all__ = [
    "RouteDecision",
    "Routing",
    "evaluate_condition",
    "evaluate_rule",
    "orientation_of",
    "route_study",
    "rule_matches",
    "rule_warnings",
]


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """One job to create: a series, the pipeline chosen for it and why."""

    series: SeriesInputs
    pipeline: PipelineSpec
    rule: str


@dataclass(frozen=True, slots=True)
class Routing:
    """The routing of a complete study: the jobs to create, and a verdict per (series, pipeline).

    Attributes
    ----------
    decisions : tuple[RouteDecision, ...]
        One per (series, pipeline) to run.
    verdicts : tuple[SeriesVerdict, ...]
        One per series and configured pipeline, selected or not, with every
        rule's evaluation; the state DB stores them with the study.
    """

    decisions: tuple[RouteDecision, ...]
    verdicts: tuple[SeriesVerdict, ...]


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


#: Stands for a keyword the series' attributes do not hold.
_ABSENT = object()


def _present_values(actual: object) -> list[object]:
    """The non-empty values of an attribute (a multi-value's empty components dropped)."""
    values = list(actual) if isinstance(actual, list | tuple) else [actual]
    return [v for v in values if v is not None and str(v).strip() != ""]


def _as_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _only_excludes(expected: ConditionValue) -> bool:
    """Whether a condition only excludes values: it then holds on an unknown value."""
    if isinstance(expected, str):
        return expected.startswith("!")
    if isinstance(expected, list) and expected and all(isinstance(v, str) for v in expected):
        return all(str(v).startswith("!") for v in expected)
    return False


def _lookup(keyword: str, attributes: Mapping[str, object]) -> tuple[object, str]:
    """The value a condition looks at, and a note when it cannot be computed."""
    if keyword != "Orientation":
        return attributes.get(keyword, _ABSENT), ""
    iop = attributes.get("ImageOrientationPatient", _ABSENT)
    if iop is _ABSENT or not _present_values(iop):
        return iop, ""
    plane = orientation_of(iop)
    if plane is None:
        return "", "unknown: Image Orientation (Patient) is not six direction cosines"
    return plane, ""


def evaluate_condition(
    keyword: str, expected: ConditionValue, attributes: Mapping[str, object]
) -> ConditionResult:
    """Evaluate one condition on a series' attributes (module docstring: the semantics).

    Parameters
    ----------
    keyword : str
        DICOM keyword, or ``Orientation``.
    expected : ConditionValue
        The condition's expected value.
    attributes : Mapping[str, object]
        Header attributes of the series by keyword, as the SCP stored them.

    Returns
    -------
    ConditionResult
        Whether it held, whether the attribute was present, empty or absent,
        and the value seen.

    Examples
    --------
    >>> evaluate_condition("SeriesDescription", "!(?i)scout", {}).holds
    True
    >>> evaluate_condition("SeriesDescription", "(?i)^(?!.*scout)", {}).holds
    False
    """
    actual, note = _lookup(keyword, attributes)
    if actual is _ABSENT:
        return ConditionResult(keyword, expected, _only_excludes(expected), Presence.ABSENT)
    values = _present_values(actual)
    if not values:
        holds = _only_excludes(expected)
        return ConditionResult(keyword, expected, holds, Presence.EMPTY, note=note)
    seen = values if isinstance(actual, list | tuple) else values[0]
    if isinstance(expected, str):
        negate = expected.startswith("!")
        pattern = re.compile(expected.removeprefix("!"))
        found = any(pattern.search(str(v)) for v in values)
        return ConditionResult(keyword, expected, found != negate, Presence.PRESENT, seen)
    if isinstance(expected, bool):
        return ConditionResult(keyword, expected, False, Presence.PRESENT, seen, "not comparable")
    numbers = [n for n in (_as_float(v) for v in values) if n is not None]
    if isinstance(expected, int | float):
        if not numbers:
            return ConditionResult(keyword, expected, False, Presence.PRESENT, seen, "not a number")
        holds = any(math.isclose(n, float(expected)) for n in numbers)
        return ConditionResult(keyword, expected, holds, Presence.PRESENT, seen)
    if len(expected) == 2 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in expected
    ):
        if not numbers:
            return ConditionResult(keyword, expected, False, Presence.PRESENT, seen, "not a number")
        low, high = (float(v) for v in expected)
        holds = any(low <= n <= high for n in numbers)
        return ConditionResult(keyword, expected, holds, Presence.PRESENT, seen)
    have = {str(v).strip().upper() for v in values}
    holds = True
    for item in expected:
        text = str(item)
        if text.startswith("!"):
            holds = holds and text[1:].strip().upper() not in have
        else:
            holds = holds and text.strip().upper() in have
    return ConditionResult(keyword, list(expected), holds, Presence.PRESENT, seen)


def evaluate_rule(rule: SelectionRule, attributes: Mapping[str, object]) -> RuleResult:
    """Evaluate every condition of a rule on a series' attributes.

    Parameters
    ----------
    rule : SelectionRule
        The rule.
    attributes : Mapping[str, object]
        Header attributes of the series by keyword, as the SCP stored them.

    Returns
    -------
    RuleResult
        Every condition's result; ``holds`` when all (``match: all``) or any
        (``match: any``) conditions hold.
    """
    results = tuple(
        evaluate_condition(keyword, expected, attributes)
        for keyword, expected in rule.conditions.items()
    )
    holds = [r.holds for r in results]
    return RuleResult(
        rule=rule.name,
        match=rule.match,
        holds=all(holds) if rule.match == "all" else any(holds),
        conditions=results,
    )


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
    return evaluate_rule(rule, attributes).holds


def route_study(series: Iterable[SeriesInputs], pipelines: Mapping[str, PipelineSpec]) -> Routing:
    """Choose the pipelines for every series of a complete study, and say why.

    Parameters
    ----------
    series : Iterable[SeriesInputs]
        All series of the study.
    pipelines : Mapping[str, PipelineSpec]
        Enabled and disabled definitions; disabled ones create no job but get
        verdicts (``disabled``), so an admin sees what they would select.

    Returns
    -------
    Routing
        One decision per (series, pipeline) to run, and one verdict per
        (series, pipeline).
    """
    series = list(series)
    decisions: list[RouteDecision] = []
    verdicts: list[SeriesVerdict] = []
    for spec in pipelines.values():
        evaluated = []
        for item in series:
            rules = tuple(evaluate_rule(rule, item.attributes) for rule in spec.selection.rules)
            matched = next((r.rule for r in rules if r.holds), "")
            evaluated.append((item, rules, matched))
        chosen = {item.series_uid for item, _, matched in evaluated if matched}
        if spec.selection.mode is SelectionMode.BEST and chosen:
            best = max(
                (item for item, _, matched in evaluated if matched),
                key=lambda s: len(s.instance_uids),
            )
            chosen = {best.series_uid}
        for item, rules, matched in evaluated:
            if not spec.enabled:
                outcome = Outcome.DISABLED
            elif not matched:
                outcome = Outcome.NOT_SELECTED
            elif item.series_uid not in chosen:
                outcome = Outcome.NOT_BEST
            else:
                outcome = Outcome.SELECTED
                decisions.append(RouteDecision(series=item, pipeline=spec, rule=matched))
            verdicts.append(
                SeriesVerdict(
                    series_uid=item.series_uid,
                    pipeline=spec.name,
                    pipeline_version=spec.version,
                    outcome=outcome,
                    rule=matched,
                    rules=rules,
                )
            )
    return Routing(decisions=tuple(decisions), verdicts=tuple(verdicts))


def rule_warnings(spec: PipelineSpec) -> list[str]:
    """Conditions of a pipeline that cannot mean what they seem to (``dicom-node config check``).

    Parameters
    ----------
    spec : PipelineSpec
        A pipeline definition.

    Returns
    -------
    list[str]
        One sentence per suspicious condition: a keyword the receiver does not keep
        (always absent), or a negative lookahead (a positive regex, which never holds
        on a series that lacks the attribute).

    Examples
    --------
    >>> spec = PipelineSpec.model_validate({
    ...     "name": "p", "version": "1",
    ...     "selection": {"rules": [{"name": "r", "conditions": {
    ...         "SeriesDescription": "^(?!.*scout)", "PatientAge": "^0"}}]},
    ...     "model": {"kind": "builtin", "name": "body_lung_threshold"},
    ...     "labels": [{"value": 1, "name": "b", "label": "B",
    ...                 "category": {"value": "1", "meaning": "c"},
    ...                 "type": {"value": "2", "meaning": "t"}}]})
    >>> for line in rule_warnings(spec): print(line)
    p, rule 'r': SeriesDescription uses a negative lookahead, which never holds on a \
series without SeriesDescription; to exclude values write "!pattern"
    p, rule 'r': PatientAge is not among the attributes the receiver keeps for routing, \
so it is always absent
    """
    warnings = []
    for rule in spec.selection.rules:
        where = f"{spec.name}, rule '{rule.name}'"
        for keyword, expected in rule.conditions.items():
            if isinstance(expected, str) and not expected.startswith("!") and "(?!" in expected:
                warnings.append(
                    f"{where}: {keyword} uses a negative lookahead, which never holds on a "
                    f'series without {keyword}; to exclude values write "!pattern"'
                )
            if keyword != "Orientation" and keyword not in ROUTING_KEYWORDS:
                warnings.append(
                    f"{where}: {keyword} is not among the attributes the receiver keeps "
                    "for routing, so it is always absent"
                )
    return warnings
