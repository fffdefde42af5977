"""The dashboard against a real state DB, a real spool and a real Redis, through TestClient.

Jobs are made the way the node makes them: instances recorded by
``StateDB.record_instance``, a study completed by ``complete_study``, states
moved by ``set_job_state`` / ``create_exports``, and a worker's results
written to the spool as the worker writes them (a highdicom SEG, then the
manifest). Only the worker process itself is absent here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_node.phantom import ChestPhantom, PhantomLabel, PhantomStudy
from dicom_node.scp.storage import _routing_attributes
from dicom_node.settings import Settings, load_settings
from dicom_node.spool import Spool
from dicom_node.state import InstanceRecord, JobState, NewJob, StateDB
from dicom_node.web import create_app
from dicom_node.web.auth import hash_password
from pipelines.manifest import JobManifest, ManifestStatus, OutputObject, write_manifest
from pipelines.spec import OutputKind

REPO = Path(__file__).resolve().parents[3]

#: A patient name that must never appear in an API response or a viewer's page.
SENTINEL = "SENTINEL^WEB^Q7Z"
PASSWORDS = {"admin": "admin-password-1", "viewer": "viewer-password-1"}


@pytest.fixture(scope="session")
def password_hashes() -> dict[str, str]:
    """argon2 hashes of the test users' passwords (hashing is slow on purpose: once)."""
    return {name: hash_password(password) for name, password in PASSWORDS.items()}


def make_settings(folder: Path, broker_url: str, hashes: dict[str, str], **web: object) -> Settings:
    """Settings of a node with the dashboard on, an admin and a viewer."""
    web_section: dict[str, object] = {
        "enabled": True,
        "port": 0,
        "session_secret": "test-secret-0123456789abcdef",
        "worker_ping_timeout_s": 0.2,
        "users": [
            {"name": "admin", "password_hash": hashes["admin"], "role": "admin"},
            {"name": "viewer", "password_hash": hashes["viewer"], "role": "viewer"},
        ],
    }
    web_section.update(web)
    return load_settings(
        None,
        spool_dir=folder / "spool",
        pipelines_dir=REPO / "config" / "pipelines",
        broker={"url": broker_url},
        scp={"min_free_bytes": 0},
        web=web_section,
    )


@pytest.fixture
def settings(tmp_path: Path, broker_url: str, password_hashes: dict[str, str]) -> Settings:
    """Dashboard settings on a fresh spool and a Redis database of its own."""
    return make_settings(tmp_path, broker_url, password_hashes)


@pytest.fixture
def spool(settings: Settings) -> Spool:
    """The node's spool."""
    return Spool(settings.spool_dir)


@pytest.fixture
def state(settings: Settings, spool: Spool) -> Iterator[StateDB]:  # noqa: ARG001
    """The node's state DB (SQLite in the spool)."""
    db = StateDB(settings.state_db_url)
    yield db
    db.close()


