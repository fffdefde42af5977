"""Source headers as hospitals send them: normalised, then copied into results by the real writers.

Two kinds of input: every real file of pydicom, its character-set files,
pydicom-data and the development corpus (through highdicom's own copy of the
Patient and Study modules, as the SEG, SR and SC writers do it), and edited
copies of the phantom through :func:`pipelines.run.run_pipeline`, judged by
dciodvfy. Strict writing (``writing_validation_mode = RAISE``) is on for all.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from dicom_node.phantom import ChestPhantom
from pipelines.headers import normalise_headers
from pipelines.manifest import ManifestStatus
from pipelines.run import run_pipeline
from pipelines.spec import PipelineSpec
from tests.corpus import corpus_dir
from tests.judges import dciodvfy_errors
from tests.unit.pipelines.phantom_series import rewrite_series

TINY = ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6, slice_thickness_mm=5.0)


def _real_headers() -> list[Path]:
    """Every real file that carries a study: pydicom's, its charset files, pydicom-data, corpus."""
    files = {Path(f) for f in get_testdata_files() if Path(f).is_file()}
    files |= {Path(f) for f in get_charset_files("*.dcm")}
    try:
        corpus = corpus_dir()
    except FileNotFoundError:
        # Collected without it; test_the_real_files_include_what_breaks_the_writers fails.
        corpus = None
    if corpus is not None:
        files |= {p for p in corpus.rglob("*") if p.is_file() and p.name != "SOURCES.md"}
    out = []
    for path in sorted(files):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                uid = str(ds.get("StudyInstanceUID", "") or "")
            except Exception:  # noqa: BLE001 - unreadable files are the receiver's concern
                continue
        if uid and "SOPClassUID" in ds:
            out.append(path)
    return out


REAL = _real_headers()


def _copy_into_result(header: Dataset) -> Dataset:
    """Copy a source's Patient and Study modules as the writers do (highdicom), through bytes."""
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=np.zeros((4, 4), np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.MONOCHROME2,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="dicom-node tests",
        patient_orientation=("L", "P"),
    )
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, image, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def test_the_real_files_include_what_breaks_the_writers() -> None:
    names = {p.name for p in REAL}
    assert len(REAL) > 150
    assert {"chrH31.dcm", "chrX1.dcm", "chrKoreanMulti.dcm"} <= names
    assert any(corpus_dir() in p.parents for p in REAL)
    # Without normalising, real headers break highdicom: chrH31's code extensions with an
    # empty first value, and a real CT whose Specific Character Set is present but empty
    # (a GE scanner's habit; pydicom ships the element alone as empty_charset_LEI.dcm).
    h31 = next(p for p in REAL if p.name == "chrH31.dcm")
    lidc = next(p for p in REAL if p.parent.name == "lidc-idri-0001-chest-ct")
    empty = pydicom.dcmread(lidc, stop_before_pixels=True)
    empty.SpecificCharacterSet = ""
    for header in (pydicom.dcmread(h31, stop_before_pixels=True), empty):
        with pytest.raises(ValueError, match="SpecificCharacterSet"):
            _copy_into_result(header)
        normalise_headers([header])
        assert _copy_into_result(header).StudyInstanceUID == header.StudyInstanceUID


