"""Loading bundles as downloaded: overrides, devices, old MONAI, label maps, checks, labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from monai.inferers.inferer import SlidingWindowInferer

from dicom_node.cli import cli
from dicom_node.phantom import PhantomStudy
from pipelines import models
from pipelines.bundle import load_bundle
from pipelines.bundle_check import CheckLevel, check_pipeline, pipeline_labels
from pipelines.errors import PipelineConfigError
from pipelines.label_table import PRIVATE_SCHEME, lookup, resolve_labels
from pipelines.load import load_series
from pipelines.spec import PipelineSpec, load_pipeline_specs
from pipelines.volume import to_volume
from tests.model_zoo import SHARED, pipeline_spec
from tests.unit.pipelines.bundles import THRESHOLD_HU, write_pipeline_yaml, write_threshold_bundle

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    models.clear_model_cache()


def _edit(root: Path, change: dict[str, object]) -> None:
    path = root / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config.update(change)
    path.write_text(json.dumps(config))


def _dense(small_study: PhantomStudy, root: Path, **load: object) -> np.ndarray:
    volume = to_volume(load_series(small_study.paths))
    output = load_bundle(root, **load).run(volume.to_metatensor())  # type: ignore[arg-type]
    assert output.pred is not None
    pred = output.pred
    labels = pred[0] if pred.shape[0] == 1 else torch.argmax(pred, dim=0)
    return volume.from_monai_layout(labels.numpy())


def test_a_config_written_for_cuda_runs_on_a_cpu_worker(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    root = write_threshold_bundle(tmp_path / "bundle")
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["device"] = "$torch.device('cuda:0')"
    config["network"] = "$@network_def.cuda()"
    config["inferer"]["sw_device"] = "$torch.device('cuda')"
    config["inferer"]["device"] = "$torch.device('cuda:0')"
    _edit(root, config)
    bundle = load_bundle(root, device=torch.device("cpu"))
    assert next(bundle.network.parameters()).device.type == "cpu"
    dense = _dense(small_study, root, device=torch.device("cpu"))
    volume = to_volume(load_series(small_study.paths))
    assert np.mean(dense[volume.array > THRESHOLD_HU + 300]) > 0.95


def test_overrides_reach_any_config_value_by_id_or_unique_name(tmp_path: Path) -> None:
    root = write_threshold_bundle(tmp_path / "bundle")
    bundle = load_bundle(root, overrides={"sw_batch_size": 3, "inferer#overlap": 0.5})
    inferer = bundle.inferer
    assert isinstance(inferer, SlidingWindowInferer)
    assert inferer.sw_batch_size == 3
    assert inferer.overlap == 0.5
    with pytest.raises(PipelineConfigError, match="names no config item"):
        load_bundle(root, overrides={"no_such_setting": 1})
    with pytest.raises(PipelineConfigError, match="ambiguous"):
        load_bundle(root, overrides={"keys": "image"})


def test_an_argument_older_monai_took_is_named_with_both_versions(tmp_path: Path) -> None:
    root = write_threshold_bundle(tmp_path / "bundle")
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["inferer"]["roi_shape"] = [32, 32, 32]  # an argument this MONAI does not take
    _edit(root, config)
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta["monai_version"] = "0.8.1"
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(PipelineConfigError, match=r"'roi_shape' in MONAI 1\.\d.*for MONAI 0\.8\.1"):
        load_bundle(root)


def test_a_label_map_inverted_with_interpolation_keeps_integer_labels(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    root = write_threshold_bundle(tmp_path / "bundle")
    config = json.loads((root / "configs" / "inference.json").read_text())
    post = config["postprocessing"]["transforms"]
    invert = next(t for t in post if t["_target_"] == "Invertd")
    invert["nearest_interp"] = False  # argmax, then resampled back with bilinear
    _edit(root, config)
    bundle = load_bundle(root)
    volume = to_volume(load_series(small_study.paths))
    output = bundle.run(volume.to_metatensor())
    assert output.pred is not None
    values = set(np.unique(output.pred.numpy()).tolist())
    assert values <= {0.0, 1.0}, values  # no 0.25 / 0.5 / 0.75 at the edges


def test_config_check_names_missing_packages_channels_and_weights(tmp_path: Path) -> None:
    root = write_threshold_bundle(tmp_path / "bundle")
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta["monai_version"] = "99.0.0"
    meta["optional_packages_version"] = {"not-a-real-package": "1.0"}
    meta["network_data_format"]["inputs"]["image"]["num_channels"] = 4
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    (root / "scripts").mkdir()
    (root / "scripts" / "__init__.py").write_text("import not_installed_anywhere\n")
    (root / "models" / "model.pt").unlink()
    spec = load_pipeline_specs(write_pipeline_yaml(tmp_path / "p", root).parent)["ct-test-bundle"]
    results = check_pipeline(spec)
    errors = [r.message for r in results if r.level is CheckLevel.ERROR]
    warnings = [r.message for r in results if r.level is CheckLevel.WARNING]
    assert any("monai 99.0.0" in e for e in errors)
    assert any("not_installed_anywhere" in e and "scripts/__init__.py" in e for e in errors)
    assert any("4 input channels" in e for e in errors)
    assert any("no weights" in e for e in errors)
    assert any("not-a-real-package" in w for w in warnings)
    # The CLI fails on them for an enabled pipeline, and says which.
    config = tmp_path / "node.yaml"
    config.write_text(f"pipelines_dir: {tmp_path / 'p'}\nspool_dir: {tmp_path / 'spool'}\n")
    outcome = CliRunner().invoke(cli, ["config", "check", "--config", str(config)])
    assert outcome.exit_code == 1
    assert "4 input channels" in outcome.output


def test_config_check_passes_the_real_wholebody_bundle_with_weights(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "wholeBody_ct_segmentation"
    shutil.copytree(SHARED / "model-zoo" / "wholeBody_ct_segmentation", root)
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"weights")
    spec = load_pipeline_specs(pipeline_spec(tmp_path / "p", root))["zoo-test"]
    assert [r for r in check_pipeline(spec) if r.level is CheckLevel.ERROR] == []
    labels = pipeline_labels(spec)
    assert len(labels.labels) == 104
    assert labels.unmapped == ()
    assert set(labels.sources.values()) == {"totalsegmentator"}


def test_label_table_maps_names_and_reports_the_unknown() -> None:
    kidney, source = lookup("kidney_left") or (None, "")
    assert kidney is not None
    assert source == "totalsegmentator"
    assert (kidney.type.value, kidney.modifier and kidney.modifier.meaning) == ("64033007", "Left")
    resolution = resolve_labels(
        {0: "background", 1: "Right-Amygdala", 2: "made-up-structure"}, [], all_labels=True
    )
    names = [label.name for label in resolution.labels]
    assert names == ["Right-Amygdala", "made-up-structure"]  # background gets no segment
    assert resolution.unmapped == ("made-up-structure",)
    assert resolution.labels[1].type.scheme == PRIVATE_SCHEME
    assert resolution.labels[0].type.meaning == "Amygdala"


def test_shipped_lung_nodule_pipeline_is_a_disabled_detection_ready_for_the_bundle() -> None:
    spec: PipelineSpec = load_pipeline_specs(REPO / "config" / "pipelines")["ct-lung-nodule"]
    assert not spec.enabled
    assert spec.task == "detection"
    assert spec.outputs == ["sr"]
    assert spec.model.overrides == {"whether_raw_luna16": True}
    # Its override names a real item of the real bundle's configuration.
    from pipelines.bundle_files import read_bundle_files, resolve_override_keys

    files = read_bundle_files(SHARED / "model-zoo" / "lung_nodule_ct_detection")
    assert resolve_override_keys(files.config, ["whether_raw_luna16"], "x") == [
        "whether_raw_luna16"
    ]


def test_torchscript_and_keyed_checkpoints_load_like_the_state_dict(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    root = write_threshold_bundle(tmp_path / "bundle")
    expected = _dense(small_study, root)
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    # A DataParallel checkpoint keyed "state_dict".
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               root / "models" / "model.pt")  # fmt: skip
    assert np.array_equal(_dense(small_study, root), expected)
    # Only a TorchScript export of the network.
    network = torch.nn.Conv3d(1, 2, kernel_size=1)
    network.load_state_dict(state)
    torch.jit.save(torch.jit.script(network), str(root / "models" / "model.ts"))
    (root / "models" / "model.pt").unlink()
    bundle = load_bundle(root)
    assert bundle.weights.name == "model.ts"
    assert np.array_equal(_dense(small_study, root), expected)


def test_a_detector_in_a_segmentation_pipeline_is_refused_with_a_reason(
    small_study: PhantomStudy, tmp_path: Path
) -> None:
    from pipelines.errors import PipelineError
    from pipelines.run import run_pipeline
    from tests.unit.pipelines.bundles import write_blob_detector_bundle

    bundle = write_blob_detector_bundle(tmp_path / "bundle")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "bg", "1": "blob"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    spec = load_pipeline_specs(pipeline_spec(tmp_path / "p", bundle))["zoo-test"]
    with pytest.raises(PipelineError, match="gave no tensor but box, label, label_scores"):
        run_pipeline(spec, small_study.paths, tmp_path / "out", job_id=1)


_DICT_NETWORK = '''import torch


class DictClassifier(torch.nn.Module):
    """Answers with a dictionary: class name to probability (as some bundles do)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        mean = torch.sigmoid(self.scale * x.mean(dim=(1, 2, 3)))
        return {"finding": mean[:, None], "normal": 1 - mean[:, None]}
