"""The spine: storescu → dicom-node serve → Celery worker → SEG + SR in a real Orthanc.

Everything here is real: dcmtk's storescu sends, ``dicom-node serve`` and
``dicom-node worker`` run as processes, redis-server is the broker and Orthanc
is the archive. The objects are checked as Orthanc returns them.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import redis

from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.result_summary import segment_labels, sr_measurements
from dicom_node.services import OrthancHandle, RedisHandle, orthanc_study_objects, wait_until
from dicom_node.state import JobState, StateDB
from tests.conftest import new_postgres_database
from tests.judges import dciodvfy_errors
from tests.node_process import run_node, run_worker, storescu, write_config

pytestmark = pytest.mark.slow

SENTINEL = "SENTINEL^PHI^7Q3Z"
LABEL_KEYS = {"Body": "body", "Right lung": "right_lung", "Left lung": "left_lung"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def delivered(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisHandle,
    orthanc: OrthancHandle,
) -> tuple[PhantomStudy, dict[str, pydicom.Dataset], Path]:
    """Send the phantom through the real node and worker; return what reached Orthanc.

    Once with the state DB on SQLite (in the spool), once on PostgreSQL.
    """
    folder = tmp_path_factory.mktemp(f"e2e-{request.param}")
    study = ChestPhantom(slices=100).write(
        folder / "phantom", patient_name=SENTINEL, patient_id="SENTINEL-ID-91"
    )
    database_url = f"sqlite:///{folder / 'spool' / 'state.db'}"
    if request.param == "postgresql":
        database_url = new_postgres_database(request.getfixturevalue("postgres_server"))
    # A database of its own on the shared Redis (module scope: no broker_url fixture).
    broker = redis.Redis(port=redis_server.port, db=15)
    broker.flushdb()
    broker.close()
    config = write_config(
        folder, redis_server.db_url(15), orthanc.dicom_port, database_url=database_url
    )
    with run_node(config) as node, run_worker(config):
        sent = storescu(node.port, folder / "phantom")
        assert sent.returncode == 0, sent.stderr

        found: dict[str, pydicom.Dataset] = {}
        state = StateDB(database_url)

        def results_arrived() -> bool:
            failed = state.jobs([JobState.FAILED, JobState.SKIPPED])
            assert not failed, f"job ended {failed[0].state}: {failed[0].reason}"
            for raw in orthanc_study_objects(orthanc.http_url, study.study_uid, {"SEG", "SR"}):
                ds = pydicom.dcmread(BytesIO(raw))
                found[ds.Modality] = ds
            return {"SEG", "SR"} <= found.keys()

        wait_until(results_arrived, 300, "SEG and SR in Orthanc", interval_s=1)
        state.close()
    return study, found, folder


def test_seg_and_sr_pass_dciodvfy(
    delivered: tuple[PhantomStudy, dict[str, pydicom.Dataset], Path], tmp_path: Path
) -> None:
    _, found, _ = delivered
    for modality, ds in found.items():
        path = tmp_path / f"{modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], modality


def test_seg_references_source_series_and_geometry(
    delivered: tuple[PhantomStudy, dict[str, pydicom.Dataset], Path],
) -> None:
    study, found, _ = delivered
    seg = found["SEG"]
    assert seg.FrameOfReferenceUID == study.frame_of_reference_uid
    assert seg.StudyInstanceUID == study.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    source_positions = {
        tuple(
            round(float(v), 3)
            for v in pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient
        )
        for p in study.paths
    }
    frames = seg.PerFrameFunctionalGroupsSequence
    assert len(frames) > 0
    for frame in frames:
        position = tuple(
            round(float(v), 3) for v in frame.PlanePositionSequence[0].ImagePositionPatient
        )
        assert position in source_positions
    assert set(segment_labels(seg).values()) == set(LABEL_KEYS)


def test_volumes_within_five_percent(
    delivered: tuple[PhantomStudy, dict[str, pydicom.Dataset], Path],
) -> None:
    study, found, _ = delivered
    labels = segment_labels(found["SEG"])
    measured = sr_measurements(found["SR"])
    assert measured, "the SR holds no measurement groups"
    for number, label in labels.items():
        truth = study.true_volumes_ml[LABEL_KEYS[label]]
        volume = measured[number]["Volume"]
        assert volume == pytest.approx(truth, rel=0.05), label


def test_sr_references_seg_and_sources(
    delivered: tuple[PhantomStudy, dict[str, pydicom.Dataset], Path],
) -> None:
    study, found, _ = delivered
    sr, seg = found["SR"], found["SEG"]
    evidence = {
        item.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence
    source_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study.paths}
    assert evidence & source_uids


def test_seg_pixels_cover_the_lungs(
    delivered: tuple[PhantomStudy, dict[str, pydicom.Dataset], Path],
) -> None:
    _, found, _ = delivered
    seg = found["SEG"]
    pixels = seg.pixel_array
    assert pixels.dtype.kind in "ub"
    assert np.count_nonzero(pixels) > 0


def test_no_patient_data_in_any_log(
    delivered: tuple[PhantomStudy, dict[str, pydicom.Dataset], Path],
) -> None:
    study, _, folder = delivered
    first_source = pydicom.dcmread(study.paths[0], stop_before_pixels=True).SOPInstanceUID
    logs = [folder / "node.log", folder / "worker.log"]
    for log in logs:
        text = log.read_text(errors="replace")
        assert text, f"{log.name} is empty: the check would prove nothing"
        assert SENTINEL not in text
        assert "SENTINEL-ID-91" not in text
        # Logs name a study only by its short tag, never by its UIDs.
        assert study.study_uid not in text
        assert study.series_uid not in text
        assert first_source not in text