@pytest.mark.parametrize("path", REAL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_header_copies_into_a_result(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the very values being fixed
        header = pydicom.dcmread(path, stop_before_pixels=True)
        name = str(header.get("PatientName", "") or "")
        patient_id = str(header.get("PatientID", "") or "")
        fixes = {fix.keyword for fix in normalise_headers([header])}
    result = _copy_into_result(header)
    assert str(result.PatientID) == (patient_id if "PatientID" not in fixes else result.PatientID)
    if "PatientName" not in fixes:
        assert str(result.PatientName) == name
    assert result.StudyInstanceUID == header.StudyInstanceUID


def _set(keyword: str, vr: str, value: object) -> Callable[[Dataset, int], None]:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    assert tag is not None

    def edit(ds: Dataset, _index: int) -> None:
        # A raw element: the value as the modality wrote it, never validated on the way in.
        ds[tag] = DataElement(tag, vr, value)

    return edit


def _drop(*keywords: str) -> Callable[[Dataset, int], None]:
    def edit(ds: Dataset, _index: int) -> None:
        for keyword in keywords:
            if keyword in ds:
                delattr(ds, keyword)

    return edit


def _private(ds: Dataset, _index: int) -> None:
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", "vendor text")
    block.add_new(0x11, "UN", b"\x01\x02\x03\x04")
    inner = Dataset()
    inner.add_new(0x00290010, "LO", "ACME 1.0")
    block.add_new(0x12, "SQ", [inner])


def _japanese(ds: Dataset, _index: int) -> None:
    # chrH31's form: the default repertoire (an empty first value) with ISO 2022 IR 87.
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def _everything(ds: Dataset, index: int) -> None:
    for edit in EDITS.values():
        if edit is not _everything:
            edit(ds, index)


EDITS: dict[str, Callable[[Dataset, int], None]] = {
    "empty charset": _set("SpecificCharacterSet", "CS", ""),
    "charset alias": _set("SpecificCharacterSet", "CS", "ISO-8859-1"),
    "ISO 2022 with empty first value": _japanese,
    "ISO birth date": _set("PatientBirthDate", "DA", "1961-07-23"),
    "ISO study time": _set("StudyTime", "TM", "12:30:00"),
    "no Study ID": _drop("StudyID"),
    "no patient Type 2": _drop("PatientBirthDate", "PatientSex", "AccessionNumber"),
    "lower-case sex": _set("PatientSex", "CS", "m"),
    "retired PN form": _set("PatientName", "PN", "DOE JOHN"),
    "over-long strings": _set("StudyDescription", "LO", "X" * 200),
    "over-long accession": _set("AccessionNumber", "SH", "ACC-0123456789-XYZ"),
    "control characters": _set("StudyDescription", "LO", "CT\x00 CHEST\x01"),
    "over-long weight": _set("PatientWeight", "DS", "72.1234567890123456"),
    "private elements": _private,
}
EDITS["all at once"] = _everything


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A tiny phantom with a proper patient name."""
    study = TINY.write(tmp_path_factory.mktemp("tiny"), patient_name="DOE^JANE")
    return list(study.paths)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(EDITS))
def test_odd_headers_do_not_fail_the_job(
    case: str, tiny: list[Path], body_lung_spec: PipelineSpec, tmp_path: Path
) -> None:
    paths = rewrite_series(tiny, tmp_path / "in", EDITS[case])
    source = pydicom.dcmread(paths[0], stop_before_pixels=True)
    manifest = run_pipeline(body_lung_spec, paths, tmp_path / "out", job_id=7)
    assert manifest.status is ManifestStatus.DONE, manifest.reason
    for output in manifest.outputs:
        result = tmp_path / "out" / output.file
        assert dciodvfy_errors(result) == [], (case, output.kind)
        written = pydicom.dcmread(result)
        # The patient is named exactly as the images name them.
        assert str(written.PatientName) == str(source.get("PatientName", ""))
        assert written.PatientID == source.PatientID
        assert written.StudyInstanceUID == source.StudyInstanceUID
        assert not any(tag.is_private for tag in written)
    if case == "ISO birth date":
        assert pydicom.dcmread(tmp_path / "out" / "seg.dcm").PatientBirthDate == "19610723"
    if case == "ISO study time":
        assert pydicom.dcmread(tmp_path / "out" / "sr.dcm").StudyTime == "123000"


def test_nested_private_and_unreadable_elements(tiny: list[Path]) -> None:
    header = pydicom.dcmread(tiny[0], stop_before_pixels=True)
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.private_block(0x0029, "ACME 1.0", create=True).add_new(0x10, "LO", "vendor text")
    header.ReferencedStudySequence = [item]
    # A weight the modality wrote as text, and a time no parser reads, as raw bytes.
    header[0x00101030] = RawDataElement(Tag(0x00101030), "DS", 3, b"abc", 0, False, True)
    header[0x00080030] = RawDataElement(Tag(0x00080030), "TM", 4, b"noon", 0, False, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixes = {str(fix) for fix in normalise_headers([header])}
    assert "private elements (removed: no writer needs them)" in fixes
    assert not any(elem.tag.is_private for elem in header.iterall())
    assert header.get("PatientWeight") in (None, "")
    assert header.StudyTime == ""
    assert _copy_into_result(header).StudyInstanceUID == header.StudyInstanceUID
