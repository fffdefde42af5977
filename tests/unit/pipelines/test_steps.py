"""Reasons an admin can act on: every failure names its step and what was wrong, never a value."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement

from dicom_node.phantom import ChestPhantom
from pipelines import models
from pipelines.errors import InconsistentGeometry, UnsupportedInput
from pipelines.load import load_series
from pipelines.spec import PipelineSpec
from pipelines.steps import Step, StepFailed, describe_failure, step
from pipelines.uids import result_uids
from pipelines.volume import to_volume
from pipelines.writers import write_seg

TINY = ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6, slice_thickness_mm=5.0)
BIRTH_DATE = "1961-07-23"
NOT_DICOM = "in the source headers is not valid DICOM"


def test_refusals_keep_their_class_and_gain_the_step() -> None:
    with pytest.raises(UnsupportedInput) as raised, step(Step.LOAD):
        raise UnsupportedInput("not a CT")
    assert raised.value.reason == "load: not a CT"
    assert raised.value.skip
    with pytest.raises(InconsistentGeometry) as again, step(Step.LOAD), step(Step.LOAD):
        raise InconsistentGeometry("a slice is missing")
    assert again.value.reason == "load: a slice is missing", "prefixed once"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("SpecificCharacterSet", "CS", ""), "the source's Specific Character Set is not valid"),
        (("PatientBirthDate", "DA", BIRTH_DATE), f"a date (VR DA) {NOT_DICOM}"),
        (("StudyTime", "TM", "12:30:00"), f"a time (VR TM) {NOT_DICOM}"),
        (("PatientSex", "CS", "male"), "the source's Patient's Sex is not M, F, O or empty"),
        (("StudyID", None, None), "the source has no StudyID"),
    ],
)  # fmt: skip
def test_real_writer_failures_name_step_and_cause_without_values(
    edit: tuple[str, str | None, str | None],
    expected: str,
    body_lung_spec: PipelineSpec,
    tmp_path: Path,
) -> None:
    """Without normalised headers, highdicom's own exceptions become reasons like these."""
    study = TINY.write(tmp_path / "in", patient_name="DOE^JANE")
    volume = to_volume(load_series(study.paths))
    masks = models.segmenter(body_lung_spec)(volume)
    keyword, vr, value = edit
    for ds in volume.instances:
        tag = pydicom.datadict.tag_for_keyword(keyword)
        assert tag is not None
        if vr is None:
            del ds[tag]
        else:
            ds[tag] = DataElement(tag, vr, value)
    uids = result_uids("t", "1", (str(ds.SOPInstanceUID) for ds in volume.instances))
    with pytest.raises(StepFailed) as raised, step(Step.WRITE_SEG):
        write_seg(volume, masks, body_lung_spec, uids)
    assert raised.value.reason == f"write SEG: {expected}"
    assert not raised.value.skip
    if value:
        assert value not in raised.value.reason


def test_unknown_failures_are_named_by_type_and_place() -> None:
    with pytest.raises(StepFailed) as raised, step(Step.MODEL):
        _ = {"secret": 1}["DOE^JANE"]
    assert raised.value.reason.startswith("model: unexpected KeyError at test_steps.py:")
    assert "DOE" not in raised.value.reason
    assert describe_failure(MemoryError()) == "out of memory"
    assert describe_failure(OSError(28, "No space left on device", "/p/DOE")) == (
        "no space left on device (OSError)"
    )
    assert describe_failure(AttributeError("'X' object has no attribute 'shape'")).startswith(
        "unexpected AttributeError"
    ), "not a DICOM keyword: not told as a missing attribute"
