"""An Enhanced (multi-frame) CT through the whole node: storescu → serve → worker → Orthanc.

There is no real Enhanced CT in the corpus, so the phantom's slices are
converted by highdicom's legacy converter into Legacy Converted Enhanced CT
images (``tests/factories.py``), split over two multi-frame files of one
series with their frames shuffled. A SEG frame is right only if it names the
right file and frame: each must, and its position must be that frame's.
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
from tests.factories import enhanced_ct, frame_positions
from tests.judges import dciodvfy_errors
from tests.node_process import run_node, run_worker, storescu_as_they_are, write_config

pytestmark = pytest.mark.slow

LABEL_KEYS = {"Body": "body", "Right lung": "right_lung", "Left lung": "left_lung"}


@pytest.fixture(scope="module")
def delivered(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisHandle, orthanc: OrthancHandle
) -> tuple[PhantomStudy, list[Path], dict[str, pydicom.Dataset]]:
    folder = tmp_path_factory.mktemp("enhanced-e2e")
    study = ChestPhantom(slices=48, size=256, pixel_spacing_mm=1.4).write(folder / "slices")
    files = enhanced_ct(study.paths, folder / "enhanced", files=2)
    client = redis.Redis(port=redis_server.port, db=12)
    client.flushdb()
    client.close()
    config = write_config(folder, redis_server.db_url(12), orthanc.dicom_port)
    found: dict[str, pydicom.Dataset] = {}
    with run_node(config) as node, run_worker(config):
        sent = storescu_as_they_are(node.port, files, folder)
        assert sent.returncode == 0, sent.stderr
        state = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")

        def arrived() -> bool:
            failed = state.jobs([JobState.FAILED, JobState.SKIPPED])
            assert not failed, f"job ended {failed[0].state}: {failed[0].reason}"
            for raw in orthanc_study_objects(orthanc.http_url, study.study_uid, {"SEG", "SR"}):
                ds = pydicom.dcmread(BytesIO(raw))
                found[str(ds.Modality)] = ds
            return {"SEG", "SR"} <= found.keys()

        try:
            wait_until(arrived, 300, "SEG and SR of the Enhanced CT in Orthanc", interval_s=1)
        finally:
            state.close()
    return study, files, found


def test_seg_and_sr_pass_dciodvfy(
    delivered: tuple[PhantomStudy, list[Path], dict[str, pydicom.Dataset]], tmp_path: Path
) -> None:
    _, _, found = delivered
    for modality, ds in found.items():
        path = tmp_path / f"{modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], modality


def test_seg_frames_reference_the_right_source_frames(
    delivered: tuple[PhantomStudy, list[Path], dict[str, pydicom.Dataset]],
) -> None:
    study, files, found = delivered
    seg = found["SEG"]
    positions = {}
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        for number, where in frame_positions(path).items():
            positions[(uid, number)] = where
    used = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (source,) = frame.DerivationImageSequence[0].SourceImageSequence
        key = (str(source.ReferencedSOPInstanceUID), int(source.ReferencedFrameNumber))
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, positions[key], atol=1e-4)
        used.add(key)
    assert used == set(positions)  # the body is on every frame of both files
    assert seg.FrameOfReferenceUID == study.frame_of_reference_uid
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == study.series_uid


def test_volumes_match_the_phantom(
    delivered: tuple[PhantomStudy, list[Path], dict[str, pydicom.Dataset]],
) -> None:
    study, _, found = delivered
    labels = segment_labels(found["SEG"])
    measured = sr_measurements(found["SR"])
    assert set(labels.values()) == set(LABEL_KEYS)
    for number, label in labels.items():
        truth = study.true_volumes_ml[LABEL_KEYS[label]]
        assert measured[number]["Volume"] == pytest.approx(truth, rel=0.03), label
