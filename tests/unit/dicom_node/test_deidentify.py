"""De-identification over the real files of the corpus and of pydicom-data.

The judge of "every attribute the Basic Profile lists" is PS3.15 Table E.1-1
as dicom-anonymizer ships it, walked at every depth of the original: each such
attribute with a value is, in the output, gone, empty, or different. The
patient's identifiers are searched in the written bytes (private attributes and
sequences included) and in every decoded value.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from cryptography.fernet import Fernet
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicom_node.deidentify import (
    Action,
    Deidentifier,
    ResearchExport,
    UidMap,
    burned_in_refusal,
    profile_table,
)
from dicom_node.settings import DeidentifySettings
from dicom_node.state import StateDB
from dicom_node.state.schema import DeidUid

REPO = Path(__file__).resolve().parents[3]
#: shared/ lies beside the clone (CI, /work/main) or beside the worktrees' folder.
CORPUS = next(
    (p / "shared" / "corpus" for p in (REPO.parent, REPO.parent.parent) if (p / "shared").is_dir()),
    REPO.parent / "shared" / "corpus",
)
SEG_EXAMPLES = CORPUS / "highdicom-seg-examples"
IDENTIFIERS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")


def _files() -> list[Path]:
    corpus = [p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".md"]
    shipped = sorted({Path(f) for f in get_testdata_files() if Path(f).is_file()})
    return corpus + shipped


def _readable() -> list[Path]:
    out = []
    for path in _files():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - pydicom-data ships deliberately broken files
            continue
        if "SOPClassUID" in ds or "PatientName" in ds:
            out.append(path)
    return out


FILES = _readable()


def _walk(ds: Dataset, depth: str = "") -> Iterator[tuple[str, pydicom.DataElement]]:
    for element in ds:
        where = f"{depth}{element.tag}"
        yield where, element
        if element.VR == "SQ":
            for index, item in enumerate(element.value or []):
                yield from _walk(item, f"{where}[{index}].")


def _by_path(ds: Dataset) -> dict[str, pydicom.DataElement]:
    return dict(_walk(ds))


@pytest.fixture(scope="module")
def key() -> bytes:
    return Fernet.generate_key()


def test_the_corpus_is_there() -> None:
    assert len([p for p in FILES if CORPUS in p.parents]) > 120
    assert len(FILES) > 300


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_basic_profile_attribute_is_removed_or_replaced(path: Path, key: bytes) -> None:
    # No option: the plain Basic Profile is what the table states.
    settings = DeidentifySettings(enabled=True, retain_longitudinal_modified_dates=False)
    original = pydicom.dcmread(path, force=True)
    out = pydicom.dcmread(path, force=True)
    Deidentifier(settings, "research", key).apply(out)
    table = profile_table()
    after = _by_path(out)
    for where, element in _walk(original):
        if element.tag.is_private:
            assert where not in after or not after[where].tag.is_private, where
            continue
        action = table.get(int(element.tag))
        if action is None or action is Action.KEEP_REFERENCES or element.VR == "SQ":
            continue
        if element.value in (None, "", b"") or int(element.tag) in (0x00100010, 0x00100020):
            continue
        if int(element.tag) == 0x0040A730:
            continue
        kept = after.get(where)
        assert kept is None or kept.value in (None, "", b"") or kept.value != element.value, (
            f"{element.keyword or element.tag} ({action.value}) kept at {where}"
        )
    assert not any(e.tag.is_private for _, e in _walk(out)), "a private attribute survived"
    assert out.PatientIdentityRemoved == "YES"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_identifier_survives_anywhere(path: Path, key: bytes, tmp_path: Path) -> None:
    settings = DeidentifySettings(enabled=True, clean_descriptors=True, retain_device_identity=True)
    original = pydicom.dcmread(path, force=True)
    secrets = {
        str(original.get(keyword, "")).strip()
        for keyword in IDENTIFIERS
        if str(original.get(keyword, "")).strip()
    }
    out = pydicom.dcmread(path, force=True)
    Deidentifier(settings, "research", key).apply(out)
    target = tmp_path / "out.dcm"
    out.save_as(target, enforce_file_format=True)
    raw = target.read_bytes()
    text_vrs = ("PN", "LO", "SH", "LT", "ST", "UT", "UC", "CS", "DA", "DT", "AE")
    decoded = [
        str(e.value) for _, e in _walk(pydicom.dcmread(target, force=True)) if e.VR in text_vrs
    ]
    for secret in secrets:
        # Short values (an ID of "12") occur by chance in any binary; they are
        # looked for in every decoded text value instead.
        if len(secret) >= 6:
            assert secret.encode() not in raw, f"{secret!r} in the bytes of {path.name}"
        if len(secret) >= 2:
            assert not any(secret in value for value in decoded), f"{secret!r} in {path.name}"


def test_a_seg_stays_linked_to_its_sources(key: bytes) -> None:
    sources = list((SEG_EXAMPLES / "pydicom-source-images" / "CT2").iterdir())
    seg = pydicom.dcmread(SEG_EXAMPLES / "seg_image_ct_binary.dcm")
    deid = Deidentifier(DeidentifySettings(enabled=True), "research", key)
    images = []
    for path in sources:
        ds = pydicom.dcmread(path)
        original_uid = ds.SOPInstanceUID
        deid.apply(ds)
        assert ds.SOPInstanceUID != original_uid
        images.append(ds)
    original_refs = {
        i.ReferencedSOPInstanceUID
        for s in seg.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    deid.apply(seg)
    refs = {
        i.ReferencedSOPInstanceUID
        for s in seg.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    image_uids = {ds.SOPInstanceUID for ds in images}
    assert refs
    assert refs <= image_uids
    assert not refs & original_refs
    assert {ds.StudyInstanceUID for ds in images} == {seg.StudyInstanceUID}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == images[0].SeriesInstanceUID
    assert {ds.FrameOfReferenceUID for ds in images} == {seg.FrameOfReferenceUID}
    derived = {
        source.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for source in derivation.SourceImageSequence
    }
    assert derived <= image_uids
    # Another destination cannot link its copies to these.
    other = Deidentifier(DeidentifySettings(enabled=True), "other-project", key)
    assert other.uid(images[0].file_meta.MediaStorageSOPInstanceUID) != deid.uid(
        images[0].file_meta.MediaStorageSOPInstanceUID
    )


def test_dates_shift_by_one_offset_per_patient_and_options_keep_what_they_say(
    key: bytes,
) -> None:
    settings = DeidentifySettings(enabled=True, retain_device_identity=True, clean_descriptors=True)
    deid = Deidentifier(settings, "research", key)
    ds = pydicom.dcmread(SEG_EXAMPLES / "ct_image.dcm")
    ds.StudyDescription = f"CT chest {ds.PatientName.family_name} follow-up"
    ds.DeviceSerialNumber = "SN-4711"
    before = (ds.StudyDate, ds.SeriesDate, ds.ContentDate, ds.StudyTime)
    deid.apply(ds)
    days = deid.date_shift_days("1CT1")

    def back(value: str) -> str:
        day = datetime.datetime.strptime(value, "%Y%m%d") - datetime.timedelta(days=days)
        return day.strftime("%Y%m%d")

    assert (ds.StudyDate, ds.SeriesDate, ds.ContentDate) == tuple(back(v) for v in before[:3])
    assert ds.StudyTime == before[3]  # times are kept with modified dates
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "PatientBirthDate" not in ds or not ds.PatientBirthDate
    assert ds.DeviceSerialNumber == "SN-4711"
    assert ds.StudyDescription == "CT chest follow-up"
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113104", "113105", "113107", "113109"}
    assert ds.PatientName == ds.PatientID == deid.patient_pseudonym("1CT1")


def test_burned_in_annotation_refusals() -> None:
    dx = pydicom.dcmread(SEG_EXAMPLES / "dx_image.dcm", stop_before_pixels=True)
    assert dx.BurnedInAnnotation == "NO"
    assert burned_in_refusal(dx) is None
    del dx.BurnedInAnnotation
    assert "without Burned In Annotation NO" in (burned_in_refusal(dx) or "")
    dx.BurnedInAnnotation = "YES"
    assert "YES" in (burned_in_refusal(dx) or "")
    ct = pydicom.dcmread(SEG_EXAMPLES / "ct_image.dcm", stop_before_pixels=True)
    assert burned_in_refusal(ct) is None  # CT does not carry burned-in text


def test_research_export_keeps_an_encrypted_map_and_refuses_burned_in(
    tmp_path: Path, key: bytes
) -> None:
    key_file = tmp_path / "deid.key"
    key_file.write_bytes(key)
    settings = DeidentifySettings(enabled=True, key_file=key_file)
    state = StateDB(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        dx = pydicom.dcmread(SEG_EXAMPLES / "dx_image.dcm")
        del dx.BurnedInAnnotation
        unmarked = tmp_path / "unmarked-dx.dcm"
        dx.save_as(unmarked, enforce_file_format=True)
        ct = SEG_EXAMPLES / "ct_image.dcm"
        prepared = ResearchExport(state, tmp_path / "tmp").prepare(
            "research", settings, "1.2.3", [ct, unmarked]
        )
        assert list(prepared.refusals) == [1]
        copy = prepared.paths[0]
        assert copy is not None
        pseudonym = pydicom.dcmread(copy).StudyInstanceUID
        original = pydicom.dcmread(ct).StudyInstanceUID
        prepared.cleanup()
        assert not copy.exists()
        found = UidMap(state, "research", key).original(pseudonym)
        assert found is not None
        assert found[0] == original
        with state.session() as s:
            stored = s.scalars(select(DeidUid.original)).all()
        assert stored
        assert not any(original in value for value in stored)
        assert original.encode() not in (tmp_path / "state.db").read_bytes()
    finally:
        state.close()