'''


def test_a_classifier_that_answers_with_a_dictionary_is_read_by_class_name(
    tmp_path: Path,
) -> None:
    from dicom_node.phantom_dx import ChestRadiographPhantom
    from pipelines.manifest import ManifestStatus
    from pipelines.run import run_pipeline

    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "scripts").mkdir()
    (root / "scripts" / "__init__.py").write_text("")
    (root / "scripts" / "dict_net.py").write_text(_DICT_NETWORK)
    config = {"network_def": {"_target_": "scripts.dict_net.DictClassifier"},
              "preprocessing": {"_target_": "Compose", "transforms": [
                  {"_target_": "LoadImaged", "keys": "image"},
                  {"_target_": "ScaleIntensityd", "keys": "image"}]}}  # fmt: skip
    meta = {"name": "dict classifier", "network_data_format": {
        "inputs": {"image": {"num_channels": 1, "spatial_shape": [128, 128]}},
        "outputs": {"pred": {"type": "probabilities",
                             "channel_def": {"0": "finding", "1": "normal"}}}}}  # fmt: skip
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.save({"scale": torch.tensor(1.0)}, root / "models" / "model.pt")
    folder = pipeline_spec(tmp_path / "p", root, task="classification", outputs=["sr"])
    spec = load_pipeline_specs(folder)["zoo-test"]
    paths = list(ChestRadiographPhantom(size=64).write(tmp_path / "dx", findings=(True,)).paths)
    manifest = run_pipeline(spec, paths, tmp_path / "out", job_id=1)
    assert manifest.status is ManifestStatus.DONE
    finding = manifest.measurements["finding.probability"]
    assert finding == pytest.approx(1 - manifest.measurements["normal.probability"], abs=1e-5)
    assert 0.5 < finding < 1.0  # sigmoid of a mean intensity scaled to [0, 1]
