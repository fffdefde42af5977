"""No Patient's Name or ID in any log, from any library, through the whole node (promise 5).

Every real file of pydicom, its character-set files, pydicom-data and the
development corpus that carries a Patient's Name or ID goes storescu → ``dicom-node
serve`` → routing → Celery worker → Orthanc, each file proposing exactly its own
SOP class and transfer syntax. Two phantom studies make sure the writers run on
the headers that make libraries talk: a Patient's Name in a retired form with an
ISO birth date and an empty Specific Character Set, and chrH31's Japanese name
with its code extensions. Then every log the node wrote (serve, worker) and
every text it left on the spool (job manifests, quarantine reasons) is searched
for each file's Patient's Name, its family name, and its Patient ID.

Skipped values, and why (printed with the table):

- empty values: nothing to search for;
- values of fewer than three characters ("O", "OB"): too short to identify
  anyone or to be told from the log's own words;
- numbers of fewer than six digits ("204", "89"): the logs hold counts, ports
  and job numbers of their own;
- :data:`GENERIC`: words that name no one and that the logs hold for their own
  reasons ("HFS" is a patient position one real MR scanner wrote as the name;
  "HEAD" a body part and an HTTP method; "Modality" the family name of
  ``Modality^LUT^Test`` and a DICOM keyword routing reasons name).

Every other value is searched as a whole word (not inside a longer word), case
sensitive, in every text.

Orthanc's own log is the archive's, not the node's, and is not searched.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.dataelem import DataElement

from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.services import OrthancHandle, orthanc_study_objects, wait_until
from dicom_node.state import JobState, StateDB, StudyState
from dicom_node.state.schema import TERMINAL_JOB_STATES, Study
from tests.corpus import corpus_dir
from tests.integration.test_corpus import _profile
from tests.node_process import run_node, run_worker, write_config

pytestmark = pytest.mark.slow

#: Values that name no one and that the logs may hold for their own reasons.
GENERIC = {
    "HFS": "a Patient Position (head first supine) a real MR scanner wrote as the name",
    "HEAD": "a body part and an HTTP method, written as a phantom's name",
    "Modality": "a DICOM keyword, which routing reasons name (of Modality^LUT^Test)",
}
RETIRED = "DOE JOHN"  # no component separator: highdicom warns, quoting it
RETIRED_ID = "PID-RETIRED-7731"
JAPANESE_ID = "PID-JAPAN-4410"


def _named_files() -> list[tuple[Path, str, str]]:
    """(file, Patient's Name, Patient ID) of every real file that carries either."""
    files = {Path(f) for f in get_testdata_files() if Path(f).is_file()}
    files |= {Path(f) for f in get_charset_files("*.dcm")}
    files |= {p for p in corpus_dir().rglob("*") if p.is_file() and p.name != "SOURCES.md"}
    out = []
    for path in sorted(files):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                name = str(ds.get("PatientName", "") or "").strip()
                patient_id = str(ds.get("PatientID", "") or "").strip()
            except Exception:  # noqa: BLE001 - a file pydicom cannot read carries no name we can know
                continue
        if name or patient_id:
            out.append((path, name, patient_id))
    return out


def _phantoms(folder: Path) -> tuple[PhantomStudy, PhantomStudy]:
    """Two small chests with the headers that make highdicom and pydicom talk."""
    tiny = ChestPhantom(slices=12, size=64, pixel_spacing_mm=5.6, slice_thickness_mm=5.0)
    retired = tiny.write(folder / "retired", patient_name=RETIRED, patient_id=RETIRED_ID)
    japanese = tiny.write(folder / "japanese", patient_id=JAPANESE_ID)
    h31 = pydicom.dcmread(next(f for f in get_charset_files("chrH31.dcm")))

    def edit(paths: list[Path], change: dict[int, tuple[str, object]]) -> None:
        for path in paths:
            ds = pydicom.dcmread(path)
            for tag, (vr, value) in change.items():
                ds[tag] = DataElement(tag, vr, value)
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=False)
            path.write_bytes(buffer.getvalue())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edit(
            list(retired.paths),
            {0x00080005: ("CS", ""), 0x00100030: ("DA", "1961-07-23")},
        )
        edit(
            list(japanese.paths),
            {0x00080005: ("CS", ["", "ISO 2022 IR 87"]), 0x00100010: ("PN", h31.PatientName)},
        )
    return retired, japanese


