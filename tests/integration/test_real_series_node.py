"""Every real series we have, through the whole node: a result or a reason for each.

Every series of the development corpus (``/work/shared/corpus``) and every CT or
MR image series among the files of ``pydicom`` and ``pydicom-data`` is sent as
it is (dcmtk's storescu, proposing each file's own SOP class and transfer
syntax) to one ``dicom-node serve`` with one worker, which export to a real
Orthanc. Files storescu cannot send at all (data sets with empty UIDs) go by
pynetdicom from the file, their bytes untouched, so the receiver answers them.

For each series the test asserts one of:

- results: the pipeline's SEG and SR (or the SR of a classification) arrived
  in Orthanc, dciodvfy finds no error in them, and every SEG frame lies at the
  Image Position of the source slice or frame it names;
- a job that ended SKIPPED or FAILED with a reason (the job is the series');
- a refusal at the receiver: a failure status on the wire and a quarantined copy
  with its reason;
- no job: no enabled pipeline's rule selects the series.

and prints the table. :func:`collect_outcomes` gathers one outcome per series;
a check of the node's own routing explanation (study page, REST API) belongs
with it.

The shipped ``ct-body-lung`` and ``dx-chest-nodule`` pipelines run, plus an MR
pipeline made here (the threshold bundle of ``tests/unit/pipelines/bundles.py``),
so that the Enhanced and classic MR series go through the SEG writer too.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import redis
import yaml
from pydicom.data import get_testdata_files
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from sqlalchemy import select

from dicom_node.export import echo
from dicom_node.routing import rule_matches
from dicom_node.services import OrthancHandle, RedisHandle, orthanc_rest, wait_until
from dicom_node.settings import DestinationSettings
from dicom_node.state import JobState, StateDB
from dicom_node.state.db import SeriesInputs
from dicom_node.state.schema import TERMINAL_JOB_STATES, ExportState, Study, StudyState
from pipelines.spec import PipelineSpec, load_pipeline_specs
from tests.judges import dciodvfy_errors
from tests.node_process import (
    REPO,
    NodeProcess,
    run_node,
    run_worker,
    storescu_as_they_are,
    write_config,
)
from tests.unit.pipelines.bundles import write_pipeline_yaml, write_threshold_bundle

pytestmark = pytest.mark.slow

CORPUS = Path("/work/shared/corpus")
_IMAGE_MODALITIES = {"CT", "MR"}


@dataclass(frozen=True, slots=True)
class SeriesCase:
    """One series to send: a label without header text, and its files."""

    label: str
    modality: str
    study_uid: str
    series_uid: str
    files: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class Sent:
    """What the sender saw for one series."""

    accepted: int
    refusals: tuple[str, ...]
    quarantine_reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SeriesOutcome:
    """What became of one series."""

    case: SeriesCase
    outcome: str
    reason: str
    results: tuple[pydicom.Dataset, ...] = ()


def _header(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


def _has_pixels(path: Path) -> bool:
    try:
        return "PixelData" in pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError):
        return False


def real_series() -> list[SeriesCase]:
    """Every corpus series, then every CT/MR image series of pydicom and pydicom-data.

    A file is taken once (by SOP Instance UID): pydicom ships some images in
    several transfer syntaxes under one UID, and the corpus holds a few of
    pydicom's own files.
    """
    seen: set[str] = set()
    cases: list[SeriesCase] = []

    def add(prefix: str, files: list[Path], keep: bool) -> None:
        groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
        for path in files:
            header = _header(path)
            if header is None:
                continue
            sop_uid = str(header.get("SOPInstanceUID", "") or "")
            if sop_uid and sop_uid in seen:
                continue
            if not keep and (
                str(header.get("Modality", "")) not in _IMAGE_MODALITIES or not _has_pixels(path)
            ):
                continue
            seen.add(sop_uid)
            groups.setdefault(str(header.get("SeriesInstanceUID", "") or ""), []).append(
                (path, header)
            )
        for series_uid, members in groups.items():
            first_path, first = members[0]
            label = prefix if len(groups) == 1 else f"{prefix}/{first_path.name}"
            cases.append(
                SeriesCase(
                    label=label,
                    modality=str(first.get("Modality", "")),
                    study_uid=str(first.get("StudyInstanceUID", "") or ""),
                    series_uid=series_uid,
                    files=tuple(path for path, _ in members),
                )
            )

    for folder in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        add(folder.name, sorted(p for p in folder.rglob("*") if p.is_file()), keep=True)
    shipped = sorted({Path(f) for f in get_testdata_files() if Path(f).is_file()})
    assert len(shipped) > 200, "pydicom-data must be installed"
    add("pydicom", shipped, keep=False)
    for case in cases:
        if case.label == "pydicom":
            raise AssertionError("pydicom's series must be told apart by their first file")
    return cases


def _pipelines(folder: Path) -> Path:
    """The shipped CT and DX pipelines, and an MR segmentation made here."""
    folder.mkdir(parents=True)
    for name in ("ct-body-lung", "dx-chest-nodule"):
        source = REPO / "config" / "pipelines" / f"{name}.yaml"
        data = yaml.safe_load(source.read_text())
        path = data["model"].get("path")
        if path is not None:
            data["model"]["path"] = str((source.parent / path).resolve())
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
    bundle = write_threshold_bundle(folder.parent / "mr-bundle")
    write_pipeline_yaml(
        folder,
        bundle,
        name="mr-test-bundle",
        selection={"rules": [{"name": "MR", "conditions": {"Modality": "^MR$"}}]},
        series_description="AI test bundle on MR (not for diagnosis)",
    )
    return folder


def _send(node: NodeProcess, case: SeriesCase, folder: Path) -> Sent:
    """Send one series as it is; count what the receiver accepted and refused, and why."""
    quarantine = node.spool_dir / "quarantine"
    before = set(quarantine.glob("*.reason.txt")) if quarantine.exists() else set()
    storable = []
    raw = []
    for path in case.files:
        header = _header(path)
        assert header is not None
        if str(header.get("SOPClassUID", "") or "") and str(header.get("SOPInstanceUID", "") or ""):
            storable.append(path)
        else:
            raw.append(path)
    accepted = 0
    refusals: list[str] = []
    pending = storable
    while pending:
        done = storescu_as_they_are(node.port, pending, folder)
        answered: dict[Path, str] = {}
        current: Path | None = None
        for line in (done.stdout + done.stderr).splitlines():
            if "Sending file:" in line:
                current = Path(line.split("Sending file:", 1)[1].strip())
            elif "Received Store Response" in line and current is not None:
                answered[current] = line.split("Response", 1)[1].strip(" ()")
        for path in pending:
            if path not in answered:
                # storescu gave up on this file (it cannot parse its UIDs): send it raw.
                raw.append(path)
                pending = pending[pending.index(path) + 1 :]
                break
            if answered[path] == "Success":
                accepted += 1
            else:
                refusals.append(answered[path])
        else:
            pending = []
    if raw:
        # storescu needs the SOP class in the data set; the file meta still names it.
        ae = AE(ae_title="RAWSENDER")
        contexts = {
            (str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
            for m in (pydicom.dcmread(p, stop_before_pixels=True).file_meta for p in raw)
        }
        for sop_class, syntax in contexts:
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
        assert assoc.is_established, f"{case.label}: the node refused the association"
        # Chunked from the file: the UIDs of the request come from the file meta and
        # the data set's bytes go as they are.
        chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
        try:
            for path in raw:
                status = assoc.send_c_store(path)
                code = int(status.Status) if "Status" in status else -1
                if code == 0:
                    accepted += 1
                else:
                    refusals.append(f"0x{code:04X}")
        finally:
            pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
            assoc.release()
    after = set(quarantine.glob("*.reason.txt")) if quarantine.exists() else set()
    reasons = tuple(p.read_text().strip() for p in sorted(after - before))
    return Sent(accepted=accepted, refusals=tuple(refusals), quarantine_reasons=reasons)


def _settled(state: StateDB, cases: list[SeriesCase], sent: dict[str, Sent]) -> bool:
    """Every accepted study routed, every job ended, every result exported."""
    studies = {case.study_uid for case in cases if sent[case.label].accepted}
    with state.session() as s:
        rows = s.scalars(select(Study).where(Study.study_uid.in_(studies))).all()
        if len(rows) != len(studies) or any(r.state != StudyState.COMPLETE for r in rows):
            return False
    jobs = state.jobs(list(JobState))
    if any(job.state not in TERMINAL_JOB_STATES for job in jobs):
        return False
    for job in jobs:
        if job.state == JobState.DONE and any(
            e.state != ExportState.SENT for e in state.exports_of(job.id)
        ):
            return False
    return True


def _from_orthanc(base_url: str, sop_instance_uid: str) -> pydicom.Dataset:
    found = orthanc_rest(
        base_url,
        "/tools/find",
        {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}},
    )
    assert len(found) == 1, f"Orthanc holds {len(found)} instances {sop_instance_uid}"
    raw = orthanc_rest(base_url, f"/instances/{found[0]}/file", raw=True)
    return pydicom.dcmread(BytesIO(raw))


def _why_no_rule(series: SeriesInputs, specs: dict[str, PipelineSpec]) -> str:
    """Which condition of each enabled pipeline's rules the series fails (from the node's DB)."""
    reasons = []
    for spec in specs.values():
        if not spec.enabled:
            continue
        for rule in spec.selection.rules:
            assert not rule_matches(rule, series.attributes), f"{spec.name} would select it"
            failed = [
                keyword
                for keyword, expected in rule.conditions.items()
                if not rule_matches(rule.model_copy(update={"conditions": {keyword: expected}}),
                                    series.attributes)
            ]  # fmt: skip
            reasons.append(f"{spec.name}/{rule.name}: {', '.join(failed)}")
    return "; ".join(reasons)


def collect_outcomes(
    cases: list[SeriesCase],
    sent: dict[str, Sent],
    state: StateDB,
    orthanc_url: str,
    specs: dict[str, PipelineSpec],
) -> list[SeriesOutcome]:
    """One outcome per series: results, a job's reason, a refusal, or no rule selecting it.

    Parameters
    ----------
    cases : list[SeriesCase]
        The series sent.
    sent : dict[str, Sent]
        What the sender saw, by case label.
    state : StateDB
        The node's state DB.
    orthanc_url : str
        Orthanc's REST URL.
    specs : dict[str, PipelineSpec]
        The pipelines the node ran with.

    Returns
    -------
    list[SeriesOutcome]
        In the order of ``cases``.
    """
    every_job = state.jobs(list(JobState))
    outcomes = []
    for case in cases:
        delivery = sent[case.label]
        if not delivery.accepted:
            reason = "; ".join(sorted(set(delivery.refusals)))
            if delivery.quarantine_reasons:
                reason += " (quarantined: " + "; ".join(sorted(set(delivery.quarantine_reasons)))
                reason += ")"
            outcomes.append(SeriesOutcome(case, "refused at receive", reason))
            continue
        jobs = [job for job in every_job if job.series_uid == case.series_uid]
        if not jobs:
            _, inputs = state.series_inputs(case.study_uid)
            (series,) = [s for s in inputs if s.series_uid == case.series_uid]
            outcomes.append(SeriesOutcome(case, "no job", _why_no_rule(series, specs)))
            continue
        for job in jobs:
            if job.state != JobState.DONE:
                outcomes.append(SeriesOutcome(case, f"job {job.state}", job.reason))
                continue
            results = tuple(
                _from_orthanc(orthanc_url, e.sop_instance_uid) for e in state.exports_of(job.id)
            )
            kinds = "+".join(sorted(str(ds.Modality) for ds in results))
            outcomes.append(SeriesOutcome(case, f"{job.pipeline}: {kinds}", "", results))
    return outcomes


def _source_positions(files: tuple[Path, ...]) -> dict[tuple[str, int | None], np.ndarray]:
    """Image Position (Patient) of every slice and frame of a series' files."""
    positions: dict[tuple[str, int | None], np.ndarray] = {}
    for path in files:
        header = _header(path)
        assert header is not None
        uid = str(header.SOPInstanceUID)
        per_frame = header.get("PerFrameFunctionalGroupsSequence")
        if per_frame:
            for number, groups in enumerate(per_frame, start=1):
                plane = groups.PlanePositionSequence[0].ImagePositionPatient
                positions[(uid, number)] = np.array([float(v) for v in plane])
        elif "ImagePositionPatient" in header:
            positions[(uid, None)] = np.array([float(v) for v in header.ImagePositionPatient])
    return positions


