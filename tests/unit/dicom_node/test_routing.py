from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.routing import orientation_of, route_study, rule_matches
from dicom_node.state import SeriesInputs
from pipelines.spec import ConditionValue, SelectionRule, load_pipeline_specs

REPO = Path(__file__).resolve().parents[3]


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
        _series("1.1", Modality="CT", SeriesDescription="CHEST 2.5mm"),
        _series("1.2", Modality="CT", SeriesDescription="Scout"),
        _series("1.3", Modality="MR", SeriesDescription="T1"),
        _series("1.4", Modality="CT", SeriesDescription="LUNG 1mm"),
    ]
    decisions = route_study(series, specs)
    assert sorted(d.series.series_uid for d in decisions) == ["1.1", "1.4"]
    assert {d.pipeline.name for d in decisions} == {"ct-body-lung"}
