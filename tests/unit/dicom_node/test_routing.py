from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_node.cli import main
from dicom_node.routing import (
    evaluate_condition,
    evaluate_rule,
    orientation_of,
    route_study,
    rule_matches,
    rule_warnings,
)
from dicom_node.routing_reasons import (
    Audience,
    Outcome,
    Presence,
    SeriesVerdict,
    condition_text,
    verdict_text,
)
from dicom_node.scp.storage import _routing_attributes
from dicom_node.state import SeriesInputs
from pipelines.spec import ConditionValue, PipelineSpec, SelectionRule, load_pipeline_specs
from tests.corpus import corpus_dir

REPO = Path(__file__).resolve().parents[3]
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def _series(uid: str, n: int = 3, **attributes: object) -> SeriesInputs:
    return SeriesInputs(
        study_uid="1.2",
        series_uid=uid,
        modality=str(attributes.get("Modality", "")),
        attributes=attributes,
        instance_uids=tuple(f"{uid}.{i}" for i in range(n)),
        paths=tuple(f"p/{uid}.{i}" for i in range(n)),
    )


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ({"Modality": "(?i)^ct$"}, True),
        ({"Modality": "^MR$"}, False),
        ({"Modality": "!^MR$"}, True),
        ({"SliceThickness": [1, 3]}, True),
        ({"SliceThickness": [3, 5]}, False),
        ({"SliceThickness": 2.5}, True),
        ({"ImageType": ["ORIGINAL", "primary"]}, True),
        ({"ImageType": ["ORIGINAL", "!LOCALIZER"]}, True),
        ({"ImageType": ["!AXIAL"]}, False),
        ({"Orientation": "Axial"}, True),
        ({"Orientation": "Sagittal"}, False),
        ({"BodyPartExamined": "CHEST"}, False),
    ],
)
def test_conditions(conditions: dict[str, ConditionValue], expected: bool) -> None:
    attributes = {
        "Modality": "CT",
        "SliceThickness": 2.5,
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
    }
    rule = SelectionRule(name="r", conditions=conditions)
    assert rule_matches(rule, attributes) is expected


def test_any_match() -> None:
    rule = SelectionRule(name="r", match="any", conditions={"Modality": "MR", "Rows": 512})
    assert rule_matches(rule, {"Modality": "CT", "Rows": 512})
    assert not rule_matches(rule, {"Modality": "CT", "Rows": 256})


def test_orientation_names() -> None:
    assert orientation_of([1, 0, 0, 0, 0, -1]) == "Coronal"
    assert orientation_of("garbage") is None


def test_shipped_pipeline_routes_every_ct_series_but_not_scouts_or_mr() -> None:
    specs = load_pipeline_specs(REPO / "config" / "pipelines")
    series = [
        _series("1.1", Modality="CT", SOPClassUID=CT_IMAGE, SeriesDescription="CHEST 2.5mm"),
        _series("1.2", Modality="CT", SOPClassUID=CT_IMAGE, SeriesDescription="Scout"),
        _series("1.3", Modality="MR", SOPClassUID=MR_IMAGE, SeriesDescription="T1"),
        _series("1.4", Modality="CT", SOPClassUID=CT_IMAGE, SeriesDescription="LUNG 1mm"),
    ]
    decisions = route_study(series, specs).decisions
    assert sorted(d.series.series_uid for d in decisions) == ["1.1", "1.4"]
    assert {d.pipeline.name for d in decisions} == {"ct-body-lung"}


# -- absent and empty attributes: every condition kind ---------------------------------

#: (condition, a present value on which it holds, whether it holds when unknown).
KINDS: list[tuple[str, ConditionValue, object, bool]] = [
    ("Modality", "(?i)^CT$", "CT", False),
    ("Modality", "(?i)^(CT|MR)?$", "MR", False),  # matches "", yet an unknown value has none
    ("SeriesDescription", "!(?i)scout", "CHEST", True),
    ("SeriesDescription", "(?i)^(?!.*scout)", "CHEST", False),  # a lookahead is positive
    ("SliceThickness", 2.5, 2.5, False),
    ("SliceThickness", [0.5, 5], 2.5, False),
    ("ImageType", ["ORIGINAL", "!LOCALIZER"], ["ORIGINAL", "PRIMARY"], False),
    ("ImageType", ["!LOCALIZER"], ["ORIGINAL", "PRIMARY"], True),
    ("ImageType", ["!LOCALIZER", "!DERIVED"], ["ORIGINAL"], True),
    ("Orientation", "Axial", [1, 0, 0, 0, 1, 0], False),
    ("Orientation", "!Sagittal", [1, 0, 0, 0, 1, 0], True),
]


def _stored(keyword: str) -> str:
    return "ImageOrientationPatient" if keyword == "Orientation" else keyword