def _check_results(outcome: SeriesOutcome, specs: dict[str, PipelineSpec], folder: Path) -> None:
    pipeline = outcome.outcome.split(":")[0]
    expected = {kind.value.upper() for kind in specs[pipeline].outputs} - {"SC"}
    assert {str(ds.Modality) for ds in outcome.results} >= expected, outcome.case.label
    positions = _source_positions(outcome.case.files)
    for index, ds in enumerate(outcome.results):
        path = folder / f"{outcome.case.label.replace('/', '_')}-{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], f"{outcome.case.label}: {ds.Modality}"
        if ds.Modality != "SEG":
            continue
        for frame in ds.PerFrameFunctionalGroupsSequence:
            (source,) = frame.DerivationImageSequence[0].SourceImageSequence
            number = source.get("ReferencedFrameNumber")
            key = (str(source.ReferencedSOPInstanceUID), int(number) if number else None)
            position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
            np.testing.assert_allclose(position, positions[key], atol=1e-4,
                                       err_msg=outcome.case.label)  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisHandle, orthanc: OrthancHandle
) -> tuple[list[SeriesOutcome], dict[str, PipelineSpec], list[SeriesCase]]:
    folder = tmp_path_factory.mktemp("real-series")
    pipelines = _pipelines(folder / "pipelines")
    specs = load_pipeline_specs(pipelines)
    client = redis.Redis(port=redis_server.port, db=11)
    client.flushdb()
    client.close()
    config = write_config(
        folder, redis_server.db_url(11), orthanc.dicom_port, pipelines_dir=str(pipelines)
    )
    cases = real_series()
    sent: dict[str, Sent] = {}
    with run_node(config) as node, run_worker(config):
        for case in cases:
            sent[case.label] = _send(node, case, folder)
        state = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")
        try:
            wait_until(lambda: _settled(state, cases, sent), 600, "every series settled", 1)
            alive = DestinationSettings(name="node", ae_title="DICOM_NODE", host="127.0.0.1",
                                        port=node.port, timeout_s=5)  # fmt: skip
            assert echo("CHECK", alive)[0], "the node must stay up throughout"
            found = collect_outcomes(cases, sent, state, orthanc.http_url, specs)
        finally:
            state.close()
    return found, specs, cases


