"""Why a series was or was not selected: routing verdicts, stored and told three ways.

Routing (:mod:`dicom_node.routing`) evaluates every rule of every pipeline on
every series of a complete study and keeps the evaluation: per condition the
keyword, the expected value, whether the attribute was present, empty or
absent, the value seen and whether the condition held. The state DB stores one
:class:`SeriesVerdict` per (series, pipeline) in the transaction that completes
the study (table ``routing_verdicts``), so "0 new jobs" is never the only trace.

Values seen can be free text (a Series Description may hold a name), so a
verdict is told to three audiences (:class:`Audience`):

- ``LOG``: never a value. Keywords, expected values (configuration, not
  patient data), presence and outcome only: "SeriesDescription absent",
  "Modality does not match ^CT$".
- ``VIEWER`` (any logged-in user, ``dicom-node status``): values of coded and
  numeric attributes (VR CS, DS, IS, UI and the binary numbers, plus the
  computed ``Orientation``), which identify no one: "Modality MR ≠ CT". Values
  of free-text attributes (LO, SH, PN, ST, LT, UT, dates) are hidden.
- ``ADMIN`` (an admin, or everyone where ``web.show_patient_names`` is set):
  every value, as the dashboard already shows accession numbers to them.

Examples
--------
>>> c = ConditionResult("Modality", "(?i)^CT$", False, Presence.PRESENT, "MR")
>>> condition_text(c, Audience.VIEWER)
'Modality MR ≠ CT'
>>> condition_text(c, Audience.LOG)
'Modality ≠ CT'
>>> d = ConditionResult("SeriesDescription", "(?i)^(?!.*scout)", False, Presence.ABSENT)
>>> condition_text(d, Audience.ADMIN)
'SeriesDescription absent'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import UID

__all__ = [
    "Audience",
    "ConditionResult",
    "Outcome",
    "Presence",
    "RuleResult",
    "SeriesVerdict",
    "condition_text",
    "is_news",
    "shows_value",
    "verdict_text",
]


class Presence(StrEnum):
    """Whether the attribute a condition looks at was there."""

    PRESENT = "present"
    #: Present with no value (Type 2 "unknown"), or only empty values.
    EMPTY = "empty"
    ABSENT = "absent"


class Outcome(StrEnum):
    """What routing decided for one (series, pipeline)."""

    #: A rule matched: the series has a job of this pipeline (new or existing).
    SELECTED = "selected"
    #: No rule matched.
    NOT_SELECTED = "not selected"
    #: A rule matched, but ``mode: best`` chose a series with more instances.
    NOT_BEST = "not best"
    #: The pipeline is disabled (its rules are evaluated all the same).
    DISABLED = "disabled"


class Audience(StrEnum):
    """Who reads a verdict, which decides the values it may show."""

    LOG = "log"
    VIEWER = "viewer"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class ConditionResult:
    """One condition of a rule, evaluated on one series.

    Attributes
    ----------
    keyword : str
        The DICOM keyword, or ``Orientation``.
    expected : object
        The condition as configured (a regex, a number, a range, a list).
    holds : bool
        Whether the condition held.
    presence : Presence
        Whether the attribute was present, empty or absent.
    seen : object
        The value looked at (JSON: a string, number or list); None unless present.
    note : str
        Why a present value could not be compared (e.g. "not a number"), or "".
    """

    keyword: str
    expected: object
    holds: bool
    presence: Presence
    seen: object = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule of a pipeline, evaluated on one series."""

    rule: str
    match: str
    holds: bool
    conditions: tuple[ConditionResult, ...]


