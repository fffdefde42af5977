"""Model sources: MONAI bundles (made here and shipped), TorchScript, the per-process cache."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_node.phantom import PhantomLabel, PhantomStudy
from pipelines import models
from pipelines.bundle import load_bundle
from pipelines.errors import PipelineConfigError
from pipelines.load import load_series
from pipelines.radiograph import load_radiographs
from pipelines.run import run_pipeline
from pipelines.spec import PipelineSpec, load_pipeline_specs
from pipelines.volume import to_volume
from tests.judges import dciodvfy_errors
from tests.unit.pipelines.bundles import THRESHOLD_HU, write_pipeline_yaml, write_threshold_bundle
from tests.unit.pipelines.phantom_series import SMALL

REPO = Path(__file__).resolve().parents[3]
SHIPPED = load_pipeline_specs(REPO / "config" / "pipelines")


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    models.clear_model_cache()


@pytest.mark.parametrize("config_format", ["json", "yaml"])
def test_bundle_made_here_runs_its_own_transforms_back_onto_the_input_grid(
    small_study: PhantomStudy, tmp_path: Path, config_format: str
) -> None:
    bundle = write_threshold_bundle(tmp_path / "bundle", config_format=config_format)
    spec = load_pipeline_specs(write_pipeline_yaml(tmp_path / "pipelines", bundle).parent)
    volume = to_volume(load_series(small_study.paths))
    masks = models.segmenter(spec["ct-test-bundle"])(volume)
    assert set(masks) == {"dense"}
    dense = masks["dense"]
    assert dense.shape == volume.shape
    # The bundle resamples to 6 mm and back, so edges move; away from them it is a threshold.
    clearly_dense = volume.array > THRESHOLD_HU + 300
    clearly_not = volume.array < THRESHOLD_HU - 300
    assert np.mean(dense[clearly_dense]) > 0.95
    assert np.mean(dense[clearly_not]) < 0.05
    # LoadImaged and SaveImaged were stripped: nothing was written beside the bundle.
    assert not Path("/nowhere").exists()
    assert sorted(p.name for p in bundle.iterdir()) == ["configs", "models"]


def test_bundle_labels_come_from_channel_def(tmp_path: Path) -> None:
    bundle = load_bundle(write_threshold_bundle(tmp_path / "bundle"))
    assert bundle.labels == {0: "background", 1: "dense"}
    assert bundle.name == "test_threshold"
    assert not bundle.network.training


def test_pipeline_label_missing_from_channel_def_is_a_config_error(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    bundle = write_threshold_bundle(tmp_path / "bundle")
    labels = [{"value": 1, "name": "liver", "label": "Liver",
               "category": {"value": "123037004", "meaning": "Anatomical Structure"},
               "type": {"value": "10200004", "meaning": "Liver"}}]  # fmt: skip
    folder = write_pipeline_yaml(tmp_path / "pipelines", bundle, labels=labels).parent
    spec = load_pipeline_specs(folder)["ct-test-bundle"]
    with pytest.raises(PipelineConfigError, match="no channel for label"):
        run_pipeline(spec, small_study.paths, tmp_path / "out", job_id=1)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "configs" / "metadata.json").unlink(), "metadata.json is missing"),
        (lambda root: (root / "configs" / "inference.json").unlink(), "inference.json"),
        (lambda root: (root / "models" / "model.pt").unlink(), "no weights"),
        (
            lambda root: torch.save({"weight": torch.zeros(3)}, root / "models" / "model.pt"),
            "does not fit",
        ),
    ],
)
def test_broken_bundles_are_config_errors(
    tmp_path: Path, damage: Callable[[Path], object], message: str
) -> None:
    root = write_threshold_bundle(tmp_path / "bundle")
    damage(root)
    with pytest.raises(PipelineConfigError, match=message):
        load_bundle(root)


def test_segmentation_bundle_without_channel_def_is_a_config_error(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    root = write_threshold_bundle(tmp_path / "bundle")
    (root / "configs" / "metadata.json").write_text(
        json.dumps({"name": "x", "network_data_format": {}})
    )
    spec = load_pipeline_specs(write_pipeline_yaml(tmp_path / "pipelines", root).parent)
    with pytest.raises(PipelineConfigError, match="channel_def"):
        run_pipeline(spec["ct-test-bundle"], small_study.paths, tmp_path / "out", job_id=1)


def test_worker_keeps_models_loaded_until_their_files_change(tmp_path: Path) -> None:
    bundle = write_threshold_bundle(tmp_path / "bundle")
    spec = load_pipeline_specs(write_pipeline_yaml(tmp_path / "pipelines", bundle).parent)[
        "ct-test-bundle"
    ]
    models.segmenter(spec)
    models.segmenter(spec)
    assert models.loaded_models() == 1
    weights = bundle / "models" / "model.pt"
    later = weights.stat().st_mtime + 10
    os.utime(weights, (later, later))
    models.segmenter(spec)
    assert models.loaded_models() == 2  # the replaced bundle was loaded afresh


def test_shipped_bundles_are_small_and_complete() -> None:
    total = 0
    for name in ("ct_chest_unet", "dx_chest_nodule"):
        root = REPO / "models" / name
        for part in ("configs/metadata.json", "configs/inference.json", "models/model.pt"):
            assert (root / part).is_file(), f"{name}/{part}"
        total += sum(p.stat().st_size for p in (root / "models").iterdir())
    assert total <= 20 * 1024 * 1024


def test_shipped_ct_unet_segments_the_phantom(small_study: PhantomStudy, tmp_path: Path) -> None:
    spec = SHIPPED["ct-chest-unet"]
    manifest = run_pipeline(spec, small_study.paths, tmp_path, job_id=11)
    volume = to_volume(load_series(small_study.paths))
    masks = models.segmenter(spec)(volume)
    truth = SMALL.labels()
    for name, label in (
        ("right_lung", PhantomLabel.RIGHT_LUNG),
        ("left_lung", PhantomLabel.LEFT_LUNG),
    ):
        expected = truth == label
        dice = 2 * np.sum(masks[name] & expected) / (np.sum(masks[name]) + np.sum(expected))
        assert dice > 0.85, (name, dice)
        assert manifest.measurements[f"{name}.volume_ml"] == pytest.approx(
            small_study.true_volumes_ml[name], rel=0.15
        )
    for kind in ("seg", "sr"):
        assert dciodvfy_errors(tmp_path / f"{kind}.dcm") == [], kind


def _torchscript_twin() -> PipelineSpec:
    """The DX classifier as a TorchScript file with the bundle's preprocessing declared."""
    bundle_spec = SHIPPED["dx-chest-nodule"]
    assert bundle_spec.model.path is not None
    model = {
        "kind": "torchscript",
        "path": str(bundle_spec.model.path / "models" / "model.ts"),
        "preprocessing": {"spatial_size": [128, 128], "percentiles": [1, 99]},
    }
    data = bundle_spec.model_dump(mode="json")
    data.update(name="dx-chest-nodule-ts", model=model)
    return PipelineSpec.model_validate(data)


def test_torchscript_with_declared_preprocessing_matches_the_bundle(
    tmp_path: Path,
) -> None:
    from dicom_node.phantom_dx import ChestRadiographPhantom

    study = ChestRadiographPhantom(size=256, seed=5).write(tmp_path / "dx", [True, False])
    images = load_radiographs(study.paths)
    from_bundle = models.classifier(SHIPPED["dx-chest-nodule"])
    from_torchscript = models.classifier(_torchscript_twin())
    for image in images:
        assert from_torchscript(image)["nodule"] == pytest.approx(
            from_bundle(image)["nodule"], abs=1e-4
        )
    assert models.loaded_models() == 2


def test_a_builtin_cannot_classify() -> None:
    spec = SHIPPED["ct-body-lung"]
    with pytest.raises(PipelineConfigError, match="no built-in classifier"):
        models.classifier(spec)
