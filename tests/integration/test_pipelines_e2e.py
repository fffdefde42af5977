"""Pipelines through the real node: a DX study classified, a bundle made here segmenting a CT.

As in ``test_end_to_end.py`` everything is real: dcmtk's storescu sends,
``dicom-node serve`` and ``dicom-node worker`` run as processes, redis-server
is the broker and Orthanc the archive. The results are judged as Orthanc
returns them: dciodvfy, highdicom, and their content against the phantoms.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import redis

from dicom_node.phantom import ChestPhantom, PhantomStudy
from dicom_node.phantom_dx import ChestRadiographPhantom
from dicom_node.result_summary import segment_labels, sr_measurements
from dicom_node.services import OrthancHandle, RedisHandle, orthanc_study_objects, wait_until
from dicom_node.state import JobState, StateDB
from pipelines.writers.classification_sr import ABSENT, PRESENT, PROBABILITY
from tests.judges import dciodvfy_errors
from tests.node_process import run_node, run_worker, storescu, write_config
from tests.unit.pipelines.bundles import (
    add_blob,
    write_blob_detector_bundle,
    write_detection_yaml,
    write_pipeline_yaml,
    write_threshold_bundle,
)
from tests.unit.pipelines.test_detection import BLOB, PHANTOM, check_blob_sr

pytestmark = pytest.mark.slow

SENTINEL = "SENTINEL^PHI^DX^4K8W"
FINDINGS = (True, False, True)


def _deliver(
    config: Path, orthanc_url: str, study_folder: Path, study_uid: str, modalities: set[str]
) -> dict[str, pydicom.Dataset]:
    """Send a study through a real node and worker; return what reached Orthanc by modality."""
    found: dict[str, pydicom.Dataset] = {}
    with run_node(config) as node, run_worker(config):
        sent = storescu(node.port, study_folder)
        assert sent.returncode == 0, sent.stderr
        state = StateDB(f"sqlite:///{node.spool_dir / 'state.db'}")

        def arrived() -> bool:
            failed = state.jobs([JobState.FAILED, JobState.SKIPPED])
            assert not failed, f"job ended {failed[0].state}: {failed[0].reason}"
            for raw in orthanc_study_objects(orthanc_url, study_uid, modalities):
                ds = pydicom.dcmread(BytesIO(raw))
                found[str(ds.Modality)] = ds
            return modalities <= found.keys()

        try:
            wait_until(arrived, 120, f"{sorted(modalities)} in Orthanc", interval_s=1)
        finally:
            state.close()
    return found


def _own_database(redis_server: RedisHandle, db: int) -> str:
    """A flushed Redis database for one module's node (job IDs are per node)."""
    client = redis.Redis(port=redis_server.port, db=db)
    client.flushdb()
    client.close()
    return redis_server.db_url(db)


@pytest.fixture(scope="module")
def dx_delivered(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisHandle, orthanc: OrthancHandle
) -> tuple[list[str], pydicom.Dataset, Path]:
    """A synthetic DX study (nodule, none, nodule) through the node with the shipped pipelines."""
    folder = tmp_path_factory.mktemp("dx-e2e")
    study = ChestRadiographPhantom(size=256, seed=3).write(
        folder / "dx", FINDINGS, patient_name=SENTINEL, patient_id="SENTINEL-DX-ID"
    )
    config = write_config(folder, _own_database(redis_server, 14), orthanc.dicom_port)
    found = _deliver(config, orthanc.http_url, folder / "dx", study.study_uid, {"SR"})
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study.paths]
    return uids, found["SR"], folder