@dataclass(frozen=True, slots=True)
class SeriesVerdict:
    """What routing decided for one series and one pipeline, and why.

    Attributes
    ----------
    series_uid : str
        The series.
    pipeline, pipeline_version : str
        The pipeline.
    outcome : Outcome
        Selected or not, and why not in one word.
    rule : str
        The first rule that matched; "" when none did.
    rules : tuple[RuleResult, ...]
        Every rule's evaluation, in the definition's order.
    job_id : int or None
        The job of a selected series (set by the state DB; None before).
    new_job : bool
        Whether that job was created by this routing (False: the same series,
        pipeline and input set had run before).
    """

    series_uid: str
    pipeline: str
    pipeline_version: str
    outcome: Outcome
    rule: str
    rules: tuple[RuleResult, ...]
    job_id: int | None = None
    new_job: bool = False

    def rules_json(self) -> list[dict[str, Any]]:
        """The rule evaluations as JSON, for the state DB."""
        return [
            {
                "rule": r.rule,
                "match": r.match,
                "holds": r.holds,
                "conditions": [
                    {
                        "keyword": c.keyword,
                        "expected": c.expected,
                        "holds": c.holds,
                        "presence": c.presence.value,
                        "seen": c.seen,
                        "note": c.note,
                    }
                    for c in r.conditions
                ],
            }
            for r in self.rules
        ]

    @staticmethod
    def rules_from_json(data: object) -> tuple[RuleResult, ...]:
        """Rebuild rule evaluations from :meth:`rules_json`; tolerant of missing keys."""
        if not isinstance(data, list):
            return ()
        rules = []
        for item in data:
            if not isinstance(item, Mapping):
                continue
            conditions = tuple(
                ConditionResult(
                    keyword=str(c.get("keyword", "")),
                    expected=c.get("expected"),
                    holds=bool(c.get("holds")),
                    presence=Presence(c.get("presence", Presence.ABSENT)),
                    seen=c.get("seen"),
                    note=str(c.get("note", "")),
                )
                for c in item.get("conditions", [])
                if isinstance(c, Mapping)
            )
            rules.append(
                RuleResult(
                    rule=str(item.get("rule", "")),
                    match=str(item.get("match", "all")),
                    holds=bool(item.get("holds")),
                    conditions=conditions,
                )
            )
        return tuple(rules)


#: Value representations whose values are codes or numbers: they identify no one.
_CODED_VRS = frozenset({"CS", "DS", "IS", "UI", "US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"})
#: Pseudo-keywords routing computes from coded values.
_COMPUTED = frozenset({"Orientation"})


def shows_value(keyword: str, audience: Audience) -> bool:
    """Whether a value of this attribute may be shown to this audience.

    Parameters
    ----------
    keyword : str
        DICOM keyword or a computed pseudo-keyword.
    audience : Audience
        Who reads it.

    Returns
    -------
    bool
        Never for logs; always for admins; for viewers only coded and numeric
        attributes.

    Examples
    --------
    >>> shows_value("Modality", Audience.VIEWER), shows_value("SeriesDescription", Audience.VIEWER)
    (True, False)
    """
    if audience is Audience.LOG:
        return False
    if audience is Audience.ADMIN:
        return True
    if keyword in _COMPUTED:
        return True
    if tag_for_keyword(keyword) is None:
        return False
    return dictionary_VR(keyword) in _CODED_VRS


# A regex that only names values: optional (?i), optional anchors, words joined by |.
_PLAIN = re.compile(r"^(?:\(\?i\))?\^?\(?([A-Za-z0-9 _.-]+(?:\|[A-Za-z0-9 _.-]+)*)\)?\$?$")


def _regex_words(pattern: str) -> list[str] | None:
    """The alternatives of a regex that is an anchored list of plain words, else None."""
    anchored = pattern.removeprefix("(?i)")
    if not (anchored.startswith("^") and anchored.endswith("$")):
        return None
    match = _PLAIN.match(pattern)
    return match.group(1).split("|") if match else None


def _show(keyword: str, value: object) -> str:
    """A value as text: multi-values joined by backslash, free text quoted, UIDs named."""
    text = "\\".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if not shows_value(keyword, Audience.VIEWER):
        return repr(text)
    if keyword.endswith("UID"):
        name = UID(text).name
        if name and name != text:
            return f"{text} ({name})"
    return text


def _expected_regex(pattern: str, negated: bool) -> str:
    words = _regex_words(pattern)
    if words is None:
        return f"/{pattern}/"
    if len(words) == 1:
        return ("= " if negated else "≠ ") + words[0]
    return ("one of " if negated else "not one of ") + ", ".join(words)