@pytest.fixture
def app(settings: Settings, state: StateDB, spool: Spool) -> FastAPI:
    """The dashboard over the real state DB and spool."""
    return create_app(settings, state=state, spool=spool)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A browser that has not logged in."""
    with TestClient(app) as anonymous:
        yield anonymous


def csrf_from(html: str) -> str:
    """The CSRF token in a page's forms."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def login(client: TestClient, name: str) -> str:
    """Log in through the login form; return the session's CSRF token."""
    token = csrf_from(client.get("/login").text)
    answer = client.post(
        "/login",
        data={"name": name, "password": PASSWORDS[name], "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return csrf_from(client.get("/associations").text)


@pytest.fixture
def admin(app: FastAPI) -> Iterator[tuple[TestClient, str]]:
    """A browser logged in as the admin, and its CSRF token."""
    with TestClient(app) as browser:
        yield browser, login(browser, "admin")


@pytest.fixture
def viewer(app: FastAPI) -> Iterator[tuple[TestClient, str]]:
    """A browser logged in as the viewer, and its CSRF token."""
    with TestClient(app) as browser:
        yield browser, login(browser, "viewer")


@dataclass(frozen=True)
class SeededJob:
    """A job made from a real phantom study in the spool."""

    job_id: int
    study: PhantomStudy
    phantom: ChestPhantom


SMALL = ChestPhantom(slices=8, size=64, pixel_spacing_mm=5.6, slice_thickness_mm=5.0)


def ingest(
    state: StateDB,
    spool: Spool,
    folder: Path,
    *,
    phantom: ChestPhantom = SMALL,
    patient_name: str = SENTINEL,
    accession: str = "ACC-1001",
    calling_ae: str = "CT_SCANNER_1",
    edit: Callable[[Dataset], None] | None = None,
) -> PhantomStudy:
    """Write a phantom and store it as the receiver does: files in the spool, rows committed.

    ``edit`` changes each data set before it is stored (e.g. drops its Series
    Description); the series' routing attributes are read from the stored data
    set by the receiver's own function.
    """
    study = phantom.write(folder, patient_name=patient_name, accession_number=accession)
    for path in study.paths:
        ds = pydicom.dcmread(path)
        if edit is not None:
            edit(ds)
            ds.save_as(path, enforce_file_format=True)
        target = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        size = spool.write_atomic(target, path.read_bytes())
        state.record_instance(
            InstanceRecord(
                study_uid=ds.StudyInstanceUID,
                series_uid=ds.SeriesInstanceUID,
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                path=spool.relative(target),
                size=size,
                calling_ae=calling_ae,
                association_id=None,
                modality=ds.Modality,
                accession_number=ds.AccessionNumber,
                study_date=ds.StudyDate,
                series_attributes=_routing_attributes(ds),
            )
        )
    return study


def make_job(state: StateDB, study: PhantomStudy) -> int:
    """Complete the study and create its ``ct-body-lung`` job, as routing does."""
    count, series = state.series_inputs(study.study_uid)
    new = [NewJob(series[0], "ct-body-lung", "1.0.0", "cpu", "rule 'axial CT' of ct-body-lung")]
    (job_id,) = state.complete_study(study.study_uid, count, new)
    return job_id


def write_seg(spool: Spool, job_id: int, state: StateDB, phantom: ChestPhantom) -> OutputObject:
    """Write a BINARY SEG of the phantom's lungs into the job's folder, as a worker does."""
    job = state.job(job_id)
    assert job is not None
    sources = sorted(
        (pydicom.dcmread(spool.resolve(p)) for p in job.inputs),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    labels = phantom.labels()
    mask = np.stack([labels == PhantomLabel.RIGHT_LUNG, labels == PhantomLabel.LEFT_LUNG], axis=-1)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="test", version="1", family=codes.DCM.ArtificialIntelligence
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor(*lab) if lab else None,
        )
        for number, label, lab in (
            (1, "Right lung", (60.0, -40.0, -40.0)),  # blue-ish
            (2, "Left lung", None),  # no colour: the palette's
        )
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="dicom-node tests",
        manufacturer_model_name="web",
        software_versions="1",
        device_serial_number="1",
    )
    folder = spool.job_dir(job_id)
    seg.save_as(folder / "seg.dcm")
    return OutputObject(
        kind=OutputKind.SEG,
        file="seg.dcm",
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        series_instance_uid=seg.SeriesInstanceUID,
    )


def finish_on_worker(
    spool: Spool,
    state: StateDB,
    job_id: int,
    *,
    status: ManifestStatus = ManifestStatus.DONE,
    reason: str = "",
    outputs: list[OutputObject] | None = None,
) -> None:
    """Dispatch the job and write its manifest, as the worker does at the end."""
    state.record_dispatch(job_id, f"job-{job_id}-1")
    state.set_job_state(job_id, JobState.RUNNING)
    manifest = JobManifest(
        job_id=job_id,
        node_id=spool.node_id,
        status=status,
        reason=reason,
        outputs=outputs or [],
        measurements={"right_lung.volume_ml": 812.5} if status is ManifestStatus.DONE else {},
        timings_s={"load": 0.12, "infer": 1.5, "write": 0.3},
        worker="cpu@test-host",
    )
    write_manifest(spool.job_dir(job_id), manifest)


@pytest.fixture
def done_job(state: StateDB, spool: Spool, tmp_path: Path) -> SeededJob:
    """A job that went all the way: SEG on the spool, exports sent, DONE."""
    study = ingest(state, spool, tmp_path / "done")
    job_id = make_job(state, study)
    output = write_seg(spool, job_id, state, SMALL)
    finish_on_worker(spool, state, job_id, outputs=[output])
    measurements = {"right_lung.volume_ml": 812.5}  # as the manifest says
    state.create_exports(
        job_id, [("archive", f"jobs/{job_id}/seg.dcm", output.sop_instance_uid)], measurements
    )
    for row in state.exports_of(job_id):
        state.mark_export_sent(row.id)
    state.set_job_state(job_id, JobState.DONE)
    return SeededJob(job_id, study, SMALL)


@pytest.fixture
def failed_job(state: StateDB, spool: Spool, tmp_path: Path) -> SeededJob:
    """A job the worker failed (an input went missing from the spool)."""
    study = ingest(
        state, spool, tmp_path / "failed", accession="ACC-2002", calling_ae="MR_SCANNER_2"
    )
    job_id = make_job(state, study)
    finish_on_worker(
        spool,
        state,
        job_id,
        status=ManifestStatus.FAILED,
        reason="instance 3 of 8 is missing from the spool",
    )
    state.set_job_state(job_id, JobState.FAILED, reason="instance 3 of 8 is missing from the spool")
    return SeededJob(job_id, study, SMALL)