def test_every_series_gets_results_or_a_reason(
    outcomes: tuple[list[SeriesOutcome], dict[str, PipelineSpec], list[SeriesCase]], tmp_path: Path
) -> None:
    found, specs, cases = outcomes
    width = max(len(item.case.label) for item in found) + 2
    print(f"\n{'series':<{width}}{'modality':<10}{'outcome':<30}reason")
    for item in found:
        print(f"{item.case.label:<{width}}{item.case.modality:<10}{item.outcome:<30}{item.reason}")
    for item in found:
        if item.results:
            _check_results(item, specs, tmp_path)
        else:
            assert item.reason, f"{item.case.label}: {item.outcome} without a reason"
    assert {item.case.label for item in found} == {case.label for case in cases}


def test_real_geometry_series_get_their_results(
    outcomes: tuple[list[SeriesOutcome], dict[str, PipelineSpec], list[SeriesCase]],
) -> None:
    """The series this work is about: tilt, Enhanced MR in files, mixed frames, no description."""
    found, _, _ = outcomes
    by_label = {item.case.label: item for item in found}
    for label, pipeline in (
        ("philips-ct-gantry-tilt-subset", "ct-body-lung"),
        ("lidc-idri-0001-chest-ct", "ct-body-lung"),
        ("lidc-idri-0002-chest-ct", "ct-body-lung"),
        ("enhanced-mr-siemens-xa10", "mr-test-bundle"),
        ("enhanced-mr-philips-fmap", "mr-test-bundle"),
        ("mr-sag-t1-decubitus-hfdl", "mr-test-bundle"),
        ("toshiba-mr-dwi-oblique-b0-volume", "mr-test-bundle"),
        ("pydicom/eCT_Supplemental.dcm", "ct-body-lung"),
    ):
        assert by_label[label].outcome == f"{pipeline}: SEG+SR", (label, by_label[label])
    # Empty UIDs: the receiver refuses every file with a reason, and quarantines it.
    empty = by_label["totalseg-siemens-ct"]
    assert empty.outcome == "refused at receive"
    assert "quarantined" in empty.reason


def test_segments_are_not_labelled_from_the_wrong_series(
    outcomes: tuple[list[SeriesOutcome], dict[str, PipelineSpec], list[SeriesCase]],
) -> None:
    """Each SEG names its own series, so a table row is about the series it says."""
    found, _, _ = outcomes
    for item in found:
        for ds in item.results:
            if ds.Modality == "SEG":
                (series,) = ds.ReferencedSeriesSequence
                assert series.SeriesInstanceUID == item.case.series_uid, item.case.label