def _send(port: int, path: Path, scratch: Path) -> None:
    subprocess.run(
        ["storescu", *_profile(path, scratch), "-aec", "DICOM_NODE", "-to", "5", "-ta", "5",
         "-td", "20", "127.0.0.1", str(port), str(path)],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip


def _searched(name: str, patient_id: str) -> list[tuple[str, str]]:
    """(value, "" or why it is skipped) for a file's name, family name and ID."""
    values = [name, patient_id]
    family = name.split("=")[0].split("^")[0].strip()
    if family and family != name:
        values.append(family)
    out = []
    for value in dict.fromkeys(values):
        if not value:
            continue
        if len(value) < 3:
            out.append((value, "fewer than three characters"))
        elif value.isdigit() and len(value) < 6:
            out.append((value, "a number of fewer than six digits"))
        elif value in GENERIC:
            out.append((value, GENERIC[value]))
        else:
            out.append((value, ""))
    return out


def test_no_patient_name_or_id_in_any_log(
    tmp_path: Path, broker_url: str, orthanc: OrthancHandle
) -> None:
    named = _named_files()
    assert len(named) > 100, "pydicom-data and the corpus must be there"
    retired, japanese = _phantoms(tmp_path / "phantoms")
    h31_name = str(pydicom.dcmread(next(f for f in get_charset_files("chrH31.dcm"))).PatientName)
    named += [(retired.paths[0], RETIRED, RETIRED_ID), (japanese.paths[0], h31_name, JAPANESE_ID)]
    config = write_config(tmp_path, broker_url, orthanc.dicom_port)
    with run_node(config) as node, run_worker(config):
        for path, _, _ in named[:-2]:
            _send(node.port, path, tmp_path)
        for study in (retired, japanese):
            for path in study.paths:
                _send(node.port, path, tmp_path)
        state = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")

        def all_settled() -> bool:
            with state.session() as s:
                arriving = s.query(Study).filter(Study.state == StudyState.ARRIVING).count()
            open_jobs = state.jobs([s for s in JobState if s not in TERMINAL_JOB_STATES])
            return arriving == 0 and not open_jobs

        wait_until(all_settled, 900, "every study routed and every job ended", interval_s=1)
        # The writers ran on the names that make highdicom warn, and the results arrived.
        for study in (retired, japanese):
            found = orthanc_study_objects(orthanc.http_url, study.study_uid, {"SEG", "SR"})
            assert len(found) == 2, (
                f"{study.study_uid}: {[j.reason for j in state.jobs(TERMINAL_JOB_STATES)]}"
            )
        jobs = state.jobs(list(TERMINAL_JOB_STATES))
        state.close()

    texts = {
        "node.log": (tmp_path / "node.log").read_text(errors="replace"),
        "worker.log": (tmp_path / "worker.log").read_text(errors="replace"),
    }
    spool = tmp_path / "spool"
    for extra in [*spool.rglob("manifest.json*"), *spool.rglob("*.reason.txt")]:
        texts[str(extra.relative_to(spool))] = extra.read_text(errors="replace")
    assert all(texts.values()), "an empty log proves nothing"
    worker_log = texts["worker.log"]
    assert "source headers normalised" in worker_log, "the odd headers reached the writers"
    assert "UserWarning at highdicom/" in worker_log, "highdicom warned: its text must be withheld"

    searched: dict[str, tuple[str, list[str]]] = {}
    for path, name, patient_id in named:
        for value, skipped in _searched(name, patient_id):
            searched.setdefault(value, (skipped, []))[1].append(path.name)
    print(f"\n{len(named)} files with a name or ID, {len(jobs)} jobs, {len(texts)} texts searched")
    print(f"{'value':40} {'files':>5}  searched")
    leaks = []
    for value, (skipped, files) in searched.items():
        print(f"{value!r:40.40} {len(files):5d}  {'no: ' + skipped if skipped else 'yes'}")
        if skipped:
            continue
        word = re.compile(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])")
        leaks += [(files[0], value, where) for where, text in texts.items() if word.search(text)]
    assert sum(not skipped for skipped, _ in searched.values()) > 50
    assert leaks == []
