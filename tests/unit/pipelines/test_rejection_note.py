"""The IOCM rejection note (``dicom_node.rejection_note``) over a real pipeline run's results."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.rejection_note import (
    MANUFACTURER,
    REJECTION_SERIES_NUMBER,
    RejectionTitle,
    write_rejection_note,
)
from pipelines.writers.seg import MANUFACTURER as RESULTS_MANUFACTURER
from tests.judges import dciodvfy_errors
from tests.unit.pipelines.phantom_series import SENTINEL_NAME, PipelineResult


@pytest.fixture(scope="module")
def rejected(pipeline_result: PipelineResult) -> list[Dataset]:
    """The run's SEG and SR headers, as the node reads them from the spool."""
    return [
        pydicom.dcmread(pipeline_result.output_dir / out.file, stop_before_pixels=True)
        for out in pipeline_result.manifest.outputs
        if out.kind in ("seg", "sr")
    ]


@pytest.fixture(scope="module")
def note_path(rejected: list[Dataset], tmp_path_factory: pytest.TempPathFactory) -> Path:
    note = write_rejection_note(
        rejected,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        instance_number=7,
        description="superseded by a result over the complete series",
    )
    path = tmp_path_factory.mktemp("kos") / "note.dcm"
    note.save_as(path, enforce_file_format=True)
    return path


def test_dciodvfy_finds_no_error(note_path: Path) -> None:
    assert dciodvfy_errors(note_path) == []


def test_it_references_exactly_the_rejected_instances(
    note_path: Path, rejected: list[Dataset]
) -> None:
    note = hd.ko.KeyObjectSelectionDocument.from_dataset(pydicom.dcmread(note_path))
    wanted = {str(ds.SOPInstanceUID) for ds in rejected}
    assert len(wanted) == 2
    evidence = {
        str(sop.ReferencedSOPInstanceUID)
        for study in note.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == wanted
    content = {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
               for item in note.ContentSequence if "ReferencedSOPSequence" in item}  # fmt: skip
    assert content == wanted
    for uid in wanted:
        assert note.resolve_reference(uid)[0] == rejected[0].StudyInstanceUID


def test_title_study_and_series(note_path: Path, rejected: list[Dataset]) -> None:
    note = pydicom.dcmread(note_path)
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113001",
        "DCM",
        "Rejected for Quality Reasons",
    )
    assert note.ContentTemplateSequence[0].TemplateIdentifier == "2010"
    assert note.SOPClassUID == pydicom.uid.KeyObjectSelectionDocumentStorage
    assert note.Modality == "KO"
    assert note.StudyInstanceUID == rejected[0].StudyInstanceUID
    assert note.PatientName == SENTINEL_NAME  # copied from the rejected objects
    assert note.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in rejected}
    assert note.SeriesNumber == REJECTION_SERIES_NUMBER
    assert note.InstanceNumber == 7
    # The note names the same manufacturer as the results it withdraws.
    assert note.Manufacturer == MANUFACTURER == RESULTS_MANUFACTURER


def test_other_titles_of_cid_7010() -> None:
    assert RejectionTitle.PATIENT_SAFETY.value.value == "113037"
    assert {t.value.value for t in RejectionTitle} == {"113001", "113037", "113038", "113039"}


def test_nothing_or_two_studies_is_refused(rejected: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="at least one"):
        write_rejection_note([], series_instance_uid="1.2", sop_instance_uid="1.3",
                             instance_number=1)  # fmt: skip
    other = copy.deepcopy(rejected[0])
    other.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="2 studies"):
        write_rejection_note([rejected[0], other], series_instance_uid="1.2",
                             sop_instance_uid="1.3", instance_number=1)  # fmt: skip
