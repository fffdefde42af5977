"""IHE AI Results (AIR): what an Evidence Creator must put in every result, checked per object.

See docs/ai-results.md for the requirement behind each assertion.
"""

from __future__ import annotations

import pydicom
import pytest

from pipelines.spec import OutputKind
from pipelines.uids import result_uids
from tests.unit.pipelines.phantom_series import PipelineResult


def _datasets(result: PipelineResult) -> list[pydicom.Dataset]:
    return [
        pydicom.dcmread(result.output_dir / o.file, stop_before_pixels=True)
        for o in result.manifest.outputs
        if o.kind is not OutputKind.SC or o.file.endswith("0001.dcm")
    ]


def _algorithm_items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    return [
        item
        for item in ds.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    ]


def test_every_object_names_the_algorithm_once_with_its_device_uid(
    every_kind: PipelineResult,
) -> None:
    device_uids = set()
    for ds in _datasets(every_kind):
        (item,) = _algorithm_items(ds)
        code = item.PurposeOfReferenceCodeSequence[0]
        assert (code.CodingSchemeDesignator, code.CodeMeaning) == ("99IHE", "Processing Algorithm")
        assert item.ManufacturerModelName == "dicom-node body-lung threshold"
        assert item.SoftwareVersions == "1.0.0"
        device_uids.add(str(item.DeviceUID))
    assert len(device_uids) == 1


def test_results_are_in_the_source_study(every_kind: PipelineResult) -> None:
    for ds in _datasets(every_kind):
        assert ds.StudyInstanceUID == every_kind.study.study_uid
        assert ds.PatientID == "PHANTOM-0001"


def test_sr_root_observer_and_procedure(every_kind: PipelineResult) -> None:
    sr = pydicom.dcmread(every_kind.output_dir / "sr.dcm")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    items = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in sr.ContentSequence}
    procedure = items["Procedure reported"].ConceptCodeSequence[0]
    assert (procedure.CodeValue, procedure.CodingSchemeDesignator) == ("25045-6", "LN")
    observer_uid = items["Device Observer UID"].UID
    (algorithm,) = _algorithm_items(sr)
    assert observer_uid == algorithm.DeviceUID
    # Source images are the evidence.
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    sources = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in every_kind.study.paths
    }
    assert sources <= evidence


def test_device_uid_changes_with_the_model_and_the_version() -> None:
    inputs = ["1.2.3.1", "1.2.3.2"]
    base = result_uids("p", "1.0.0", inputs, "a" * 64)
    assert base.device_uid == result_uids("p", "1.0.0", ["9.9"], "a" * 64).device_uid
    assert base.device_uid != result_uids("p", "1.0.0", inputs, "b" * 64).device_uid
    assert base.device_uid != result_uids("p", "1.0.1", inputs, "a" * 64).device_uid
    # The results' own UIDs do not depend on the model (DESIGN promise 3).
    assert base.seg_instance == result_uids("p", "1.0.0", inputs, "b" * 64).seg_instance


@pytest.mark.parametrize("kind", [OutputKind.SR, OutputKind.KOS, OutputKind.PDF])
def test_classification_results_meet_air_too(
    kind: OutputKind, classified_every_kind: PipelineResult
) -> None:
    (output,) = [o for o in classified_every_kind.manifest.outputs if o.kind is kind]
    ds = pydicom.dcmread(classified_every_kind.output_dir / output.file, stop_before_pixels=True)
    (item,) = _algorithm_items(ds)
    assert item.ManufacturerModelName == "dicom-node chest nodule demo classifier"
    assert str(item.DeviceUID).startswith("2.25.")
    if kind is OutputKind.SR:
        items = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in ds.ContentSequence}
        procedure = items["Procedure reported"].ConceptCodeSequence[0]
        assert procedure.CodeMeaning == "XR unspecified body region"
        assert item.DeviceUID == items["Device Observer UID"].UID
