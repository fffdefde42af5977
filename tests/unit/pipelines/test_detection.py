"""Detection bundles: boxes placed on the source slices, written as a TID 1500 SR."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_node.phantom import ChestPhantom, PhantomStudy
from pipelines import models
from pipelines.manifest import ManifestStatus
from pipelines.run import run_pipeline
from pipelines.spec import load_pipeline_specs
from pipelines.writers.detection_sr import DEPTH, HEIGHT, WIDTH
from tests.judges import dciodvfy_errors
from tests.unit.pipelines.bundles import add_blob, write_blob_detector_bundle, write_detection_yaml

PHANTOM = ChestPhantom(slices=16, size=96, pixel_spacing_mm=2.0, slice_thickness_mm=4.0)
BLOB = (9, 30, 61)  # slice, row, column: right of the spine, anterior (image left, top)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    models.clear_model_cache()


@pytest.fixture(scope="module")
def blob_study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    study = PHANTOM.write(tmp_path_factory.mktemp("blob-ct"))
    add_blob(list(study.paths), BLOB)
    return study


def finding_regions(
    sr: pydicom.Dataset,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """The TID 1411 groups of a detection SR."""
    document = hd.sr.Comprehensive3DSR.from_dataset(sr)
    report = document.content
    assert isinstance(report, hd.sr.MeasurementReport)
    return list(report.get_volumetric_roi_measurement_groups())


def check_blob_sr(sr: pydicom.Dataset, study: PhantomStudy) -> None:
    """One finding on the blob's slices; its first region on the centre slice, centred on it."""
    groups = finding_regions(sr)
    assert len(groups) == 1
    group = groups[0]
    regions = group.roi  # highdicom: the group's image regions
    assert isinstance(regions, list)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study.paths]
    index, row, column = BLOB
    referenced = [
        str(r.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for r in regions
    ]
    assert referenced[0] == uids[index]  # the centre slice first: OHIF draws it there
    assert set(referenced) == {uids[index - 1], uids[index], uids[index + 1]}
    assert all(r.GraphicType == "POLYLINE" for r in regions)
    points = np.asarray(regions[0].GraphicData, dtype=float).reshape(-1, 2)
    center = (points[:-1].min(axis=0) + points[:-1].max(axis=0)) / 2
    # SCOORD is (column, row) with the top-left pixel's centre at (0.5, 0.5).
    assert np.allclose(center, (column + 0.5, row + 0.5), atol=1.0)
    width = group.get_measurements(name=WIDTH)[0].value
    depth = group.get_measurements(name=DEPTH)[0].value
    height = group.get_measurements(name=HEIGHT)[0].value
    assert width == pytest.approx(7 * PHANTOM.pixel_spacing_mm, abs=PHANTOM.pixel_spacing_mm)
    assert depth == pytest.approx(7 * PHANTOM.pixel_spacing_mm, abs=PHANTOM.pixel_spacing_mm)
    assert height == pytest.approx(3 * PHANTOM.slice_thickness_mm, abs=PHANTOM.slice_thickness_mm)


def test_blob_detector_boxes_land_on_the_right_slice_and_place(
    blob_study: PhantomStudy, tmp_path: Path
) -> None:
    bundle = write_blob_detector_bundle(tmp_path / "bundle")
    spec = load_pipeline_specs(write_detection_yaml(tmp_path / "p", bundle).parent)
    manifest = run_pipeline(spec["ct-test-detection"], blob_study.paths, tmp_path / "out", 1)
    assert manifest.status is ManifestStatus.DONE
    assert manifest.measurements["nodule.count"] == 1.0
    assert dciodvfy_errors(tmp_path / "out" / "sr.dcm") == []
    check_blob_sr(pydicom.dcmread(tmp_path / "out" / "sr.dcm"), blob_study)


def test_no_box_above_the_threshold_is_reported_absent(
    blob_study: PhantomStudy, tmp_path: Path
) -> None:
    bundle = write_blob_detector_bundle(tmp_path / "bundle")
    folder = write_detection_yaml(
        tmp_path / "p", bundle, detection={"score_threshold": 0.95}
    ).parent
    spec = load_pipeline_specs(folder)["ct-test-detection"]
    manifest = run_pipeline(spec, blob_study.paths, tmp_path / "out", 2)
    assert manifest.measurements["nodule.count"] == 0.0
    assert any("absent" in note for note in manifest.notes)
    assert dciodvfy_errors(tmp_path / "out" / "sr.dcm") == []
    assert finding_regions(pydicom.dcmread(tmp_path / "out" / "sr.dcm")) == []


def test_each_bundle_keeps_its_own_scripts_package(
    blob_study: PhantomStudy, tmp_path: Path
) -> None:
    # Two bundles, both with a package called "scripts": each must load its own.
    first = write_blob_detector_bundle(tmp_path / "first")
    second = write_blob_detector_bundle(tmp_path / "second")
    shutil.rmtree(second / "scripts")
    (second / "scripts").mkdir()
    (second / "scripts" / "__init__.py").write_text("")
    (second / "scripts" / "blob_inferer.py").write_text(
        (first / "scripts" / "blob_inferer.py").read_text().replace("0.9)", "0.7)")
    )
    scores = []
    for index, bundle in enumerate((first, second, first)):
        models.clear_model_cache()
        folder = write_detection_yaml(tmp_path / f"p{index}", bundle).parent
        spec = load_pipeline_specs(folder)["ct-test-detection"]
        manifest = run_pipeline(spec, blob_study.paths, tmp_path / f"out{index}", index)
        scores.append(manifest.measurements["nodule.max_score"])
    assert scores == pytest.approx([0.9, 0.7, 0.9])
