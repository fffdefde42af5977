"""Deterministic result UIDs (DESIGN.md promise 3)."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from pipelines.uids import UIDRole, derive_uid, result_uids

INPUTS = ["1.2.840.1.1", "1.2.840.1.2", "1.2.840.1.3"]


def test_same_inputs_in_any_order_give_same_uids() -> None:
    first = result_uids("ct-body-lung", "1.0.0", INPUTS)
    again = result_uids("ct-body-lung", "1.0.0", list(reversed(INPUTS)))
    assert first == again
    assert first.seg_series == again.seg_series
    assert first.sr_instance == again.sr_instance


@pytest.mark.parametrize(
    ("name", "version", "inputs"),
    [
        ("ct-body-lung", "1.0.0", INPUTS[:2]),
        ("ct-body-lung", "1.0.0", [*INPUTS, "1.2.840.1.4"]),
        ("ct-body-lung", "1.0.1", INPUTS),
        ("ct-other", "1.0.0", INPUTS),
    ],
)
def test_any_change_of_identity_changes_every_uid(
    name: str, version: str, inputs: list[str]
) -> None:
    base = result_uids("ct-body-lung", "1.0.0", INPUTS)
    other = result_uids(name, version, inputs)
    for role in UIDRole:
        assert base.uid(role) != other.uid(role)


def test_roles_get_distinct_valid_uids_in_the_2_25_arc() -> None:
    uids = result_uids("ct-body-lung", "1.0.0", INPUTS)
    values = [uids.seg_series, uids.seg_instance, uids.sr_series, uids.sr_instance]
    assert len(set(values)) == 4
    for value in values:
        assert value.startswith("2.25.")
        assert UID(value).is_valid
        assert len(value) <= 64


def test_derive_uid_is_stable_and_keeps_part_boundaries() -> None:
    assert derive_uid("a", "bc") == derive_uid("a", "bc")
    assert derive_uid("a", "bc") != derive_uid("ab", "c")
    assert derive_uid("a") != derive_uid("a", "")


def test_derive_uid_refuses_nothing_and_non_strings() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        derive_uid()
    with pytest.raises(TypeError, match="must be str"):
        derive_uid("a", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "must not be empty"),
        (["1.2.3", "1.2.3"], "more than once"),
        (["1.2.3", "1.02.3"], "not a valid UID"),
    ],
)
def test_result_uids_refuses_bad_inputs(inputs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        result_uids("ct-body-lung", "1.0.0", inputs)