@pytest.mark.parametrize(("keyword", "expected", "present", "unknown_holds"), KINDS)
def test_absent_and_empty_attributes(
    keyword: str, expected: ConditionValue, present: object, unknown_holds: bool
) -> None:
    stored = _stored(keyword)
    held = evaluate_condition(keyword, expected, {stored: present})
    assert held.holds, "the condition must hold on its present value, or the case proves nothing"
    assert held.presence is Presence.PRESENT
    unknowns: list[tuple[dict[str, object], Presence]] = [
        ({}, Presence.ABSENT),
        ({stored: ""}, Presence.EMPTY),
        ({stored: []}, Presence.EMPTY),
        ({stored: ["", " "]}, Presence.EMPTY),
        ({stored: None}, Presence.EMPTY),
    ]
    for attributes, presence in unknowns:
        result = evaluate_condition(keyword, expected, attributes)
        assert result.presence is presence, attributes
        assert result.holds is unknown_holds, attributes
        assert result.seen is None


@pytest.mark.parametrize(
    ("keyword", "expected", "value"),
    [
        ("SliceThickness", 2.5, "abc"),
        ("SliceThickness", [0.5, 5], "abc"),
        ("SliceThickness", [0.5, 5], "nan"),
    ],
)
def test_numbers_that_are_not_numbers_do_not_hold(
    keyword: str, expected: ConditionValue, value: object
) -> None:
    result = evaluate_condition(keyword, expected, {keyword: value})
    assert result.presence is Presence.PRESENT
    assert not result.holds
    assert result.note == "not a number"


def test_malformed_orientation_is_unknown() -> None:
    result = evaluate_condition("Orientation", "Axial", {"ImageOrientationPatient": [1, 0, 0]})
    assert not result.holds
    assert result.presence is Presence.EMPTY
    assert "not six direction cosines" in result.note
    assert evaluate_condition("Orientation", "!Axial", {"ImageOrientationPatient": [1]}).holds


def test_empty_components_of_a_multi_value_are_ignored() -> None:
    result = evaluate_condition("ImageType", ["ORIGINAL"], {"ImageType": ["ORIGINAL", "", ""]})
    assert result.holds
    assert result.seen == ["ORIGINAL"]


# -- the shipped rules on real series ------------------------------------------------