def condition_text(result: ConditionResult, audience: Audience) -> str:
    """Tell one evaluated condition in a short phrase.

    Parameters
    ----------
    result : ConditionResult
        The evaluated condition.
    audience : Audience
        Who reads it: decides whether the value seen is shown.

    Returns
    -------
    str
        e.g. "SeriesDescription absent", "Modality MR ≠ CT", "SliceThickness
        7.5 outside [0.5, 5]", "ImageType lacks ORIGINAL"; a condition that
        held reads "Modality CT = CT" or "SeriesDescription absent (holds)".
    """
    key = result.keyword
    if result.presence is not Presence.PRESENT:
        return f"{key} {result.presence.value}" + (" (holds)" if result.holds else "")
    shown = shows_value(key, audience)
    seen = f"{key} {_show(key, result.seen)}" if shown else key
    if result.note:
        return f"{seen} {result.note}"
    expected = result.expected
    if isinstance(expected, str):
        negated = expected.startswith("!")
        pattern = expected.removeprefix("!")
        words = _regex_words(pattern)
        if result.holds != negated:
            # The pattern was found: it matched, or it matched an excluded value.
            if words is not None and len(words) == 1:
                return f"{seen} = {words[0]}" + ("" if result.holds else " (excluded)")
            found = f"/{pattern}/" if words is None else "one of " + ", ".join(words)
            return f"{seen} matches {'excluded ' if negated else ''}{found}"
        if words is not None:
            return f"{seen} {_expected_regex(pattern, negated=False)}"
        return f"{seen} does not match /{pattern}/"
    if (
        isinstance(expected, list)
        and len(expected) == 2
        and not any(isinstance(v, str) for v in expected)
    ):
        inside = "inside" if result.holds else "outside"
        return f"{seen} {inside} [{expected[0]}, {expected[1]}]"
    if isinstance(expected, list):
        return f"{seen} {_list_text(result, expected)}"
    return f"{seen} {'=' if result.holds else '≠'} {expected}"


def _list_text(result: ConditionResult, expected: Sequence[object]) -> str:
    have = {str(v).strip().upper() for v in _values(result.seen)}
    items = [str(i) for i in expected]
    lacking = [i for i in items if not i.startswith("!") and i.strip().upper() not in have]
    excluded = [i[1:] for i in items if i.startswith("!") and i[1:].strip().upper() in have]
    if result.holds:
        return "has " + ", ".join(str(i) for i in expected)
    parts = []
    if lacking:
        parts.append("lacks " + ", ".join(lacking))
    if excluded:
        parts.append("has excluded " + ", ".join(excluded))
    return " and ".join(parts)


def _values(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _rule_text(rule: RuleResult, audience: Audience) -> str:
    if rule.match == "any":
        told = [condition_text(c, audience) for c in rule.conditions]
        return f"rule '{rule.rule}': none of " + "; ".join(told) if told else "no conditions"
    failed = [condition_text(c, audience) for c in rule.conditions if not c.holds]
    return f"rule '{rule.rule}': " + "; ".join(failed)


def is_news(verdict: SeriesVerdict) -> bool:
    """Whether a verdict is worth a line in a summary (the log, the overview, ``status``).

    A disabled pipeline none of whose rules matches says nothing about the series;
    every other verdict does (a disabled pipeline that would have matched does).

    Parameters
    ----------
    verdict : SeriesVerdict
        The verdict.

    Returns
    -------
    bool
        False only for a disabled pipeline whose rules do not match.
    """
    return verdict.outcome is not Outcome.DISABLED or any(r.holds for r in verdict.rules)


def verdict_text(verdict: SeriesVerdict, audience: Audience) -> str:
    """Tell why a series was or was not selected, in one line.

    Parameters
    ----------
    verdict : SeriesVerdict
        The verdict.
    audience : Audience
        Who reads it.

    Returns
    -------
    str
        e.g. "selected by rule 'axial CT'", "not selected: rule 'axial CT':
        Modality MR ≠ CT", "pipeline disabled (rule 'axial CT' matches)".
    """
    if verdict.outcome is Outcome.SELECTED:
        return f"selected by rule '{verdict.rule}'"
    if verdict.outcome is Outcome.NOT_BEST:
        return (
            f"rule '{verdict.rule}' matches, but mode 'best' chose the series "
            "with the most instances"
        )
    if verdict.outcome is Outcome.DISABLED:
        matched = [r.rule for r in verdict.rules if r.holds]
        return "pipeline disabled" + (f" (rule '{matched[0]}' matches)" if matched else "")
    reasons = [_rule_text(r, audience) for r in verdict.rules]
    return "not selected: " + " | ".join(reasons)