def test_dx_classification_sr_in_orthanc_passes_dciodvfy(
    dx_delivered: tuple[list[str], pydicom.Dataset, Path], tmp_path: Path
) -> None:
    _, sr, _ = dx_delivered
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_dx_sr_has_the_finding_and_probability_of_each_image(
    dx_delivered: tuple[list[str], pydicom.Dataset, Path], tmp_path: Path
) -> None:
    uids, sr, _ = dx_delivered
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    document = hd.sr.srread(path)
    assert isinstance(document, hd.sr.Comprehensive3DSR)
    assert "not for diagnosis" in document.SeriesDescription
    report = document.content
    assert isinstance(report, hd.sr.MeasurementReport)
    groups = report.get_image_measurement_groups()
    by_image: dict[str, hd.sr.MeasurementsAndQualitativeEvaluations] = {
        g.source_images[0].referenced_sop_instance_uid: g for g in groups
    }
    assert set(by_image) == set(uids)
    for uid, finding in zip(uids, FINDINGS, strict=True):
        group = by_image[uid]
        assert group.finding_type is not None
        assert group.finding_type.value == "27925004"  # SCT Nodule
        (probability,) = group.get_measurements(name=PROBABILITY)
        assert (probability.value >= 0.5) == finding
        (presence,) = group.get_qualitative_evaluations(name=group.finding_type)
        assert presence.value == (PRESENT if finding else ABSENT)


def test_dx_patient_name_reaches_no_log(
    dx_delivered: tuple[list[str], pydicom.Dataset, Path],
) -> None:
    _, _, folder = dx_delivered
    for log in (folder / "node.log", folder / "worker.log"):
        text = log.read_text(errors="replace")
        assert text, f"{log.name} is empty: the check would prove nothing"
        assert SENTINEL not in text
        assert "SENTINEL-DX-ID" not in text


@pytest.fixture(scope="module")
def bundle_delivered(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisHandle, orthanc: OrthancHandle
) -> dict[str, pydicom.Dataset]:
    """A CT through the node, segmented by a MONAI bundle written here (Model Zoo layout)."""
    folder = tmp_path_factory.mktemp("bundle-e2e")
    bundle = write_threshold_bundle(folder / "bundles" / "test_threshold")
    pipelines_dir = write_pipeline_yaml(folder / "pipelines", bundle).parent
    study = ChestPhantom(slices=40, size=128, pixel_spacing_mm=2.8, slice_thickness_mm=5.0).write(
        folder / "ct"
    )
    config = write_config(
        folder,
        _own_database(redis_server, 13),
        orthanc.dicom_port,
        pipelines_dir=str(pipelines_dir),
    )
    return _deliver(config, orthanc.http_url, folder / "ct", study.study_uid, {"SEG", "SR"})


def test_bundle_seg_and_sr_in_orthanc_pass_dciodvfy(
    bundle_delivered: dict[str, pydicom.Dataset], tmp_path: Path
) -> None:
    for modality, ds in bundle_delivered.items():
        path = tmp_path / f"{modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], modality


def test_bundle_results_name_its_label_and_volume(
    bundle_delivered: dict[str, pydicom.Dataset],
) -> None:
    seg, sr = bundle_delivered["SEG"], bundle_delivered["SR"]
    assert segment_labels(seg) == {1: "Dense tissue"}
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "87784001"
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == (
        "test threshold bundle"
    )
    measured = sr_measurements(sr)
    # Body tissue of the phantom, without the lungs: several litres.
    assert 3000 < measured[1]["Volume"] < 20000


@pytest.fixture(scope="module")
def detection_delivered(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisHandle, orthanc: OrthancHandle
) -> tuple[pydicom.Dataset, PhantomStudy]:
    """A CT with a bright blob through the node, boxed by a detection bundle written here."""
    folder = tmp_path_factory.mktemp("detection-e2e")
    bundle = write_blob_detector_bundle(folder / "bundles" / "test_blob_detector")
    pipelines_dir = write_detection_yaml(folder / "pipelines", bundle).parent
    study = PHANTOM.write(folder / "ct")
    add_blob(list(study.paths), BLOB)
    config = write_config(
        folder, _own_database(redis_server, 12), orthanc.dicom_port,
        pipelines_dir=str(pipelines_dir),
    )  # fmt: skip
    found = _deliver(config, orthanc.http_url, folder / "ct", study.study_uid, {"SR"})
    return found["SR"], study


def test_detection_sr_in_orthanc_passes_dciodvfy(
    detection_delivered: tuple[pydicom.Dataset, PhantomStudy], tmp_path: Path
) -> None:
    sr, _ = detection_delivered
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_detection_regions_land_on_the_blob_slice_and_position(
    detection_delivered: tuple[pydicom.Dataset, PhantomStudy],
) -> None:
    sr, study = detection_delivered
    check_blob_sr(sr, study)
