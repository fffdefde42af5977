from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.phantom import ChestPhantom
from dicom_node.settings import load_settings
from dicom_node.spool import Spool
from pipelines.manifest import JobRequest, ManifestStatus, read_manifest
from pipelines.spec import OutputKind
from worker.tasks import execute_job

REPO = Path(__file__).resolve().parents[3]


def _request(node_id: str, **changes: object) -> JobRequest:
    fields: dict[str, object] = {
        "node_id": node_id,
        "job_id": 7,
        "pipeline": "ct-body-lung",
        "pipeline_version": "1.0.0",
        "inputs": ["instances/1.2/1.2.3/1.2.3.4.dcm"],
        "output_dir": "jobs/7",
    }
    fields.update(changes)
    return JobRequest.model_validate(fields)


def test_job_of_another_node_is_dropped_without_writing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    settings = load_settings(None, spool_dir=spool.root, pipelines_dir=REPO / "config/pipelines")
    manifest = execute_job(settings, _request("someone-else"))
    assert manifest.status is ManifestStatus.FAILED
    assert "another node" in manifest.reason
    assert not (spool.root / "jobs" / "7").exists()


def test_missing_input_fails_with_reason_and_manifest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    settings = load_settings(None, spool_dir=spool.root, pipelines_dir=REPO / "config/pipelines")
    manifest = execute_job(settings, _request(spool.node_id))
    assert manifest.status is ManifestStatus.FAILED
    written = read_manifest(spool.root / "jobs" / "7")
    assert written is not None
    assert written.node_id == spool.node_id
    assert written.status is ManifestStatus.FAILED
    assert "missing" in written.reason


def test_path_outside_the_spool_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    settings = load_settings(None, spool_dir=spool.root, pipelines_dir=REPO / "config/pipelines")
    manifest = execute_job(settings, _request(spool.node_id, inputs=["../../etc/passwd"]))
    assert manifest.status is ManifestStatus.FAILED
    assert "outside the spool" in manifest.reason


def test_unknown_pipeline_version_fails(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    settings = load_settings(None, spool_dir=spool.root, pipelines_dir=REPO / "config/pipelines")
    manifest = execute_job(settings, _request(spool.node_id, pipeline_version="9.9"))
    assert manifest.status is ManifestStatus.FAILED
    assert "9.9" in manifest.reason


def test_worker_start_names_what_an_enabled_bundle_lacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.unit.pipelines.bundles import write_pipeline_yaml, write_threshold_bundle
    from worker.app import make_celery

    bundle = write_threshold_bundle(tmp_path / "bundle")
    (bundle / "scripts").mkdir()
    (bundle / "scripts" / "__init__.py").write_text("import not_installed_anywhere\n")
    folder = write_pipeline_yaml(tmp_path / "pipelines", bundle).parent
    settings = load_settings(None, spool_dir=tmp_path / "spool", pipelines_dir=folder)
    with caplog.at_level("WARNING", logger="worker.app"):
        make_celery(settings)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert any("not_installed_anywhere" in r.getMessage() for r in errors)


def test_the_requested_outputs_are_what_the_job_writes(tmp_path: Path) -> None:
    """The node asks for what its destinations receive; the worker writes that, not its default."""
    spool = Spool(tmp_path / "spool")
    settings = load_settings(None, spool_dir=spool.root, pipelines_dir=REPO / "config/pipelines")
    study = ChestPhantom(slices=12, size=64, pixel_spacing_mm=5.6).write(
        spool.root / "instances" / "phantom"
    )
    inputs = [str(p.relative_to(spool.root)) for p in study.paths]
    request = _request(spool.node_id, inputs=inputs, outputs=["rtstruct", "pdf"])
    manifest = execute_job(settings, request)
    assert manifest.status is ManifestStatus.DONE, manifest.reason
    assert [o.kind for o in manifest.outputs] == [OutputKind.RTSTRUCT, OutputKind.PDF]
    assert sorted(p.name for p in (spool.root / "jobs" / "7").glob("*.dcm")) == [
        "report.dcm",
        "rtstruct.dcm",
    ]
