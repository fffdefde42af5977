"""A MONAI bundle written by a test, in Model Zoo layout, and a pipeline YAML for it.

The network is a 1x1x1 convolution whose weights the test sets: after the
bundle's own preprocessing (HU -1000..500 scaled to [0, 1]), channel 1 wins
the argmax where the scaled value exceeds 0.5, that is above -250 HU: soft
tissue and bone. Its output is therefore known without training, and the
bundle still goes through every step a Model Zoo bundle does: ConfigParser with
``bundle_root``, ``LoadImaged``/``SaveImaged`` stripped, ``Orientationd`` and
``Spacingd`` inverted by ``Invertd``, weights from ``models/model.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import torch
import yaml

__all__ = ["THRESHOLD_HU", "write_pipeline_yaml", "write_threshold_bundle"]

#: Where the bundle's network switches from background to "dense".
THRESHOLD_HU = -250.0


def write_threshold_bundle(root: Path, *, config_format: str = "json") -> Path:
    """Write the bundle to ``root`` and return it.

    Parameters
    ----------
    root : pathlib.Path
        The bundle directory (created).
    config_format : str
        ``json`` or ``yaml``: the format of ``configs/inference.*``.

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    inference: dict[str, Any] = {
        "imports": ["$import torch"],
        "bundle_root": "/nowhere",
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2,
                        "kernel_size": 1},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [6.0, 6.0, 6.0],
             "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 500,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32],
                    "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
             "orig_keys": "image", "nearest_interp": True, "to_tensor": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "/nowhere/eval"},
        ]},
    }  # fmt: skip
    metadata = {
        "name": "test_threshold",
        "version": "0.1.0",
        "description": "A test bundle: tissue above -250 HU.",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1}},
            "outputs": {
                "pred": {
                    "type": "image",
                    "num_channels": 2,
                    "channel_def": {"0": "background", "1": "dense"},
                }
            },
        },
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    if config_format == "yaml":
        (root / "configs" / "inference.yaml").write_text(yaml.safe_dump(inference))
    else:
        (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    weight = torch.zeros(2, 1, 1, 1, 1)
    weight[1, 0] = 10.0
    bias = torch.tensor([0.0, -5.0])  # channel 1 > channel 0 where the scaled value > 0.5
    torch.save({"weight": weight, "bias": bias}, root / "models" / "model.pt")
    return root


def write_pipeline_yaml(folder: Path, bundle: Path, **changes: Any) -> Path:
    """Write ``ct-test-bundle.yaml`` for the threshold bundle into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "name": "ct-test-bundle",
        "version": "0.1.0",
        "selection": {"rules": [{"name": "CT", "conditions": {"Modality": "^CT$"}}]},
        "model": {"kind": "bundle", "path": str(bundle)},
        "algorithm": {"name": "test threshold bundle",
                      "family": {"value": "123110", "scheme": "DCM",
                                 "meaning": "Artificial Intelligence"}},
        "labels": [{"value": 1, "name": "dense", "label": "Dense tissue",
                    "category": {"value": "85756007", "meaning": "Tissue"},
                    "type": {"value": "87784001", "meaning": "Soft tissue"}}],
        "outputs": ["seg", "sr"],
        "series_description": "AI test bundle (not for diagnosis)",
    }  # fmt: skip
    spec.update(changes)
    path = folder / "ct-test-bundle.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def relabel(paths: list[Path], description: str) -> None:
    """Give a written series another Series Description (what selection rules match)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        ds.save_as(path)


def write_bundle_with_network(root: Path, imports: list[str], network_def: str) -> Path:
    """The threshold bundle with another ``network_def``: a model that misbehaves on load.

    Parameters
    ----------
    root : pathlib.Path
        The bundle directory (created).
    imports : list[str]
        The config's ``imports`` (``"$import os"`` ...).
    network_def : str
        The expression that builds the network, e.g. ``"$time.sleep(3600)"``.
    """
    write_threshold_bundle(root)
    config_path = root / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["imports"] = imports
    config["network_def"] = network_def
    config_path.write_text(json.dumps(config))
    return root


#: HU above which the detection bundle's inferer reports a box (above bone, below metal).
BLOB_HU = 2500.0

_BLOB_INFERER = '''"""The test detector's inferer: one box around the voxels above a threshold."""

import torch
from monai.inferers.inferer import Inferer


class BlobInferer(Inferer):
    """Boxes (xyzxyz, edges at voxel edges), label 0 and score 0.9 around bright voxels."""

    def __init__(self, threshold: float) -> None:
        Inferer.__init__(self)
        self.threshold = threshold

    def __call__(self, inputs, network, *args, **kwargs):
        out = network(inputs)
        results = []
        for image in out:
            hits = torch.nonzero(image[0] > self.threshold)
            if len(hits) == 0:
                box = torch.zeros((0, 6))
            else:
                low = hits.min(dim=0).values.float() - 0.5
                high = hits.max(dim=0).values.float() + 0.5
                box = torch.cat([low, high])[None]
            results.append({"box": box, "label": torch.zeros(len(box), dtype=torch.long),
                            "label_scores": torch.full((len(box),), 0.9)})
        return results
'''


def write_blob_detector_bundle(root: Path) -> Path:
    """A detection bundle in Model Zoo layout whose boxes are known.

    Its ``scripts/`` package holds the inferer (so the bundle root must be
    importable); its preprocessing and postprocessing are those of
    ``lung_nodule_ct_detection`` (``Orientationd`` RAS, ``ScaleIntensityRanged``,
    ``ClipBoxToImaged``, ``AffineBoxToWorldCoordinated`` with ``affine_lps_to_ras``,
    ``ConvertBoxModed`` to ``cccwhd``); the "network" is an identity convolution
    with weights in ``models/model.pt``. The box encloses the voxels above
    :data:`BLOB_HU`, its edges at the voxels' edges.

    Parameters
    ----------
    root : pathlib.Path
        The bundle directory (created).

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    (root / "scripts").mkdir(exist_ok=True)
    (root / "scripts" / "__init__.py").write_text("")
    (root / "scripts" / "blob_inferer.py").write_text(_BLOB_INFERER)
    scaled = (BLOB_HU + 1024.0) / (3071.0 + 1024.0)
    inference: dict[str, Any] = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 1,
                        "kernel_size": 1},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "itkreader",
             "affine_lps_to_ras": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1024.0,
             "a_max": 3071.0, "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "inferer": {"_target_": "scripts.blob_inferer.BlobInferer", "threshold": scaled},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "ClipBoxToImaged", "box_keys": "box", "label_keys": "label",
             "box_ref_image_keys": "image", "remove_empty": True},
            {"_target_": "AffineBoxToWorldCoordinated", "box_keys": "box",
             "box_ref_image_keys": "image", "affine_lps_to_ras": True},
            {"_target_": "ConvertBoxModed", "box_keys": "box", "src_mode": "xyzxyz",
             "dst_mode": "cccwhd"},
            {"_target_": "DeleteItemsd", "keys": ["image"]},
        ]},
    }  # fmt: skip
    metadata = {
        "name": "test_blob_detector",
        "version": "0.1.0",
        "monai_version": "1.4.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1}},
            "outputs": {"pred": {"type": "object", "format": "dict", "num_channels": 1}},
        },
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    identity = {"weight": torch.ones(1, 1, 1, 1, 1), "bias": torch.zeros(1)}
    torch.save({"model": identity}, root / "models" / "model.pt")  # a checkpoint, keyed
    return root


def write_detection_yaml(folder: Path, bundle: Path, **changes: Any) -> Path:
    """Write ``ct-test-detection.yaml`` for the blob detector into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "name": "ct-test-detection",
        "version": "0.1.0",
        "task": "detection",
        "selection": {"rules": [{"name": "CT", "conditions": {"Modality": "^CT$"}}]},
        "model": {"kind": "bundle", "path": str(bundle)},
        "detection": {"score_threshold": 0.5},
        "algorithm": {"name": "test blob detector",
                      "family": {"value": "123110", "scheme": "DCM",
                                 "meaning": "Artificial Intelligence"}},
        "labels": [{"value": 0, "name": "nodule", "label": "Nodule",
                    "category": {"value": "49755003",
                                 "meaning": "Morphologically Abnormal Structure"},
                    "type": {"value": "27925004", "meaning": "Nodule"}}],
        "outputs": ["sr"],
        "series_description": "AI test detection (not for diagnosis)",
    }  # fmt: skip
    spec.update(changes)
    path = folder / "ct-test-detection.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def add_blob(paths: list[Path], center: tuple[int, int, int], radius: int = 3) -> None:
    """Paint a bright cube of side ``2 * radius + 1`` pixels (and 3 slices) into a CT series.

    Parameters
    ----------
    paths : list[pathlib.Path]
        The slices, in slice order (as :class:`dicom_node.phantom.PhantomStudy` lists them).
    center : tuple[int, int, int]
        ``(slice, row, column)`` of the cube's centre.
    radius : int
        Half the side in pixels.
    """
    index, row, column = center
    for k in (index - 1, index, index + 1):
        ds = pydicom.dcmread(paths[k])
        pixels = ds.pixel_array.copy()
        value = int((BLOB_HU + 500 - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
        pixels[row - radius : row + radius + 1, column - radius : column + radius + 1] = value
        ds.PixelData = pixels.astype(pixels.dtype).tobytes()
        ds.save_as(paths[k], enforce_file_format=True)