def _real_series(folder: Path, uid: str) -> SeriesInputs:
    """A series as the receiver records it: routing attributes read from a real file."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    attributes = _routing_attributes(ds)
    return SeriesInputs(
        study_uid="1.2",
        series_uid=uid,
        modality=str(attributes.get("Modality", "")),
        attributes=attributes,
        instance_uids=tuple(f"{uid}.{i}" for i in range(len(files))),
        paths=tuple(str(p) for p in files),
    )


def test_real_ct_without_series_description_is_selected() -> None:
    corpus = corpus_dir()
    specs = load_pipeline_specs(REPO / "config" / "pipelines")
    lidc = _real_series(corpus / "lidc-idri-0001-chest-ct", "9.1")
    assert "SeriesDescription" not in lidc.attributes, "the case needs a CT without one"
    mr = _real_series(corpus / "mr-sag-t1-decubitus-hfdl", "9.2")
    routing = route_study([lidc, mr], specs)
    assert [(d.series.series_uid, d.pipeline.name) for d in routing.decisions] == [
        ("9.1", "ct-body-lung")
    ]
    verdicts = {(v.series_uid, v.pipeline): v for v in routing.verdicts}
    assert len(verdicts) == 2 * len(specs), "one verdict per series and pipeline"
    lung = verdicts[("9.1", "ct-body-lung")]
    assert lung.outcome is Outcome.SELECTED
    description = next(c for c in lung.rules[0].conditions if c.keyword == "SeriesDescription")
    assert description.presence is Presence.ABSENT
    assert description.holds
    assert verdicts[("9.1", "ct-chest-unet")].outcome is Outcome.DISABLED
    assert verdict_text(verdicts[("9.1", "ct-chest-unet")], Audience.LOG) == (
        "pipeline disabled (rule 'axial CT' matches)"
    )
    on_mr = verdicts[("9.2", "ct-body-lung")]
    assert on_mr.outcome is Outcome.NOT_SELECTED
    assert "Modality MR ≠ CT" in verdict_text(on_mr, Audience.VIEWER)


def test_shipped_ct_rule_skips_localizers_and_dose_screens() -> None:
    specs = {"ct-body-lung": load_pipeline_specs(REPO / "config" / "pipelines")["ct-body-lung"]}
    ct = CT_IMAGE
    series = [
        _series("1.1", Modality="CT", SOPClassUID=ct, ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]),
        _series(
            "1.2", Modality="CT", SOPClassUID=ct, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ),
        _series("1.3", Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.7"),
        _series("1.4", Modality="CT", SOPClassUID=ct + ".1", SeriesDescription=""),
    ]
    routing = route_study(series, specs)
    assert sorted(d.series.series_uid for d in routing.decisions) == ["1.1", "1.4"]
    texts = {v.series_uid: verdict_text(v, Audience.VIEWER) for v in routing.verdicts}
    assert "ImageType ORIGINAL\\PRIMARY\\LOCALIZER has excluded LOCALIZER" in texts["1.2"]
    assert "(Secondary Capture Image Storage)" in texts["1.3"]


def test_mode_best_tells_the_series_it_passed_over() -> None:
    spec = PipelineSpec.model_validate(
        {
            "name": "best",
            "version": "1",
            "selection": {
                "mode": "best",
                "rules": [{"name": "CT", "conditions": {"Modality": "CT"}}],
            },
            "model": {"kind": "builtin", "name": "body_lung_threshold"},
            "labels": [
                {"value": 1, "name": "body", "label": "Body",
                 "category": {"value": "123037004", "meaning": "Anatomical Structure"},
                 "type": {"value": "38266002", "meaning": "Entire body"}},
            ],
        }
    )  # fmt: skip
    routing = route_study(
        [_series("1.1", 3, Modality="CT"), _series("1.2", 9, Modality="CT")], {"best": spec}
    )
    assert [d.series.series_uid for d in routing.decisions] == ["1.2"]
    outcomes = {v.series_uid: v.outcome for v in routing.verdicts}
    assert outcomes == {"1.1": Outcome.NOT_BEST, "1.2": Outcome.SELECTED}


# -- telling why, to whom ------------------------------------------------------------------

FREE_TEXT = "DOE^JANE CHEST"


def _not_selected() -> SeriesVerdict:
    rule = SelectionRule(
        name="axial CT",
        conditions={
            "Modality": "(?i)^CT$",
            "SeriesDescription": "!(?i)(scout|chest)",
            "SliceThickness": [0.5, 5],
            "ImageType": ["ORIGINAL", "!LOCALIZER"],
            "BodyPartExamined": "(?i)^CHEST$",
        },
    )
    spec_rules = (
        evaluate_rule(
            rule,
            {
                "Modality": "MR",
                "SeriesDescription": FREE_TEXT,
                "SliceThickness": 7.5,
                "ImageType": ["DERIVED", "LOCALIZER"],
            },
        ),
    )
    return SeriesVerdict("1.1", "p", "1", Outcome.NOT_SELECTED, "", spec_rules)


def test_reasons_name_rule_condition_and_value_for_each_audience() -> None:
    verdict = _not_selected()
    admin = verdict_text(verdict, Audience.ADMIN)
    viewer = verdict_text(verdict, Audience.VIEWER)
    log = verdict_text(verdict, Audience.LOG)
    assert admin.startswith("not selected: rule 'axial CT': ")
    assert "Modality MR ≠ CT" in viewer
    assert "SliceThickness 7.5 outside [0.5, 5]" in viewer
    assert "ImageType DERIVED\\LOCALIZER lacks ORIGINAL and has excluded LOCALIZER" in viewer
    assert "BodyPartExamined absent" in viewer
    # Free text: the admin sees it, a viewer and the log do not.
    assert FREE_TEXT in admin
    assert FREE_TEXT not in viewer
    assert "SeriesDescription matches excluded /(?i)(scout|chest)/" in viewer
    for value in (FREE_TEXT, "MR", "7.5", "DERIVED"):
        assert value not in log
    assert "Modality ≠ CT" in log
    assert "BodyPartExamined absent" in log


def test_verdicts_survive_the_json_of_the_state_db() -> None:
    verdict = _not_selected()
    rules = SeriesVerdict.rules_from_json(verdict.rules_json())
    assert rules == verdict.rules
    assert condition_text(rules[0].conditions[0], Audience.VIEWER) == "Modality MR ≠ CT"


def test_config_check_warns_about_conditions_that_cannot_mean_what_they_seem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    specs = load_pipeline_specs(REPO / "config" / "pipelines")
    assert all(rule_warnings(spec) == [] for spec in specs.values()), "the shipped rules are clean"
    folder = tmp_path / "pipelines"
    folder.mkdir()
    source = (REPO / "config" / "pipelines" / "ct-body-lung.yaml").read_text()
    changed = source.replace(
        'SeriesDescription: "!(?i)(scout|topo|localizer|dose)"',
        'SeriesDescription: "(?i)^(?!.*(scout|topo|localizer|dose)).*$"\n        PatientAge: "^0"',
    )
    assert changed != source
    (folder / "ct-body-lung.yaml").write_text(changed)
    config = tmp_path / "node.yaml"
    config.write_text(f"pipelines_dir: {folder}\n")
    assert main(["config", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert (
        "warning: ct-body-lung, rule 'axial CT': SeriesDescription uses a negative lookahead" in out
    )
    assert "warning: ct-body-lung, rule 'axial CT': PatientAge is not among" in out
